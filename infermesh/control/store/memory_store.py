"""``memory://``: the store in process memory, for unit tests and throwaway cells.

Same contract as the SQLite and etcd stores (the logic is shared, see :mod:`._local`);
nothing survives the process.
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable

from infermesh.control.store._local import Backend, Change, LocalStore
from infermesh.control.store.api import KeyValue, WatchEvent
from infermesh.core.errors import UsageError

__all__ = ["MemoryBackend", "MemoryStore", "from_url"]


class MemoryBackend(Backend):
    """Dicts and a sorted key list; the history is a list in revision order."""

    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = 0
        self.last_lease_id = 0
        self._kvs: dict[str, KeyValue] = {}
        self._sorted: list[str] = []
        self._by_lease: dict[int, set[str]] = collections.defaultdict(set)
        self._leases: dict[int, float] = {}
        self._history: list[WatchEvent] = []
        self._history_revs: list[int] = []

    def get(self, key: str) -> KeyValue | None:
        return self._kvs.get(key)

    def range(self, prefix: str, limit: int) -> list[KeyValue]:
        out: list[KeyValue] = []
        i = bisect.bisect_left(self._sorted, prefix)
        keys = self._sorted
        while i < len(keys) and keys[i].startswith(prefix) and (not limit or len(out) < limit):
            out.append(self._kvs[keys[i]])
            i += 1
        return out

    def lease_keys(self, lease_id: int) -> list[str]:
        return sorted(self._by_lease.get(lease_id, ()))

    def leases(self) -> dict[int, float]:
        return dict(self._leases)

    def history(self, prefix: str, start_revision: int, limit: int) -> list[WatchEvent]:
        out: list[WatchEvent] = []
        revisions = 0
        i = bisect.bisect_left(self._history_revs, start_revision)
        for ev in self._history[i:]:
            if not ev.kv.key.startswith(prefix):
                continue
            if not out or out[-1].kv.mod_revision != ev.kv.mod_revision:
                if revisions == limit:
                    break
                revisions += 1
            out.append(ev)
        return out

    def apply(self, change: Change) -> None:
        for ev in change.events:
            key = ev.kv.key
            old = self._kvs.get(key)
            if old is not None and old.lease:
                self._by_lease[old.lease].discard(key)
            if ev.kind == "put":
                if old is None:
                    bisect.insort(self._sorted, key)
                self._kvs[key] = ev.kv
                if ev.kv.lease:
                    self._by_lease[ev.kv.lease].add(key)
            else:
                del self._kvs[key]
                del self._sorted[bisect.bisect_left(self._sorted, key)]
            self._history.append(ev)
            self._history_revs.append(change.revision)
        for lease, ttl in change.granted.items():
            self._leases[lease] = ttl
            self.last_lease_id = max(self.last_lease_id, lease)
        for lease in change.revoked:
            self._leases.pop(lease, None)
            self._by_lease.pop(lease, None)
        self.revision = change.revision

    def compact(self, revision: int) -> None:
        cut = bisect.bisect_left(self._history_revs, revision)
        del self._history[:cut], self._history_revs[:cut]
        self.compact_revision = revision

    def close(self) -> None:
        self._kvs.clear()
        self._sorted.clear()
        self._history.clear()
        self._history_revs.clear()


class MemoryStore(LocalStore):
    """A :class:`~infermesh.control.store.api.Store` that lives in this process only."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(MemoryBackend(), clock=clock)


def from_url(url: str) -> MemoryStore:
    """Open ``memory://`` (nothing may follow the scheme)."""
    if url != "memory://":
        raise UsageError(f"store URL {url!r}: the in-memory store takes no path; use 'memory://'")
    return MemoryStore()
