"""The Store contract, run against every implementation (memory, sqlite, etcd).

Each test runs ``body(store, ns)`` on a fresh store; ``ns`` is a key prefix of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from infermesh.control.store import (
    CompactedError,
    Compare,
    KeyValue,
    LeaseNotFound,
    Op,
    Store,
    StoreError,
    WatchEvent,
)
from infermesh.core.errors import UsageError
from tests.store.conftest import Runner

WAIT_S = 10.0


async def take(events: AsyncIterator[list[WatchEvent]], n: int) -> list[WatchEvent]:
    """The next ``n`` events of a watch (batches flattened); fails after WAIT_S seconds."""
    got: list[WatchEvent] = []

    async def fill() -> None:
        async for batch in events:
            assert len({ev.kv.mod_revision for ev in batch}) == 1, f"batch spans revisions: {batch}"
            got.extend(batch)
            if len(got) >= n:
                return

    try:
        await asyncio.wait_for(fill(), WAIT_S)
    except asyncio.TimeoutError:
        pytest.fail(f"watch gave {len(got)} of {n} events in {WAIT_S}s: {got}")
    return got


def summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes, int]]:
    return [(ev.kind, ev.kv.key, ev.kv.value, ev.kv.mod_revision) for ev in events]


def test_revisions_grow_by_one_per_change_and_keys_track_versions(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        r0 = await s.revision()
        r1 = await s.put(ns + "a", b"1")
        r2 = await s.put(ns + "a", b"2")
        assert (r1, r2) == (r0 + 1, r0 + 2)
        assert await s.get(ns + "a") == KeyValue(ns + "a", b"2", r1, r2, 2, 0)
        assert await s.revision() == r2
        assert await s.get(ns + "missing") is None
        assert await s.delete(ns + "missing") is False
        assert await s.revision() == r2, "deleting nothing must not move the revision"
        assert await s.delete(ns + "a") is True
        assert await s.revision() == r2 + 1
        assert await s.get(ns + "a") is None
        r4 = await s.put(ns + "a", b"again")
        assert await s.get(ns + "a") == KeyValue(ns + "a", b"again", r4, r4, 1, 0)

    store_runner(body)


def test_range_returns_sorted_keys_under_the_prefix_with_limit(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        for key in ["b", "ab", "c/2", "a", "c/1"]:
            await s.put(ns + key, key.encode())
        kvs, rev = await s.range(ns)
        assert [kv.key for kv in kvs] == [ns + k for k in ["a", "ab", "b", "c/1", "c/2"]]
        assert rev == await s.revision()
        assert [kv.value for kv in kvs] == [b"a", b"ab", b"b", b"c/1", b"c/2"]
        kvs, _ = await s.range(ns + "a")
        assert [kv.key for kv in kvs] == [ns + "a", ns + "ab"]
        kvs, _ = await s.range(ns + "c/", limit=1)
        assert [kv.key for kv in kvs] == [ns + "c/1"]
        kvs, _ = await s.range(ns + "zzz")
        assert kvs == []

    store_runner(body)


def test_delete_prefix_removes_only_that_prefix_in_one_revision(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        for key in ["jobs/1", "jobs/2", "jobsx", "nodes/1"]:
            await s.put(ns + key, b"v")
        before = await s.revision()
        async with s.watch(ns) as events:
            assert await s.delete_prefix(ns + "jobs/") == 2
            got = await take(events, 2)
        assert summary(got) == [
            ("delete", ns + "jobs/1", b"", before + 1),
            ("delete", ns + "jobs/2", b"", before + 1),
        ]
        kvs, rev = await s.range(ns)
        assert [kv.key for kv in kvs] == [ns + "jobsx", ns + "nodes/1"]
        assert rev == before + 1
        assert await s.delete_prefix(ns + "jobs/") == 0

    store_runner(body)


def test_compare_and_swap_succeeds_only_on_the_expected_revision(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        key = ns + "leader"
        ok, r1 = await s.compare_and_swap(key, b"node-1", expected_mod_revision=0)
        assert ok
        assert (await s.get(key)) == KeyValue(key, b"node-1", r1, r1, 1, 0)
        ok, rev = await s.compare_and_swap(key, b"node-2", expected_mod_revision=0)
        assert (ok, rev) == (False, r1), "creating an existing key must fail"
        assert (await s.get(key)).value == b"node-1"  # type: ignore[union-attr]
        ok, r2 = await s.compare_and_swap(key, b"node-2", expected_mod_revision=r1)
        assert ok and r2 == r1 + 1
        ok, rev = await s.compare_and_swap(key, b"node-3", expected_mod_revision=r1)
        assert (ok, rev) == (False, r2), "a stale revision must fail"
        ok, rev = await s.compare_and_swap(key, None, expected_mod_revision=r1)
        assert not ok and await s.get(key) is not None
        ok, r3 = await s.compare_and_swap(key, None, expected_mod_revision=r2)
        assert ok and r3 == r2 + 1 and await s.get(key) is None

    store_runner(body)


def test_txn_applies_one_branch_atomically_at_one_revision(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        a, b, c = ns + "a", ns + "b", ns + "c"
        base = await s.put(c, b"old")
        async with s.watch(ns) as events:
            res = await s.txn(
                [Compare(a, "version", "==", 0), Compare(c, "value", "==", b"old")],
                [Op.put(a, b"1"), Op.put(b, b"2"), Op.delete(c)],
                [Op.put(a, b"failed")],
            )
            assert res.succeeded and res.revision == base + 1
            got = await take(events, 3)
        assert summary(got) == [
            ("put", a, b"1", base + 1),
            ("put", b, b"2", base + 1),
            ("delete", c, b"", base + 1),
        ]
        res = await s.txn(
            [Compare(a, "mod_revision", ">", base + 1), Compare(ns + "nokey", "value", "!=", b"")],
            [Op.put(a, b"success")],
            [Op.put(b, b"failure branch")],
        )
        assert not res.succeeded and res.revision == base + 2
        assert (await s.get(a)).value == b"1"  # type: ignore[union-attr]
        assert (await s.get(b)).value == b"failure branch"  # type: ignore[union-attr]
        res = await s.txn([Compare(a, "create_revision", "<", 0)], [Op.put(a, b"x")])
        assert not res.succeeded and res.revision == base + 2, "an empty branch changes nothing"

    store_runner(body)


def test_txn_with_a_dead_lease_changes_nothing(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        lease = await s.grant_lease(30)
        await s.revoke_lease(lease)
        before = await s.revision()
        with pytest.raises(LeaseNotFound):
            await s.txn([], [Op.put(ns + "x", b"1"), Op.put(ns + "y", b"2", lease=lease)])
        assert await s.get(ns + "x") is None
        assert await s.revision() == before
        with pytest.raises(LeaseNotFound):
            await s.put(ns + "z", b"v", lease=lease)

    store_runner(body)


def test_watch_delivers_live_changes_under_its_prefix_in_order(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        await s.put(ns + "w/before", b"0")
        async with s.watch(ns + "w/") as events:
            r1 = await s.put(ns + "w/a", b"1")
            await s.put(ns + "elsewhere", b"x")
            r2 = await s.put(ns + "w/b", b"2")
            r3 = await s.put(ns + "w/a", b"3")
            await s.delete(ns + "w/b")
            got = await take(events, 4)
        assert summary(got) == [
            ("put", ns + "w/a", b"1", r1),
            ("put", ns + "w/b", b"2", r2),
            ("put", ns + "w/a", b"3", r3),
            ("delete", ns + "w/b", b"", r3 + 1),
        ]
        assert got[2].kv == KeyValue(ns + "w/a", b"3", r1, r3, 2, 0)

    store_runner(body)


def test_watch_from_a_revision_replays_history_then_goes_live(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        r1 = await s.put(ns + "k1", b"1")
        await s.put(ns + "k2", b"2")
        await s.delete(ns + "k1")
        async with s.watch(ns, start_revision=r1 + 1) as events:
            r4 = await s.put(ns + "k3", b"3")
            got = await take(events, 3)
        assert summary(got) == [
            ("put", ns + "k2", b"2", r1 + 1),
            ("delete", ns + "k1", b"", r1 + 2),
            ("put", ns + "k3", b"3", r4),
        ]

    store_runner(body)


def test_two_watches_see_the_same_changes(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        async with s.watch(ns) as first, s.watch(ns + "x") as second:
            for i in range(5):
                await s.put(ns + f"x{i}", str(i).encode())
            a = await take(first, 5)
            b = await take(second, 5)
        assert summary(a) == summary(b)
        assert [ev.kv.value for ev in a] == [b"0", b"1", b"2", b"3", b"4"]

    store_runner(body)


def test_watch_ends_when_the_store_closes(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        async with s.watch(ns) as events:
            await s.put(ns + "k", b"v")
            assert len(await take(events, 1)) == 1

            async def drain() -> int:
                n = 0
                async for _batch in events:
                    n += 1
                return n

            drained = asyncio.ensure_future(drain())
            await asyncio.sleep(0)
            await s.close()
            assert await asyncio.wait_for(drained, WAIT_S) == 0
        with pytest.raises(StoreError):
            await s.get(ns + "k")

    store_runner(body)


def test_compaction_forgets_old_history(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        r1 = await s.put(ns + "a", b"1")
        r2 = await s.put(ns + "a", b"2")
        r3 = await s.put(ns + "b", b"3")
        await s.compact(r2)
        with pytest.raises(CompactedError):
            async with s.watch(ns, start_revision=r1) as events:
                await anext(events)
        async with s.watch(ns, start_revision=r2) as events:
            got = await take(events, 2)
        assert summary(got) == [("put", ns + "a", b"2", r2), ("put", ns + "b", b"3", r3)]
        with pytest.raises(CompactedError):
            await s.compact(r1)
        with pytest.raises(StoreError, match="revision"):
            await s.compact(r3 + 1000)
        assert (await s.get(ns + "a")).value == b"2"  # type: ignore[union-attr]

    store_runner(body)


def test_lease_expiry_deletes_its_keys_with_delete_events(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        lease = await s.grant_lease(1)
        async with s.watch(ns) as events:
            r1 = await s.put(ns + "node/1", b"alive", lease=lease)
            await s.put(ns + "node/2", b"no lease")
            assert (await s.get(ns + "node/1")).lease == lease  # type: ignore[union-attr]
            got = await take(events, 3)
        assert summary(got)[2][:3] == ("delete", ns + "node/1", b"")
        assert got[2].kv.mod_revision > r1
        assert await s.get(ns + "node/1") is None
        assert await s.get(ns + "node/2") is not None
        with pytest.raises(LeaseNotFound):
            await s.keepalive(lease)

    store_runner(body)


def test_keepalive_keeps_a_lease_past_its_ttl(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        lease = await s.grant_lease(1)
        await s.put(ns + "k", b"v", lease=lease)
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.5
        while loop.time() < end:
            remaining = await s.keepalive(lease)
            assert 0 < remaining <= 1
            await asyncio.sleep(0.25)
            assert await s.get(ns + "k") is not None, "a kept-alive lease must not expire"
        async with s.watch(ns) as events:
            got = await take(events, 1)
        assert summary(got)[0][:2] == ("delete", ns + "k")

    store_runner(body)


def test_revoke_deletes_only_the_leases_keys(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        lease = await s.grant_lease(30)
        other = await s.grant_lease(30)
        await s.put(ns + "a", b"1", lease=lease)
        await s.put(ns + "b", b"2", lease=lease)
        await s.put(ns + "c", b"3", lease=other)
        await s.put(ns + "d", b"4", lease=lease)
        await s.put(ns + "d", b"detached")  # a put without the lease detaches the key
        async with s.watch(ns) as events:
            await s.revoke_lease(lease)
            got = await take(events, 2)
        rev = got[0].kv.mod_revision
        assert summary(got) == [("delete", ns + "a", b"", rev), ("delete", ns + "b", b"", rev)]
        kvs, _ = await s.range(ns)
        assert [kv.key for kv in kvs] == [ns + "c", ns + "d"]
        for call in (s.revoke_lease(lease), s.keepalive(lease)):
            with pytest.raises(LeaseNotFound):
                await call
        assert await s.keepalive(other) > 0
        await s.revoke_lease(other)

    store_runner(body)


def test_concurrent_cas_has_exactly_one_winner_per_round(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        key, contenders, rounds = ns + "leader", 12, 4
        await s.put(key, b"nobody")
        for rnd in range(rounds):
            barrier = asyncio.Barrier(contenders)

            async def contend(i: int, rnd: int = rnd, barrier: asyncio.Barrier = barrier) -> bool:
                seen = await s.get(key)
                assert seen is not None
                await barrier.wait()
                ok, _ = await s.compare_and_swap(
                    key, f"{rnd}:{i}".encode(), expected_mod_revision=seen.mod_revision
                )
                return ok

            wins = await asyncio.gather(*(contend(i) for i in range(contenders)))
            winners = [i for i, ok in enumerate(wins) if ok]
            assert len(winners) == 1, f"round {rnd}: winners {winners}"
            assert (await s.get(key)).value == f"{rnd}:{winners[0]}".encode()  # type: ignore[union-attr]

    store_runner(body)


def test_concurrent_cas_increments_lose_no_update(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        key, workers, each = ns + "counter", 8, 10

        async def add_one() -> None:
            for _attempt in range(1000):
                kv = await s.get(key)
                n = int(kv.value) if kv else 0
                rev = kv.mod_revision if kv else 0
                ok, _ = await s.compare_and_swap(
                    key, str(n + 1).encode(), expected_mod_revision=rev
                )
                if ok:
                    return
                await asyncio.sleep(0)
            pytest.fail("no CAS succeeded in 1000 attempts")

        async def worker() -> None:
            for _ in range(each):
                await add_one()

        await asyncio.gather(*(worker() for _ in range(workers)))
        assert (await s.get(key)).value == str(workers * each).encode()  # type: ignore[union-attr]

    store_runner(body)


def test_bad_arguments_are_refused_with_usage_errors(store_runner: Runner) -> None:
    async def body(s: Store, ns: str) -> None:
        with pytest.raises(UsageError, match="bytes"):
            await s.put(ns + "k", "text")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="non-empty"):
            await s.put("", b"v")
        with pytest.raises(UsageError, match="time to live"):
            await s.grant_lease(0)
        with pytest.raises(UsageError, match="limit"):
            await s.range(ns, limit=-1)
        with pytest.raises(UsageError, match="start_revision"):
            s.watch(ns, start_revision=-1)
        with pytest.raises(UsageError, match="every key"):
            await s.delete_prefix("")
        with pytest.raises(UsageError, match="twice"):
            await s.txn([], [Op.put(ns + "k", b"1"), Op.delete(ns + "k")])
        with pytest.raises(UsageError, match="compare target"):
            Compare(ns + "k", "size", "==", 1)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="needs a bytes value"):
            Compare(ns + "k", "value", "==", 1)
        assert await s.get(ns + "k") is None

    store_runner(body)
