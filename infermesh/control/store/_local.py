"""The store logic shared by the in-process stores (memory and SQLite).

:class:`LocalStore` implements the whole :class:`~infermesh.control.store.api.Store` contract
-- revisions, transactions, watches, leases and their expiry -- over a small synchronous
:class:`Backend` that only keeps data: the current key-values, the change history, the
leases and three counters. Each backend call is atomic, and every public method runs its
backend calls without awaiting in between, so on one event loop no two operations interleave
(which is what makes compare-and-swap exact).

Lease deadlines live in process memory, measured on the injected clock. A backend that
persists leases (SQLite) gives each surviving lease its full time to live again when the store
is reopened -- what etcd does when a new leader takes over -- so a coordinator restart does not
expire every node at once.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from infermesh.control.store.api import (
    CompactedError,
    Compare,
    KeyValue,
    LeaseNotFound,
    Op,
    Store,
    StoreClosed,
    StoreError,
    TxnResult,
    WatchEvent,
    check_delete_prefix,
    check_key,
    check_range,
    check_ttl,
    check_txn,
    check_value,
    check_watch,
    watch_not_entered,
)
from infermesh.obs.metrics import counter, histogram

logger = logging.getLogger(__name__)

__all__ = ["Backend", "Change", "LocalStore", "delete_event", "prefix_end"]

_LEASES_EXPIRED = counter(
    "infermesh_store_leases_expired_total", "Leases that expired in an in-process store", ()
)
_COMMIT_SECONDS = histogram(
    "infermesh_store_commit_seconds",
    "Time to commit one change to an in-process store",
    (),
    buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5),
)

WATCH_BUFFER = 1024
"""Batches a watch queues before it falls back to reading the history (see _LocalWatch)."""


def delete_event(key: str, revision: int) -> WatchEvent:
    """The event of deleting ``key`` at ``revision`` (etcd zeroes the other counters)."""
    return WatchEvent("delete", KeyValue(key, b"", 0, revision, 0, 0))


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``.

    ``None`` when there is none (empty prefix, or only 0xff bytes): the range is unbounded.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


@dataclass(slots=True)
class Change:
    """One atomic write to a backend: the new revision, its events and lease changes.

    ``revision`` equals the current one when ``events`` is empty (a lease grant alone does
    not move the revision, as in etcd).
    """

    revision: int
    events: list[WatchEvent]
    granted: dict[int, float] = field(default_factory=dict)
    revoked: list[int] = field(default_factory=list)


class Backend(abc.ABC):
    """Where a :class:`LocalStore` keeps its data. Synchronous; :meth:`apply` is atomic."""

    revision: int
    """The revision of the last change (1 for a new store)."""
    compact_revision: int
    """History before this revision is gone (0: never compacted)."""
    last_lease_id: int
    """The highest lease id ever granted (ids are never reused)."""

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    def range(self, prefix: str, limit: int) -> list[KeyValue]:
        """Keys starting with ``prefix`` in key order, at most ``limit`` (0: all)."""

    @abc.abstractmethod
    def lease_keys(self, lease_id: int) -> list[str]:
        """Keys attached to the lease, in key order."""

    @abc.abstractmethod
    def leases(self) -> dict[int, float]:
        """Every live lease: id -> time to live in seconds."""

    @abc.abstractmethod
    def history(self, prefix: str, start_revision: int, limit: int) -> list[WatchEvent]:
        """Events under ``prefix`` from ``start_revision`` on, in order; at most ``limit``
        revisions' worth (whole revisions only)."""

    @abc.abstractmethod
    def apply(self, change: Change) -> None:
        """Write the change (key-values, history, leases, counters) atomically."""

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` and remember it as the compact revision."""

    @abc.abstractmethod
    def close(self) -> None: ...


class LocalStore(Store):
    """A :class:`Store` over a :class:`Backend`, in this process.

    ``clock`` gives seconds for lease deadlines (monotonic by default). Expired leases are
    ended by a background task started on first use, and also on every call, so an
    expired lease's keys are never visible.
    """

    def __init__(self, backend: Backend, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self._clock = clock
        now = clock()
        self._ttls: dict[int, float] = dict(backend.leases())
        self._deadlines = {lease: now + ttl for lease, ttl in self._ttls.items()}
        self._watches: set[_LocalWatch] = set()
        self._expirer: asyncio.Task[None] | None = None
        self._deadlines_changed = asyncio.Event()
        self._closed = False

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._enter()
        return self._backend.get(check_key(key))

    async def range(self, prefix: str, *, limit: int = 0) -> tuple[list[KeyValue], int]:
        self._enter()
        check_range(prefix, limit)
        return self._backend.range(prefix, limit), self._backend.revision

    async def revision(self) -> int:
        self._enter()
        return self._backend.revision

    # -- writes --------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._enter()
        return self._apply_ops([Op.put(key, value, lease=lease)])

    async def delete(self, key: str) -> bool:
        self._enter()
        before = self._backend.revision
        return self._apply_ops([Op.delete(key)]) != before

    async def delete_prefix(self, prefix: str) -> int:
        self._enter()
        doomed = self._backend.range(check_delete_prefix(prefix), 0)
        rev = self._backend.revision + 1
        self._commit([delete_event(kv.key, rev) for kv in doomed])
        return len(doomed)

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[Op],
        on_failure: Sequence[Op] = (),
    ) -> TxnResult:
        self._enter()
        check_txn(compares, on_success, on_failure)
        ok = all(cmp.holds(self._backend.get(cmp.key)) for cmp in compares)
        return TxnResult(ok, self._apply_ops(on_success if ok else on_failure))

    def _apply_ops(self, ops: Iterable[Op]) -> int:
        ops = list(ops)
        for op in ops:
            if op.kind == "put":
                check_value(op.value)
                if op.lease and op.lease not in self._deadlines:
                    raise LeaseNotFound(op.lease)
        rev = self._backend.revision + 1
        events: list[WatchEvent] = []
        for op in ops:
            old = self._backend.get(op.key)
            if op.kind == "put":
                created = old.create_revision if old else rev
                version = old.version + 1 if old else 1
                kv = KeyValue(op.key, op.value, created, rev, version, op.lease)
                events.append(WatchEvent("put", kv))
            elif old is not None:
                events.append(delete_event(op.key, rev))
        return self._commit(events)

    def _commit(
        self,
        events: list[WatchEvent],
        granted: dict[int, float] | None = None,
        revoked: Sequence[int] = (),
    ) -> int:
        rev = self._backend.revision + (1 if events else 0)
        start = time.perf_counter()
        self._backend.apply(Change(rev, events, granted or {}, list(revoked)))
        _COMMIT_SECONDS.observe(time.perf_counter() - start)
        if events:
            for watch in list(self._watches):
                watch.offer(rev, events)
        return rev

    async def compact(self, revision: int) -> None:
        self._enter()
        if revision <= self._backend.compact_revision:
            raise CompactedError(revision, self._backend.compact_revision)
        if revision > self._backend.revision:
            raise StoreError(
                f"cannot compact at revision {revision}: the store is only at revision "
                f"{self._backend.revision}"
            )
        self._backend.compact(revision)

    # -- leases --------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: float) -> int:
        self._enter()
        ttl = check_ttl(ttl_s)
        lease = self._backend.last_lease_id + 1
        self._commit([], granted={lease: ttl})
        self._ttls[lease] = ttl
        self._deadlines[lease] = self._clock() + ttl_s
        self._signal_deadlines()
        return lease

    async def keepalive(self, lease_id: int) -> float:
        self._enter()
        if lease_id not in self._deadlines:
            raise LeaseNotFound(lease_id)
        ttl = self._ttls[lease_id]
        self._deadlines[lease_id] = self._clock() + ttl
        self._signal_deadlines()
        return ttl

    async def revoke_lease(self, lease_id: int) -> None:
        self._enter()
        if lease_id not in self._deadlines:
            raise LeaseNotFound(lease_id)
        self._end_lease(lease_id)

    def _end_lease(self, lease_id: int) -> None:
        rev = self._backend.revision + 1
        events = [delete_event(key, rev) for key in self._backend.lease_keys(lease_id)]
        self._commit(events, revoked=[lease_id])
        del self._deadlines[lease_id], self._ttls[lease_id]

    def _expire_due(self) -> None:
        now = self._clock()
        for lease in sorted(k for k, due in self._deadlines.items() if due <= now):
            logger.info("lease %d expired; deleting its keys", lease)
            self._end_lease(lease)
            _LEASES_EXPIRED.inc()

    def _signal_deadlines(self) -> None:
        self._deadlines_changed.set()

    async def _expire_forever(self) -> None:
        changed = self._deadlines_changed
        while not self._closed:
            wait: float | None = None
            try:
                self._expire_due()
            except Exception:  # keep the timer alive; the next call reports the fault itself
                logger.exception("ending expired leases failed; retrying in 1 s")
                wait = 1.0
            if wait is None and self._deadlines:
                wait = max(0.0, min(self._deadlines.values()) - self._clock())
            changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    # -- watches -------------------------------------------------------------------------

    def watch(self, prefix: str, *, start_revision: int = 0) -> _LocalWatch:
        check_watch(prefix, start_revision)
        return _LocalWatch(self, prefix, start_revision)

    # -- lifecycle -----------------------------------------------------------------------

    def _enter(self) -> None:
        """Check the store is open, start the expiry task, and end overdue leases."""
        if self._closed:
            raise StoreClosed()
        if self._expirer is None:
            self._expirer = asyncio.get_running_loop().create_task(
                self._expire_forever(), name="store-lease-expiry"
            )
        self._expire_due()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in list(self._watches):
            watch.end()
        if self._expirer is not None:
            self._expirer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expirer
        self._backend.close()


class _LocalWatch:
    """A watch of a :class:`LocalStore`: its own context manager and async iterator.

    Live changes are queued as they commit. When the consumer falls :data:`WATCH_BUFFER`
    batches behind (or asked for old revisions), the watch stops queueing and reads the
    backend's history instead once the queue is drained -- etcd's "unsynced watcher" -- so
    memory stays bounded and no event is lost unless the history is compacted meanwhile
    (then the iterator raises :class:`CompactedError`).
    """

    def __init__(self, store: LocalStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start_revision
        self._batches: collections.deque[list[WatchEvent]] = collections.deque()
        self._queued_through = 0
        self._behind = False
        self._ended = False
        self._entered = False
        self._wake = asyncio.Event()

    async def __aenter__(self) -> _LocalWatch:
        store = self._store
        store._enter()
        backend = store._backend
        if self._start:
            if self._start < backend.compact_revision:
                raise CompactedError(self._start, backend.compact_revision)
            self._queued_through = self._start - 1
            self._behind = self._start <= backend.revision
        else:
            self._queued_through = backend.revision
        self._entered = True
        store._watches.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._store._watches.discard(self)
        self._ended = True

    def __aiter__(self) -> _LocalWatch:
        return self

    async def __anext__(self) -> list[WatchEvent]:
        if not self._entered:
            raise watch_not_entered()
        while True:
            if self._batches:
                return self._batches.popleft()
            if self._ended:
                raise StopAsyncIteration
            if self._behind:
                self._catch_up()
                continue
            self._wake.clear()
            await self._wake.wait()

    def offer(self, revision: int, events: list[WatchEvent]) -> None:
        """Queue the matching events of a commit (called by the store, in revision order)."""
        if self._behind or self._ended or revision <= self._queued_through:
            return
        batch = [ev for ev in events if ev.kv.key.startswith(self._prefix)]
        if not batch:
            return
        if len(self._batches) >= WATCH_BUFFER:
            self._behind = True
        else:
            self._batches.append(batch)
            self._queued_through = revision
        self._wake.set()

    def _catch_up(self) -> None:
        backend = self._store._backend
        start = self._queued_through + 1
        if start < backend.compact_revision:
            self._ended = True
            raise CompactedError(start, backend.compact_revision)
        events = backend.history(self._prefix, start, WATCH_BUFFER)
        for ev in events:
            rev = ev.kv.mod_revision
            if rev != self._queued_through:
                self._batches.append([])
                self._queued_through = rev
            self._batches[-1].append(ev)
        if len(self._batches) < WATCH_BUFFER:
            self._behind = False
            self._queued_through = backend.revision

    def end(self) -> None:
        """The store closed: deliver what is queued, then stop."""
        self._ended = True
        self._behind = False
        self._wake.set()
