"""``etcd://host:port[,host:port...][?cacert=..&cert=..&key=..&server_name=..]``: an etcd cluster.

For cells with several coordinators: etcd keeps the revisions, transactions, watches and
leases itself; this module only translates. The client is ``etcd3aio`` (grpc.aio, with mTLS),
kept behind the :class:`~infermesh.control.store.api.Store` interface so it can be swapped.

URL options (all paths to PEM files):

* ``cacert``: the CA that signed the etcd servers' certificates; turns TLS on.
* ``cert`` and ``key``: this client's certificate and key, for etcd's ``--client-cert-auth``.
* ``server_name``: the name to check in the server certificate, when it is not the host
  named in the URL (host names are resolved to IPv4 addresses when the store is opened).

etcd counts lease lifetimes in whole seconds; :meth:`EtcdStore.grant_lease` rounds up, and
the server may raise a very short TTL to its own minimum.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import grpc
import grpc.aio
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.watch import WatchService

from infermesh.control.store._local import prefix_end
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
from infermesh.core.errors import UsageError

__all__ = ["EtcdStore", "from_url"]

CALL_TIMEOUT_S = 10.0
"""Deadline of one etcd request (retries of transient failures included)."""
RANGE_PAGE = 1000
"""Keys per request when reading a range (gRPC messages are limited to 4 MiB)."""

_URL_FORM = "etcd://host:port[,host:port...][?cacert=CA.pem&cert=CLIENT.pem&key=CLIENT-KEY.pem]"
_QUERY_KEYS = ("cacert", "cert", "key", "server_name")

# Enum values of etcdserverpb.Compare (the generated module is reached through a message).
_RESULT = {"==": 0, ">": 1, "<": 2, "!=": 3}
_TARGET = {"version": 0, "create_revision": 1, "mod_revision": 2, "value": 3}
_FIELD = {
    "version": "version",
    "create_revision": "create_revision",
    "mod_revision": "mod_revision",
}
_EVENT_DELETE = 1


def _to_kv(kv: Any) -> KeyValue:
    return KeyValue(
        kv.key.decode(), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease
    )


def _range_end(prefix: str) -> tuple[bytes, bytes]:
    """etcd's (key, range_end) selecting every key that starts with ``prefix``."""
    start = prefix.encode()
    end = prefix_end(start)
    return (start or b"\0"), (b"\0" if end is None else end)


