"""``sqlite:///path/to/state.db``: the default store, one SQLite file in WAL mode.

The file holds four tables: ``meta`` (format marker, schema version, revision, compact
revision, last lease id), ``kv`` (current key-values), ``history`` (every change since the last
compaction, for watches that replay old revisions) and ``leases`` (id and time to live).
Each store operation is one SQLite transaction; with ``journal_mode=WAL`` and
``synchronous=NORMAL`` a committed change survives the process being killed (SIGKILL) -- only
a power loss can cost the last few commits.

One process owns the file at a time (an exclusive ``flock`` on it); a second opener gets a
clear error instead of two coordinators writing past each other. A file that is not an
InferMesh store (another SQLite database, or not SQLite at all) is refused untouched.

The SQLite calls run on the event loop's thread: each is a short local transaction without an
fsync, and running them in order without awaiting is what keeps transactions exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from infermesh.control.store._local import Backend, Change, LocalStore, delete_event, prefix_end
from infermesh.control.store.api import KeyValue, StoreError, WatchEvent
from infermesh.core.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "SCHEMA_VERSION", "SqliteBackend", "SqliteStore", "from_url"]

FORMAT = "infermesh-store"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE kv (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE history (
    revision INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, key BLOB NOT NULL,
    value BLOB NOT NULL, create_revision INTEGER NOT NULL, version INTEGER NOT NULL,
    lease INTEGER NOT NULL, PRIMARY KEY (revision, idx)
) WITHOUT ROWID;
CREATE TABLE leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL);
"""
_COUNTERS = ("revision", "compact_revision", "last_lease_id")


def _kv(row: tuple[bytes, bytes, int, int, int, int]) -> KeyValue:
    key, value, created, modified, version, lease = row
    return KeyValue(key.decode(), value, created, modified, version, lease)


def _counters(kv: KeyValue) -> tuple[int, int, int]:
    """The history row's counters: create revision, version, lease."""
    return kv.create_revision, kv.version, kv.lease


def _prefix_clause(prefix: str) -> tuple[str, tuple[bytes, ...]]:
    """SQL condition and parameters selecting keys that start with ``prefix``."""
    start = prefix.encode()
    end = prefix_end(start)
    if end is None:
        return "key >= ?", (start,)
    return "key >= ? AND key < ?", (start, end)


