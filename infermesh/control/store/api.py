"""The coordinator's state store: a key-value store with etcd's semantics.

Every change gets a new store-wide *revision* (a counter that only grows; a fresh store is at
revision 1, like etcd). Each key carries the revision that created it, the revision of its
last change and its version (number of puts since it was created). On top of that:

* ``compare_and_swap`` and ``txn``: conditional, atomic multi-key changes;
* ``watch(prefix)``: the changes under a prefix, in revision order, optionally replayed from
  an old revision (until that history is compacted away);
* leases: a key put with a lease is deleted (with a delete event) when the lease expires
  because nobody kept it alive, or when it is revoked.

Three implementations share this contract (``tests/store/test_store_contract.py``):
``memory://`` (:mod:`.memory_store`, for unit tests), ``sqlite:///path`` (:mod:`.sqlite_store`,
the default, one file in WAL mode) and ``etcd://host:port`` (:mod:`.etcd_store`, for cells
with several coordinators). :func:`infermesh.control.store.open_store` picks one by URL.

All methods are coroutines meant to be called from one asyncio event loop.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from infermesh.core.errors import InferMeshError, UsageError

__all__ = [
    "COMPARE_OPS",
    "COMPARE_TARGETS",
    "CompactedError",
    "Compare",
    "KeyValue",
    "LeaseNotFound",
    "Op",
    "Store",
    "StoreClosed",
    "StoreError",
    "TxnResult",
    "WatchEvent",
    "check_delete_prefix",
    "check_key",
    "check_range",
    "check_ttl",
    "check_txn",
    "check_value",
    "check_watch",
    "watch_not_entered",
]

CompareTarget = Literal["mod_revision", "create_revision", "version", "value"]
CompareOp = Literal["==", "!=", "<", ">"]
COMPARE_TARGETS: tuple[str, ...] = ("mod_revision", "create_revision", "version", "value")
COMPARE_OPS: tuple[str, ...] = ("==", "!=", "<", ">")


class StoreError(InferMeshError):
    """The store refused an operation or could not be reached; the message says which."""


class StoreClosed(StoreError):
    """The store was closed; nothing more can be done with this object."""

    def __init__(self) -> None:
        super().__init__("the store is closed; open it again with open_store(url)")


class LeaseNotFound(StoreError):
    """The lease does not exist: it expired, was revoked or was never granted."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(
            f"lease {lease_id} not found (expired, revoked or never granted); "
            "grant a new lease with grant_lease()"
        )
        self.lease_id = lease_id


class CompactedError(StoreError):
    """The requested revision's history was compacted away."""

    def __init__(self, revision: int, compact_revision: int | None) -> None:
        kept = (
            ""
            if compact_revision is None
            else f" (history is kept from revision {compact_revision} on)"
        )
        super().__init__(
            f"revision {revision} has been compacted{kept}; read the current state with "
            "range() and watch from its revision"
        )
        self.revision = revision
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's current value and bookkeeping (the same fields as etcd's ``mvccpb.KeyValue``).

    ``lease`` is 0 when the key is not attached to a lease.
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch.

    For ``"delete"`` the ``kv`` holds the key, ``value == b""``, ``mod_revision`` is the
    revision of the delete and the other counters are 0 (as etcd reports it).
    """

    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a :meth:`Store.txn`: ``<target of key> <op> <value>``.

    ``target`` is ``"mod_revision"``, ``"create_revision"``, ``"version"`` (compared with an
    ``int``) or ``"value"`` (compared with ``bytes``). A missing key has revision and version 0;
    every ``"value"`` comparison on a missing key is false (etcd's rule).
    """

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.target not in COMPARE_TARGETS:
            raise UsageError(
                f"unknown compare target {self.target!r}; use one of {', '.join(COMPARE_TARGETS)}"
            )
        if self.op not in COMPARE_OPS:
            raise UsageError(f"unknown compare op {self.op!r}; use one of {', '.join(COMPARE_OPS)}")
        want: type = bytes if self.target == "value" else int
        if not isinstance(self.value, want) or isinstance(self.value, bool):
            raise UsageError(
                f"compare on {self.target!r} of {self.key!r} needs a {want.__name__} value, "
                f"got {self.value!r}"
            )

    def holds(self, kv: KeyValue | None) -> bool:
        """Whether the condition is true of ``kv`` (``None``: the key does not exist)."""
        if self.target == "value":
            if kv is None:
                return False
            actual: int | bytes = kv.value
        else:
            actual = 0 if kv is None else getattr(kv, self.target)
        want = self.value
        if self.op == "==":
            return actual == want
        if self.op == "!=":
            return actual != want
        if self.op == "<":
            return actual < want  # type: ignore[operator]
        return actual > want  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Op:
    """One change of a :meth:`Store.txn`; build it with :meth:`put` or :meth:`delete`."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes = b""
    lease: int = 0

    @staticmethod
    def put(key: str, value: bytes, *, lease: int = 0) -> Op:
        check_key(key)
        check_value(value)
        return Op("put", key, value, lease)

    @staticmethod
    def delete(key: str) -> Op:
        check_key(key)
        return Op("delete", key)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Which branch of a transaction ran, and the store revision after it."""

    succeeded: bool
    revision: int


def check_key(key: object) -> str:
    """Return ``key`` if it is a usable key (a non-empty ``str``); raise UsageError otherwise."""
    if not isinstance(key, str) or not key:
        raise UsageError(f"store keys are non-empty strings, got {key!r}")
    return key