class EtcdStore(Store):
    """A :class:`~infermesh.control.store.api.Store` backed by an etcd cluster."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_cert: bytes | None = None,
        cert_chain: bytes | None = None,
        cert_key: bytes | None = None,
        server_name: str | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self._tls = {"ca_cert": ca_cert, "cert_chain": cert_chain, "cert_key": cert_key}
        self._server_name = server_name
        self._client: Etcd3Client | None = None
        self._watches: set[_EtcdWatch] = set()
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------

    async def _services(self) -> tuple[KVService, LeaseService, WatchService]:
        """The client's services, connecting on first use."""
        if self._closed:
            raise StoreClosed()
        if self._client is None:
            client = Etcd3Client(
                self.endpoints,
                tls_server_name=self._server_name,
                ca_cert=self._tls["ca_cert"],
                cert_chain=self._tls["cert_chain"],
                cert_key=self._tls["cert_key"],
            )
            await client.connect()
            self._client = client
        kv, lease, watch = self._client.kv, self._client.lease, self._client.watch
        if kv is None or lease is None or watch is None:
            raise StoreError("the etcd client lost its connection; open the store again")
        return kv, lease, watch

    async def _kv(self) -> KVService:
        return (await self._services())[0]

    async def _lease(self) -> LeaseService:
        return (await self._services())[1]

    @contextlib.contextmanager
    def _errors(self, what: str, lease: int = 0) -> Iterator[None]:
        """Turn etcd and gRPC failures into StoreError (or LeaseNotFound) naming the call."""
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            self._raise(what, exc, lease)
        except EtcdError as exc:
            raise StoreError(
                f"etcd {what} failed at {','.join(self.endpoints)}: {exc}; check that etcd "
                "runs there and that the TLS options (cacert, cert, key) match it"
            ) from exc
        except TimeoutError as exc:
            raise StoreError(
                f"etcd {what} timed out after {CALL_TIMEOUT_S:.0f}s at {','.join(self.endpoints)}"
            ) from exc

    def _raise(self, what: str, exc: grpc.aio.AioRpcError, lease: int) -> NoReturn:
        details = exc.details() or ""
        if "lease not found" in details:
            raise LeaseNotFound(lease) from exc
        if "compacted" in details:
            raise CompactedError(-1, None) from exc
        if "future revision" in details:
            raise StoreError(f"etcd {what}: {details} (past the store's current revision)") from exc
        raise StoreError(f"etcd {what} failed: {exc.code().name}: {details}") from exc

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        kv = await self._kv()
        with self._errors("get"):
            resp = await kv.get(check_key(key).encode(), timeout=CALL_TIMEOUT_S)
        return _to_kv(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str, *, limit: int = 0) -> tuple[list[KeyValue], int]:
        """Read in pages of at most :data:`RANGE_PAGE` keys, all at the revision of the first
        page (one consistent snapshot); a page too large for one gRPC message is halved."""
        check_range(prefix, limit)
        kv = await self._kv()
        start, end = _range_end(prefix)
        out: list[KeyValue] = []
        page, rev = RANGE_PAGE, 0
        while not limit or len(out) < limit:
            want = min(page, limit - len(out)) if limit else page
            try:
                with self._errors("range"):
                    resp = await kv.get(
                        start, end, revision=rev, limit=want, timeout=CALL_TIMEOUT_S
                    )
            except StoreError as exc:
                cause = exc.__cause__
                too_big = isinstance(cause, grpc.aio.AioRpcError) and (
                    cause.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                )
                if not too_big or want == 1:
                    raise
                page = max(1, want // 2)
                continue
            rev = rev or int(resp.header.revision)
            out.extend(_to_kv(item) for item in resp.kvs)
            if not resp.more or not resp.kvs:
                break
            start = resp.kvs[-1].key + b"\0"
        return out, rev

    async def revision(self) -> int:
        kv = await self._kv()
        with self._errors("revision"):
            resp = await kv.get(b"\0", count_only=True, timeout=CALL_TIMEOUT_S)
        return int(resp.header.revision)

    # -- writes --------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        op = Op.put(key, value, lease=lease)
        kv = await self._kv()
        with self._errors("put", lease):
            resp = await kv.put(op.key.encode(), op.value, lease, timeout=CALL_TIMEOUT_S)
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        kv = await self._kv()
        with self._errors("delete"):
            resp = await kv.delete(check_key(key).encode(), timeout=CALL_TIMEOUT_S)
        return bool(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        kv = await self._kv()
        start, end = _range_end(check_delete_prefix(prefix))
        with self._errors("delete_prefix"):
            resp = await kv.delete(start, end, timeout=CALL_TIMEOUT_S)
        return int(resp.deleted)

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[Op],
        on_failure: Sequence[Op] = (),
    ) -> TxnResult:
        check_txn(compares, on_success, on_failure)
        kv = await self._kv()
        leases = [op.lease for op in [*on_success, *on_failure] if op.lease]
        with self._errors("txn", leases[0] if leases else 0):
            resp = await kv.txn(
                [self._compare(kv, cmp) for cmp in compares],
                [self._request(kv, op) for op in on_success],
                [self._request(kv, op) for op in on_failure],
                timeout=CALL_TIMEOUT_S,
            )
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    @staticmethod
    def _compare(kv: KVService, cmp: Compare) -> Any:
        key = cmp.key.encode()
        if isinstance(cmp.value, bytes):
            return kv.txn_compare_value(key, cmp.value, result=_RESULT[cmp.op])
        message = kv.txn_compare_version(key, 0, result=_RESULT[cmp.op])
        message.target = _TARGET[cmp.target]
        setattr(message, _FIELD[cmp.target], cmp.value)
        return message

    @staticmethod
    def _request(kv: KVService, op: Op) -> Any:
        if op.kind == "put":
            check_value(op.value)
            return kv.txn_op_put(op.key.encode(), op.value, lease=op.lease)
        return kv.txn_op_delete(op.key.encode())

    async def compact(self, revision: int) -> None:
        kv = await self._kv()
        try:
            with self._errors("compact"):
                await kv.compact(revision, timeout=CALL_TIMEOUT_S)
        except CompactedError as exc:
            raise CompactedError(revision, None) from exc.__cause__

    # -- leases --------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: float) -> int:
        ttl = math.ceil(check_ttl(ttl_s))
        leases = await self._lease()
        with self._errors("grant_lease"):
            resp = await leases.grant(ttl, timeout=CALL_TIMEOUT_S)
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> float:
        leases = await self._lease()
        call = leases.keep_alive(lease_id)
        try:
            with self._errors("keepalive", lease_id):
                resp = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
        finally:
            call.cancel()
        if resp is grpc.aio.EOF or resp.TTL <= 0:
            raise LeaseNotFound(lease_id)
        return float(resp.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        leases = await self._lease()
        with self._errors("revoke_lease", lease_id):
            await leases.revoke(lease_id, timeout=CALL_TIMEOUT_S)

    # -- watches -------------------------------------------------------------------------

    def watch(self, prefix: str, *, start_revision: int = 0) -> _EtcdWatch:
        check_watch(prefix, start_revision)
        return _EtcdWatch(self, prefix, start_revision)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in list(self._watches):
            await watch.stop()
        if self._client is not None:
            await self._client.close()
            self._client = None


_END = object()


class _EtcdWatch:
    """An etcd watch stream, split into one batch per revision, behind our iterator.

    A pump task reads the stream into a queue so that closing the store (or leaving the
    ``async with``) ends the iterator cleanly. With start revision 0 the watch starts right
    after the revision read on entry, so nothing committed after entry is missed.
    """

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start_revision
        self._queue: asyncio.Queue[list[WatchEvent] | BaseException | object] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._entered = False
        self._done = False

    async def __aenter__(self) -> _EtcdWatch:
        store = self._store
        if not self._start:
            self._start = await store.revision() + 1
        _kv, _lease, watcher = await store._services()
        key, end = _range_end(self._prefix)
        stream = watcher.watch(key, end, start_revision=self._start)
        self._pump = asyncio.get_running_loop().create_task(self._run(stream), name="etcd-watch")
        self._entered = True
        store._watches.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self, stream: AsyncIterator[Any]) -> None:
        try:
            with self._store._errors("watch"):
                async for resp in stream:
                    if resp.compact_revision:
                        raise CompactedError(self._start, int(resp.compact_revision))
                    if resp.canceled:
                        raise StoreError(f"etcd cancelled the watch: {resp.cancel_reason}")
                    batch: list[WatchEvent] = []
                    for ev in resp.events:
                        item = self._event(ev)
                        if batch and batch[-1].kv.mod_revision != item.kv.mod_revision:
                            self._queue.put_nowait(batch)
                            batch = []
                        batch.append(item)
                    if batch:
                        self._queue.put_nowait(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, raised from __anext__
            self._queue.put_nowait(exc)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
            self._queue.put_nowait(_END)

    @staticmethod
    def _event(ev: Any) -> WatchEvent:
        kv = ev.kv
        if ev.type == _EVENT_DELETE:
            return WatchEvent("delete", KeyValue(kv.key.decode(), b"", 0, kv.mod_revision, 0, 0))
        return WatchEvent("put", _to_kv(kv))

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __anext__(self) -> list[WatchEvent]:
        if not self._entered:
            raise watch_not_entered()
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]

    async def stop(self) -> None:
        self._store._watches.discard(self)
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        self._queue.put_nowait(_END)


def _endpoint(item: str, url: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"store URL {url!r}: endpoint {item!r} is not host:port; use {_URL_FORM}")
    return host.strip("[]"), int(port)


def _ipv4(host: str, url: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    if _is_ip(host):
        if ipaddress.ip_address(host).version != 4:
            raise UsageError(f"store URL {url!r}: etcd endpoints must be IPv4 addresses or names")
        return host
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except OSError as exc:
        raise UsageError(f"store URL {url!r}: cannot resolve etcd host {host!r}: {exc}") from exc


def _read_pem(option: str, path: str, url: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"store URL {url!r}: cannot read {option}={path!r} ({exc.strerror}); give the path of "
            "a PEM file"
        ) from exc


def from_url(url: str) -> EtcdStore:
    """Open ``etcd://host:port[,host:port...][?cacert=..&cert=..&key=..&server_name=..]``."""
    parts = urlsplit(url)
    if not parts.netloc or parts.path not in ("", "/") or parts.fragment:
        raise UsageError(f"store URL {url!r}: expected {_URL_FORM}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise UsageError(
            f"store URL {url!r}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(_QUERY_KEYS)}"
        )
    opts = {name: values[-1] for name, values in query.items()}
    if ("cert" in opts) != ("key" in opts):
        raise UsageError(f"store URL {url!r}: give both cert= and key= (the client's pair)")
    if "cert" in opts and "cacert" not in opts:
        raise UsageError(f"store URL {url!r}: a client certificate needs cacert= (TLS) as well")
    hosts = [_endpoint(item, url) for item in parts.netloc.split(",")]
    names = [host for host, _ in hosts if host != "localhost" and not _is_ip(host)]
    server_name = opts.get("server_name") or (names[0] if names and "cacert" in opts else None)
    endpoints = [f"{_ipv4(host, url)}:{port}" for host, port in hosts]
    pem = {k: _read_pem(k, v, url) for k, v in opts.items() if k in ("cacert", "cert", "key")}
    return EtcdStore(
        endpoints,
        ca_cert=pem.get("cacert"),
        cert_chain=pem.get("cert"),
        cert_key=pem.get("key"),
        server_name=server_name,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
