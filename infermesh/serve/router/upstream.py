"""A lean HTTP/1.1 client for the router's backend requests (asyncio protocol + httptools).

The router sends one kind of request (a POST with a small JSON body) and relays the answer,
often chunk by chunk. A general client (aiohttp's) spends most of the router's CPU per
request on features it does not need; this one writes the request in one ``write`` and
parses the answer with httptools (chunked transfer decoded), keeping idle connections per
backend for reuse.

Connection states::

    CONNECTING --> IDLE (in the pool) --taken--> BUSY --message complete, keep-alive--> IDLE
                                                   |
                                                   +--error / close / cancelled--> CLOSED

A request on a reused connection that fails before any answer byte is sent again once on a
fresh connection (the backend may have closed an idle connection just as it was taken).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, cast

import httptools

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamResponse"]


class UpstreamError(ConnectionError):
    """The backend could not be reached, or the connection broke before the answer ended."""


class _Conn(asyncio.Protocol):
    """One connection; receives and parses answers (one at a time)."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.closed = False
        self.resp: UpstreamResponse | None = None
        self._header_name = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad HTTP answer from {self.key[0]}:{self.key[1]}: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError(f"connection to {self.key[0]}:{self.key[1]} closed ({exc})"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.resp is not None:
            self.resp.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        r = self.resp
        if r is not None:
            r.status = self.parser.get_status_code()
            r.keep_alive = self.parser.should_keep_alive()
            r._set_headers()

    def on_body(self, body: bytes) -> None:
        if self.resp is not None:
            self.resp._feed(body)

    def on_message_complete(self) -> None:
        if self.resp is not None:
            self.resp._complete()

    def _fail(self, exc: Exception) -> None:
        if self.resp is not None:
            self.resp._error(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """An answer being received: ``status``, ``headers`` (lower-case names), body chunks."""

    def __init__(self, pool: UpstreamPool, conn: _Conn) -> None:
        self._pool = pool
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.got_bytes = False
        self._headers: asyncio.Future[None] = self._loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._exc: Exception | None = None
        self._released = False

    # fed by the protocol
    def _set_headers(self) -> None:
        self.got_bytes = True
        if not self._headers.done():
            self._headers.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._wake()

    def _error(self, exc: Exception) -> None:
        if self._done:
            return
        self._exc = exc
        if not self._headers.done():
            self._headers.set_exception(exc)
            self._headers.exception()  # retrieved: the awaiting side re-raises it
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # read side
    async def read_chunk(self) -> bytes:
        """The next body bytes as they arrive; ``b""`` once the answer is complete."""
        while True:
            if self._chunks:
                return self._chunks.popleft()
            if self._done:
                return b""
            if self._exc is not None:
                raise self._exc
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Release the connection: back to the pool if the answer ended cleanly, else closed."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.resp = None
        if self._done and self.keep_alive and not conn.closed:
            self._pool._put(conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections per ``(host, port)``; :meth:`post` sends one request."""

    def __init__(self, connect_timeout_s: float = 5.0, max_idle_per_host: int = 256) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._closed = False
        self._ssl: ssl.SSLContext | None = None

    def _put(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if self._closed or len(idle) >= self.max_idle_per_host:
            conn.close()
        else:
            idle.append(conn)

    async def _connect(self, key: tuple[str, int], tls: bool) -> _Conn:
        loop = asyncio.get_running_loop()
        ctx = None
        if tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(key), key[0], key[1], ssl=ctx),
                self.connect_timeout_s,
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {e or 'timeout'}") from None
        return proto

    async def post(
        self, host: str, port: int, path: str, headers: bytes, body: bytes, tls: bool = False
    ) -> UpstreamResponse:
        """Send ``POST path`` (``headers``: ready-made ``Name: value\\r\\n`` lines) and wait
        for the answer's status line and headers."""
        key = (host, port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Length: {len(body)}\r\n".encode()
            + headers
            + b"\r\n"
        )
        idle = self._idle.get(key)
        for attempt in (0, 1):
            reused = False
            conn = None
            while idle:
                c = idle.pop()
                if not c.closed and c.transport is not None and not c.transport.is_closing():
                    conn, reused = c, True
                    break
            if conn is None:
                conn = await self._connect(key, tls)
            resp = UpstreamResponse(self, conn)
            conn.resp = resp
            conn.parser = httptools.HttpResponseParser(conn)
            if conn.transport is None:
                raise UpstreamError(f"connection to {host}:{port} has no transport")
            conn.transport.write(head + body)
            try:
                await resp._headers
            except UpstreamError:
                resp.close()
                if reused and not resp.got_bytes and attempt == 0:
                    idle = self._idle.get(key)
                    continue
                raise
            except BaseException:
                resp.close()
                raise
            return resp
        raise UpstreamError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        """Close every idle connection (busy ones close when their answers are released)."""
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
