"""A lean HTTP/1.1 client connection pool for a service's one upstream hop:
`ConnectionPool.exchange` sends one request and hands back its status, headers and body
stream.

httpcore's pool spends much of a proxy's CPU on bookkeeping (encode/httpx#3215; `make bench`,
rows `proxy` and `llm-sdk`, re-measure what a hop costs). This one raises httpx's exceptions
and does only what a hop needs: keep-alive connections (TLS when given an SSL context) in a
LIFO pool bounded by a semaphore, requests written straight to the socket in one write,
responses parsed by httptools (the parser uvicorn uses) and streamed back with flow control.
"""

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import NamedTuple, cast

import httptools
import httpx

_HIGH_WATER = 256 * 1024

RawHeaders = list[tuple[bytes, bytes]]
Origin = tuple[str, int]


class UpstreamResponse(NamedTuple):
    status: int
    headers: RawHeaders
    stream: httpx.AsyncByteStream


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _expire(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("upstream read timed out"))


class _Connection(asyncio.Protocol):
    """One TCP connection; parses one response at a time into a bounded chunk queue."""

    # One lives per open upstream stream, and a gateway holds thousands of slow ones: slots,
    # a plain list and a future made only while writing is paused keep each one small.
    __slots__ = (
        "_drained",
        "_timer",
        "_waiter",
        "_writable",
        "buffered",
        "chunks",
        "closed",
        "complete",
        "error",
        "headers",
        "headers_done",
        "idle_since",
        "keep_alive",
        "parser",
        "received_any",
        "status",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()
        self._writable = True
        self._drained: asyncio.Future[None] | None = None

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.received_any = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"invalid response from upstream: {exc}")
            self._close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = httpx.RemoteProtocolError("upstream closed the connection")
        self.resume_writing()
        self._wake()
        # The parser holds this protocol's bound methods: without it a closed connection is
        # freed by reference counting at once instead of by a full collection, which the
        # raised GC thresholds (`servicekit.runtime`) make rare.
        del self.parser

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status:
            self.complete = True

    # used by the transport
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def wait(self, seconds: float | None) -> "asyncio.Future[None]":
        """A future done when more of the response (or its end, or an error) arrives, failed
        with `ReadTimeout` if nothing does within `seconds`.

        A future and a bare timer rather than a coroutine under asyncio.timeout(): this
        runs once or twice per proxied request, and one is pending for every open stream."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        if seconds is not None:
            self._timer = loop.call_later(seconds, _expire, waiter)
        return waiter

    async def drain(self, seconds: float | None) -> None:
        if self._writable:
            return
        drained = self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                await drained
        except TimeoutError:
            raise httpx.WriteTimeout("upstream write timed out") from None
        finally:
            self._drained = None

    def take(self) -> bytes:
        """Everything received of the body so far, as one piece: the chunks that one read
        parsed (an event stream's events, coalesced by the upstream's server) are passed on
        in one write, not one write each."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    def prepare_reuse(self) -> None:
        self._reset()
        self.parser = httptools.HttpResponseParser(self)

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise httpx.WriteError("upstream connection is closed")
        self.transport.write(data)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self._close()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(
        self, pool: "ConnectionPool", conn: _Connection, read_timeout: float | None
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self._read_timeout)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


class ConnectionPool:
    """HTTP/1.1 keep-alive connections to the origins it is asked for; over TLS, verified
    against `ssl_context`, when one is given."""

    def __init__(
        self,
        max_connections: int = 1000,
        max_keepalive_connections: int = 100,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._max_idle = max_keepalive_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._conn_origin: dict[_Connection, Origin] = {}

    async def exchange(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes],
        timeouts: Mapping[str, float | None],
    ) -> UpstreamResponse:
        """Sends one request and returns the status, headers and body stream of the response.

        `headers` are written as given: they must hold `Host`, and `Content-Length` or
        `Transfer-Encoding: chunked` when there is a body (a streamed body without a length is
        sent chunked). Closing the stream hands the connection back to the pool.
        """
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no upstream connection available") from None
        else:
            await self._slots.acquire()
        try:
            conn = self._idle_connection(origin) or await self._connect(
                origin, timeouts.get("connect")
            )
            self._conn_origin[conn] = origin
            try:
                await self._send(conn, method, target, headers, body, timeouts.get("write"))
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(timeouts.get("read"))
            except BaseException:
                conn.close()
                self._conn_origin.pop(conn, None)
                raise
        except BaseException:
            self._slots.release()
            raise
        if method == "HEAD" and not conn.complete:
            # httptools cannot know a HEAD response has no body; never reuse this connection.
            conn.complete = True
            conn.close()
        return UpstreamResponse(
            conn.status, conn.headers, _ResponseStream(self, conn, timeouts.get("read"))
        )

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._expiry:
                conn.prepare_reuse()
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, seconds: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = origin
        try:
            async with asyncio.timeout(seconds):
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {origin[0]}:{origin[1]} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {origin[0]}:{origin[1]}: {exc}") from None
        return conn

    async def _send(
        self,
        conn: _Connection,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes],
        seconds: float | None,
    ) -> None:
        head = [method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        chunked = False
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
            if name.lower() == b"transfer-encoding":
                chunked = True
        head.append(b"\r\n")
        if isinstance(body, bytes):
            head.append(body)
            conn.write(b"".join(head))
        else:
            conn.write(b"".join(head))
            async for chunk in body:
                if not chunk:
                    continue
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain(seconds)
            if chunked:
                conn.write(b"0\r\n\r\n")
        await conn.drain(seconds)

    def release(self, conn: _Connection) -> None:
        self._slots.release()
        origin = self._conn_origin.pop(conn, None)
        if origin is None or not conn.reusable():
            conn.close()
            return
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._conn_origin):
            conn.close()
        self._conn_origin.clear()