class SqliteBackend(Backend):
    """The tables of one store file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd = _lock(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise StoreError(f"cannot open store file {str(path)!r}: {exc}") from exc
        try:
            self._check_or_create()
            counters = dict(self._db.execute("SELECT name, value FROM meta"))
        except BaseException:
            self.close()
            raise
        self.revision = int(counters["revision"])
        self.compact_revision = int(counters["compact_revision"])
        self.last_lease_id = int(counters["last_lease_id"])

    def _check_or_create(self) -> None:
        where = repr(str(self.path))
        try:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{where} is not an InferMesh store (not a SQLite database: {exc}); it was left "
                "untouched -- point the store at a new file or move this one away"
            ) from exc
        if not tables:
            self._create()
            return
        marker: dict[str, object] = {}
        if "meta" in tables:
            with contextlib.suppress(sqlite3.DatabaseError):
                marker = dict(self._db.execute("SELECT name, value FROM meta"))
        if marker.get("format") != FORMAT:
            raise StoreError(
                f"{where} is a SQLite database but not an InferMesh store (no "
                f"{FORMAT!r} marker; tables: {', '.join(sorted(tables))}); it was left "
                "untouched -- point the store at a new file or move this one away"
            )
        if marker.get("schema") != SCHEMA_VERSION:
            raise StoreError(
                f"{where} has store schema {marker.get('schema')!r}; this InferMesh reads "
                f"schema {SCHEMA_VERSION}: use the InferMesh version that wrote it"
            )
        self._set_pragmas()

    def _create(self) -> None:
        self._set_pragmas()
        with self._transaction() as db:
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("format", FORMAT), ("schema", SCHEMA_VERSION), ("revision", 1)]
                + [(name, 0) for name in _COUNTERS[1:]],
            )
        logger.info("created store %s", self.path)

    def _set_pragmas(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(
                f"store file {str(self.path)!r} cannot use WAL mode (got {mode!r}); put it on a "
                "local file system"
            )
        self._db.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Commit what the block did, or roll all of it back on any error."""
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, key: str) -> KeyValue | None:
        row = self._db.execute(
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
            "WHERE key = ?",
            (key.encode(),),
        ).fetchone()
        return None if row is None else _kv(row)

    def range(self, prefix: str, limit: int) -> list[KeyValue]:
        clause, params = _prefix_clause(prefix)
        rows = self._db.execute(
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
            f"WHERE {clause} ORDER BY key LIMIT ?",
            (*params, limit or -1),
        )
        return [_kv(row) for row in rows]

    def lease_keys(self, lease_id: int) -> list[str]:
        rows = self._db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease_id,))
        return [row[0].decode() for row in rows]

    def leases(self) -> dict[int, float]:
        return dict(self._db.execute("SELECT id, ttl FROM leases"))

    def history(self, prefix: str, start_revision: int, limit: int) -> list[WatchEvent]:
        clause, params = _prefix_clause(prefix)
        last = self._db.execute(
            "SELECT MAX(revision) FROM (SELECT DISTINCT revision FROM history "
            f"WHERE revision >= ? AND {clause} ORDER BY revision LIMIT ?)",
            (start_revision, *params, limit),
        ).fetchone()[0]
        if last is None:
            return []
        rows = self._db.execute(
            "SELECT revision, kind, key, value, create_revision, version, lease FROM history "
            f"WHERE revision >= ? AND revision <= ? AND {clause} ORDER BY revision, idx",
            (start_revision, last, *params),
        )
        events: list[WatchEvent] = []
        for rev, kind, key, value, created, version, lease in rows:
            if kind == "put":
                kv = KeyValue(key.decode(), value, created, rev, version, lease)
                events.append(WatchEvent("put", kv))
            else:
                events.append(delete_event(key.decode(), rev))
        return events

    def apply(self, change: Change) -> None:
        rev = change.revision
        puts = [ev.kv for ev in change.events if ev.kind == "put"]
        deletes = [(ev.kv.key.encode(),) for ev in change.events if ev.kind == "delete"]
        last_lease = max([self.last_lease_id, *change.granted])
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (kv.key.encode(), kv.value, kv.create_revision, rev, kv.version, kv.lease)
                    for kv in puts
                ],
            )
            db.executemany("DELETE FROM kv WHERE key = ?", deletes)
            db.executemany(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (rev, i, ev.kind, ev.kv.key.encode(), ev.kv.value, *_counters(ev.kv))
                    for i, ev in enumerate(change.events)
                ],
            )
            db.executemany("INSERT INTO leases VALUES (?, ?)", change.granted.items())
            db.executemany("DELETE FROM leases WHERE id = ?", [(i,) for i in change.revoked])
            db.executemany(
                "UPDATE meta SET value = ? WHERE name = ?",
                [(rev, "revision"), (last_lease, "last_lease_id")],
            )
        self.revision = rev
        self.last_lease_id = last_lease

    def compact(self, revision: int) -> None:
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM history WHERE revision < ?", (revision,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (revision,))
        self.compact_revision = revision

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock(path: Path) -> int:
    """Open ``path`` (creating it empty) and hold an exclusive flock on it; return the fd."""
    if path.is_dir():
        raise UsageError(f"store path {str(path)!r} is a directory; name a file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open store file {str(path)!r}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"store file {str(path)!r} is in use by another process (only one coordinator may "
            "own a SQLite store); stop it first, or use an etcd store for several coordinators"
        ) from None
    return fd


class SqliteStore(LocalStore):
    """A :class:`~infermesh.control.store.api.Store` kept in one SQLite file."""

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.monotonic
    ):
        super().__init__(SqliteBackend(Path(path)), clock=clock)


def from_url(url: str) -> SqliteStore:
    """Open ``sqlite:///abs/path.db`` or ``sqlite://relative/path.db``."""
    path = url.removeprefix("sqlite://")
    if not path or "?" in path or "#" in path:
        raise UsageError(
            f"store URL {url!r}: expected 'sqlite:///absolute/path/state.db' or "
            "'sqlite://relative/path/state.db' (a file path, no query)"
        )
    return SqliteStore(path)
