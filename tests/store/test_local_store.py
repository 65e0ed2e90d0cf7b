"""Behaviour of the in-process stores beyond the shared contract: slow watchers, the
injected clock, and the URL forms :func:`open_store` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermesh.control.store import CompactedError, Store, open_store
from infermesh.control.store import _local as local
from infermesh.control.store.memory_store import MemoryStore
from infermesh.core.errors import UsageError
from infermesh.obs.metrics import REGISTRY
from tests.store.conftest import run_async


@pytest.fixture(params=["memory", "sqlite"])
def local_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite://{tmp_path / 's.db'}"


def test_a_slow_watcher_catches_up_from_history_in_order(
    local_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "WATCH_BUFFER", 4)

    async def main() -> None:
        async with open_store(local_url) as s, s.watch("k/") as events:
            revs = [await s.put(f"k/{i:02d}", str(i).encode()) for i in range(25)]
            seen: list[int] = []
            async for batch in events:
                assert len(batch) == 1
                seen.append(batch[0].kv.mod_revision)
                if len(seen) == 25:
                    break
            assert seen == revs
            r = await s.put("k/live", b"x")
            assert [ev.kv.mod_revision for ev in await anext(events)] == [r]

    run_async(main())


def test_a_slow_watcher_whose_history_was_compacted_gets_compacted_error(
    local_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "WATCH_BUFFER", 2)

    async def main() -> None:
        async with open_store(local_url) as s, s.watch("k/") as events:
            revs = [await s.put(f"k/{i}", b"v") for i in range(6)]
            await s.compact(revs[-1])
            assert len(await anext(events)) == 1
            assert len(await anext(events)) == 1
            with pytest.raises(CompactedError):
                await anext(events)

    run_async(main())


def test_leases_follow_the_injected_clock() -> None:
    now = [100.0]

    async def main() -> None:
        s: Store = MemoryStore(clock=lambda: now[0])
        async with s:
            lease = await s.grant_lease(10)
            await s.put("node/a", b"up", lease=lease)
            now[0] += 9
            assert await s.keepalive(lease) == 10
            now[0] += 9.5
            assert await s.get("node/a") is not None
            expired = REGISTRY.get_sample_value("infermesh_store_leases_expired_total") or 0.0
            now[0] += 1
            assert await s.get("node/a") is None, "an expired lease's key must not be visible"
            assert REGISTRY.get_sample_value("infermesh_store_leases_expired_total") == expired + 1

    run_async(main())


def test_a_watch_must_be_entered_before_iterating() -> None:
    async def main() -> None:
        async with MemoryStore() as s:
            with pytest.raises(UsageError, match="async with"):
                await anext(s.watch("x"))

    run_async(main())


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://localhost:6379", "unsupported store URL 'redis://localhost:6379'"),
        ("state.db", "accepted forms: memory://"),
        ("memory://cache", "takes no path"),
        ("sqlite://", "sqlite:///absolute/path"),
        ("sqlite:///tmp/x.db?mode=ro", "no query"),
    ],
)
def test_open_store_refuses_bad_urls_naming_the_accepted_forms(url: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle.replace("?", r"\?")):
        open_store(url)


def test_open_store_refuses_a_non_string() -> None:
    with pytest.raises(UsageError, match="must be a string"):
        open_store(Path("/tmp/x.db"))  # type: ignore[arg-type]
