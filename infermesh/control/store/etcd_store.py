"""``etcd://host:port[,host:port...][?cacert=..&cert=..&key=..&server_name=..]``: an etcd cluster.

For cells with several coordinators: etcd keeps the revisions, transactions, watches and
leases itself; this module only translates. The client is ``etcd3aio`` (grpc.aio, with mTLS),
kept behind the :class:`~infermesh.control.store.api.Store` interface so it can be swapped.

URL options (all paths to PEM files):

* ``cacert``: the CA that signed the etcd servers' certificates; turns TLS on.
* ``cert`` and ``key``: this client's certificate and key, for etcd's ``--client-cert-auth``.
* ``server_name``: the name to check in the server certificate, when it is not the host
  named in the URL (host names are resolved to IPv4 addresses when the store is opened).
* ``timeout``: seconds one store call may take, retries while etcd is unreachable included
  (default 10).

etcd counts lease lifetimes in whole seconds; :meth:`EtcdStore.grant_lease` rounds up, and
the server may raise a very short TTL to its own minimum.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs, urlsplit

import grpc
import grpc.aio
from etcd3aio import Etcd3Client, EtcdConnectionError, EtcdError
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.watch import WatchService

from infermesh.control.store._local import WATCH_BUFFER, delete_event, prefix_end
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

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["EtcdStore", "from_url"]

CALL_TIMEOUT_S = 10.0
"""Default deadline of one store call, retries included (URL option ``timeout``)."""
RANGE_PAGE = 1000
"""Keys per request when reading a range (gRPC messages are limited to 4 MiB)."""

_URL_FORM = "etcd://host:port[,host:port...][?cacert=CA.pem&cert=CLIENT.pem&key=CLIENT-KEY.pem]"
_QUERY_KEYS = ("cacert", "cert", "key", "server_name", "timeout")

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
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
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
        except asyncio.TimeoutError as exc:
            raise StoreError(
                f"etcd {what} timed out after {self.timeout_s:g}s at {','.join(self.endpoints)}"
            ) from exc

    async def _call(self, what: str, make: Callable[[], Awaitable[T]], lease: int = 0) -> T:
        """One etcd request. While etcd refuses connections (restarting, electing a leader)
        it is tried again, for up to ``timeout_s`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        pause = 0.1
        while True:
            try:
                with self._errors(what, lease):
                    return await make()
            except StoreError as exc:
                unreachable = isinstance(exc.__cause__, EtcdConnectionError)
                if not unreachable or loop.time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

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
        raw = check_key(key).encode()
        resp = await self._call("get", lambda: kv.get(raw, timeout=self.timeout_s))
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
                resp = await self._call(
                    "range",
                    functools.partial(
                        kv.get, start, end, revision=rev, limit=want, timeout=self.timeout_s
                    ),
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
        resp = await self._call(
            "revision", lambda: kv.get(b"\0", count_only=True, timeout=self.timeout_s)
        )
        return int(resp.header.revision)

    # -- writes --------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        op = Op.put(key, value, lease=lease)
        kv = await self._kv()
        resp = await self._call(
            "put", lambda: kv.put(op.key.encode(), op.value, lease, timeout=self.timeout_s), lease
        )
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        kv = await self._kv()
        raw = check_key(key).encode()
        resp = await self._call("delete", lambda: kv.delete(raw, timeout=self.timeout_s))
        return bool(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        kv = await self._kv()
        start, end = _range_end(check_delete_prefix(prefix))
        resp = await self._call(
            "delete_prefix", lambda: kv.delete(start, end, timeout=self.timeout_s)
        )
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
        request = (
            [self._compare(kv, cmp) for cmp in compares],
            [self._request(kv, op) for op in on_success],
            [self._request(kv, op) for op in on_failure],
        )
        resp = await self._call(
            "txn", lambda: kv.txn(*request, timeout=self.timeout_s), leases[0] if leases else 0
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
            await self._call("compact", lambda: kv.compact(revision, timeout=self.timeout_s))
        except CompactedError as exc:
            raise CompactedError(revision, None) from exc.__cause__

    # -- leases --------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: float) -> int:
        ttl = math.ceil(check_ttl(ttl_s))
        leases = await self._lease()
        resp = await self._call("grant_lease", lambda: leases.grant(ttl, timeout=self.timeout_s))
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> float:
        leases = await self._lease()
        call = leases.keep_alive(lease_id)
        try:
            with self._errors("keepalive", lease_id):
                resp = await asyncio.wait_for(call.read(), self.timeout_s)
        finally:
            call.cancel()
        if resp is grpc.aio.EOF or resp.TTL <= 0:
            raise LeaseNotFound(lease_id)
        return float(resp.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        leases = await self._lease()
        await self._call(
            "revoke_lease", lambda: leases.revoke(lease_id, timeout=self.timeout_s), lease_id
        )

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

    The pump remembers the last revision it delivered. When the client re-creates the stream
    after a connection failure (a second "created" reply), the pump starts a new stream from
    that revision + 1 itself, so no event is skipped or repeated. It stops reading while
    :data:`WATCH_BUFFER` batches wait for the consumer (etcd then buffers on its side).
    """

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start_revision
        self._queue: asyncio.Queue[list[WatchEvent] | BaseException | object] = asyncio.Queue()
        self._space = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._entered = False
        self._done = False

    async def __aenter__(self) -> _EtcdWatch:
        store = self._store
        if not self._start:
            self._start = await store.revision() + 1
        _kv, _lease, watcher = await store._services()
        self._pump = asyncio.get_running_loop().create_task(self._run(watcher), name="etcd-watch")
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

    async def _run(self, watcher: WatchService) -> None:
        key, end = _range_end(self._prefix)
        delivered = self._start - 1
        try:
            with self._store._errors("watch"):
                while True:
                    stream = watcher.watch(key, end, start_revision=delivered + 1)
                    try:
                        delivered = await self._pump_stream(stream, delivered)
                    finally:
                        await stream.aclose()  # type: ignore[attr-defined]
                    logger.info("etcd watch on %r reconnected; resuming", self._prefix)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, raised from __anext__
            self._queue.put_nowait(exc)
        finally:
            self._queue.put_nowait(_END)

    async def _pump_stream(self, stream: AsyncIterator[Any], delivered: int) -> int:
        """Queue the stream's events after ``delivered``; return the last revision queued
        when the client re-created the stream (a reconnect)."""
        created = False
        async for resp in stream:
            if resp.compact_revision:
                raise CompactedError(delivered + 1, int(resp.compact_revision))
            if resp.canceled:
                raise StoreError(f"etcd cancelled the watch: {resp.cancel_reason}")
            if resp.created:
                if created:
                    return delivered
                created = True
            batch: list[WatchEvent] = []
            for ev in resp.events:
                item = self._event(ev)
                rev = item.kv.mod_revision
                if rev <= delivered:
                    continue
                if batch and batch[-1].kv.mod_revision != rev:
                    await self._put(batch)
                    batch = []
                batch.append(item)
            if batch:
                await self._put(batch)
                delivered = batch[-1].kv.mod_revision
        raise StoreError("etcd closed the watch stream")

    async def _put(self, batch: list[WatchEvent]) -> None:
        while self._queue.qsize() >= WATCH_BUFFER:
            self._space.clear()
            await self._space.wait()
        self._queue.put_nowait(batch)

    @staticmethod
    def _event(ev: Any) -> WatchEvent:
        kv = ev.kv
        if ev.type == _EVENT_DELETE:
            return delete_event(kv.key.decode(), kv.mod_revision)
        return WatchEvent("put", _to_kv(kv))

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __anext__(self) -> list[WatchEvent]:
        if not self._entered:
            raise watch_not_entered()
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        self._space.set()
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
    """Open ``etcd://host:port[,host:port...][?cacert=..&cert=..&key=..&server_name=..&timeout=..]``."""
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
        timeout_s=_timeout(opts.get("timeout"), url),
    )


def _timeout(text: str | None, url: str) -> float:
    if text is None:
        return CALL_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UsageError(f"store URL {url!r}: timeout={text!r} is not a number of seconds > 0")
    return value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