def check_value(value: object) -> bytes:
    """Return ``value`` if it is ``bytes``; raise UsageError naming the type otherwise."""
    if not isinstance(value, bytes):
        raise UsageError(
            f"store values are bytes, got {type(value).__name__}; encode it first "
            "(for example json.dumps(obj).encode())"
        )
    return value


def check_range(prefix: object, limit: object) -> None:
    """Reject a range prefix that is not a ``str`` or a limit that is not an int >= 0."""
    if not isinstance(prefix, str):
        raise UsageError(f"range prefix must be a str, got {prefix!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise UsageError(f"range limit must be an int >= 0 (0: no limit), got {limit!r}")


def check_delete_prefix(prefix: object) -> str:
    """Return ``prefix`` if it may be deleted: a non-empty ``str`` (never "everything")."""
    if not isinstance(prefix, str) or not prefix:
        raise UsageError(
            f"delete_prefix needs a non-empty str prefix, got {prefix!r} "
            "(an empty prefix would delete every key)"
        )
    return prefix


def check_ttl(ttl_s: object) -> float:
    """Return a lease time to live in seconds if it is a number > 0."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
        raise UsageError(f"lease time to live must be a number of seconds > 0, got {ttl_s!r}")
    return float(ttl_s)


def check_watch(prefix: object, start_revision: object) -> None:
    """Reject a watch prefix that is not a ``str`` or a negative start revision."""
    if not isinstance(prefix, str):
        raise UsageError(f"watch prefix must be a str, got {prefix!r}")
    if not isinstance(start_revision, int) or start_revision < 0:
        raise UsageError(
            f"watch start_revision must be an int >= 0 (0: from now), got {start_revision!r}"
        )


def watch_not_entered() -> UsageError:
    """The error for iterating a watch outside its ``async with`` block."""
    return UsageError("use the watch as `async with store.watch(prefix) as events:`")


def check_txn(compares: Sequence[Compare], *branches: Sequence[Op]) -> None:
    """Reject a transaction with a condition that is not a :class:`Compare`, an operation
    that is not an :class:`Op`, or a branch that changes one key twice (etcd refuses those)."""
    for cmp in compares:
        if not isinstance(cmp, Compare):
            raise UsageError(f"txn conditions are Compare(...) objects, got {cmp!r}")
    for ops in branches:
        seen: set[str] = set()
        for op in ops:
            if not isinstance(op, Op):
                raise UsageError(f"txn operations are Op.put(...) or Op.delete(...), got {op!r}")
            if op.key in seen:
                raise UsageError(f"txn changes key {op.key!r} twice; merge the operations into one")
            seen.add(op.key)


class Store(abc.ABC):
    """A key-value store with revisions, compare-and-swap, prefix watches and leases.

    Use it as ``async with open_store(url) as store: ...`` or call :meth:`close` yourself.
    """

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key's current value, or ``None`` when it does not exist."""

    @abc.abstractmethod
    async def range(self, prefix: str, *, limit: int = 0) -> tuple[list[KeyValue], int]:
        """Keys starting with ``prefix`` (``""``: all), sorted, at most ``limit`` (0: all),
        with the store revision they were read at."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Set ``key``; attach it to ``lease`` (0: none). Returns the new revision."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete ``key``; whether it existed."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` (in one revision); how many there were."""

    async def compare_and_swap(
        self,
        key: str,
        value: bytes | None,
        *,
        expected_mod_revision: int,
        lease: int = 0,
    ) -> tuple[bool, int]:
        """Set (``value`` bytes) or delete (``value is None``) ``key`` only if its mod_revision
        is ``expected_mod_revision`` (0: the key must not exist).

        Returns ``(succeeded, revision)``: the revision of the change, or the current store
        revision when the comparison failed.
        """
        op = Op.delete(key) if value is None else Op.put(key, value, lease=lease)
        result = await self.txn(
            [Compare(key, "mod_revision", "==", expected_mod_revision)], [op], []
        )
        return result.succeeded, result.revision

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[Op],
        on_failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds, apply ``on_success``, else ``on_failure``.

        All changes of the branch share one new revision; a branch without changes (or
        whose deletes find nothing) leaves the revision as it was.
        """

    @abc.abstractmethod
    def watch(
        self, prefix: str, *, start_revision: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[list[WatchEvent]]]:
        """Changes to keys under ``prefix``, batched, in revision order.

        ``start_revision`` 0 means changes after now; a positive revision replays the history
        from that revision first (:class:`CompactedError` when it was compacted). The
        iterator ends when the store is closed.
        """

    @abc.abstractmethod
    async def grant_lease(self, ttl_s: float) -> int:
        """A new lease that expires ``ttl_s`` seconds from now unless kept alive; its id."""

    @abc.abstractmethod
    async def keepalive(self, lease_id: int) -> float:
        """Restart the lease's time to live; the remaining seconds.

        Raises :class:`LeaseNotFound` when the lease expired or was revoked.
        """

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """End the lease now, deleting its keys (with delete events)."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store's current revision."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget the history before ``revision``; watches can no longer start before it.

        Raises :class:`CompactedError` when ``revision`` is at or below the last compaction
        and :class:`StoreError` when it is past the current revision.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the store: end watches, stop lease timers, close files or channels."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
