"""The SQLite store's own promises: durability across SIGKILL and reopen, one owner per file,
and refusing files that are not InferMesh stores without touching them."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from infermesh.control.store import StoreError, open_store
from infermesh.control.store.sqlite_store import SqliteStore
from infermesh.core.errors import UsageError
from tests.store.conftest import run_async

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from infermesh.control.store import open_store

    async def main():
        store = open_store(sys.argv[1])
        lease = await store.grant_lease(3600)
        await store.put("lease/holder", b"x", lease=lease)
        print("lease", lease, flush=True)
        for i in range(1_000_000):
            rev = await store.put(f"k/{i:07d}", str(i).encode())
            print("put", i, rev, flush=True)

    asyncio.run(main())
    """
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_no_committed_write_is_lost_when_the_process_is_killed(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, f"sqlite://{db}"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    acked: dict[int, int] = {}
    lease = 0
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, *fields = line.split()
            if kind == "lease":
                lease = int(fields[0])
            else:
                acked[int(fields[0])] = int(fields[1])
            if len(acked) >= 400 or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)  # mid-write: the writer never stops on its own
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 400, f"writer acknowledged only {len(acked)} puts"

    async def check() -> None:
        async with open_store(f"sqlite://{db}") as s:
            kvs, rev = await s.range("k/")
            found = {int(kv.key[2:]): kv.mod_revision for kv in kvs}
            missing = {i: r for i, r in acked.items() if found.get(i) != r}
            assert not missing, f"acknowledged puts lost after SIGKILL: {sorted(missing)[:10]}"
            assert rev >= max(acked.values())
            holder = await s.get("lease/holder")
            assert holder is not None and holder.lease == lease
            assert await s.keepalive(lease) == 3600
            assert await s.put("k/after", b"v") == rev + 1

    run_async(check())


def test_reopening_keeps_keys_revisions_history_and_leases(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'cell' / 'state.db'}"
    state: dict[str, int] = {}

    async def first() -> None:
        async with open_store(url) as s:
            state["r1"] = await s.put("a", b"1")
            state["r2"] = await s.put("a", b"2")
            state["lease"] = await s.grant_lease(60)
            state["r3"] = await s.put("b", b"leased", lease=state["lease"])
            await s.compact(state["r2"])

    async def second() -> None:
        async with open_store(url) as s:
            assert await s.revision() == state["r3"]
            kv = await s.get("a")
            assert kv is not None and (kv.value, kv.create_revision, kv.version) == (
                b"2",
                state["r1"],
                2,
            )
            assert await s.keepalive(state["lease"]) == 60
            newer = await s.grant_lease(5)
            assert newer > state["lease"], "lease ids are never reused"
            async with s.watch("", start_revision=state["r2"]) as events:
                batch1, batch2 = await anext(events), await anext(events)
            assert [ev.kv.mod_revision for ev in batch1 + batch2] == [state["r2"], state["r3"]]
            await s.revoke_lease(state["lease"])
            assert await s.get("b") is None

    run_async(first())
    run_async(second())


def test_a_second_owner_of_the_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first = SqliteStore(db)
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            SqliteStore(db)
    finally:
        run_async(first.close())
    run_async(SqliteStore(db).close())


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("my notes, not a database\n" * 40)
    before = digest(path)
    with pytest.raises(StoreError, match="is not an InferMesh store"):
        open_store(f"sqlite://{path}")
    assert digest(path) == before


def test_another_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    db.close()
    before = digest(path)
    with pytest.raises(StoreError, match=r"not an InferMesh store .*tables: users"):
        open_store(f"sqlite://{path}")
    assert digest(path) == before
    assert sorted(os.listdir(tmp_path)) == ["app.db"]


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    run_async(SqliteStore(path).close())
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE name = 'schema'")
    db.close()
    with pytest.raises(StoreError, match="schema 99"):
        open_store(f"sqlite://{path}")


def test_a_directory_is_refused_as_a_store_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        open_store(f"sqlite://{tmp_path}")
