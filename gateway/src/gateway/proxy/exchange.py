"""One proxied request, as an object with one method per phase: admit the request, read
its body as it arrives, open the upstream exchange, relay the response.

Failures before the response starts are `ServiceError`s, rendered once in `run`; after
it starts, all that is left is to cut the response short.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import httpx
from loguru import logger
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import Message, Receive, Scope, Send

from gateway.config import IPNetwork
from gateway.proxy.access import AccessControl, Grant
from gateway.proxy.headers import RawHeaders, RequestHeaders, response_headers
from gateway.proxy.usage import UsageTap, reported_tokens
from gateway.ratelimit import RateLimiter
from gateway.transport import UpstreamResponse
from gateway.upstreams import Upstream
from servicekit import (
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceError,
    error_response,
)
from servicekit.context import client_id_var
from servicekit.disconnect import CancelledOnDisconnect
from servicekit.tracing import span, trace_context_headers, tracing_enabled, without_trace_context

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Responses up to this size are read whole before they are relayed (see `_relay_whole`).
_WHOLE_RESPONSE_BYTES = 64 * 1024
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_TRACER = trace.get_tracer("gateway.proxy")


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    body_timeout: float
    trusted_proxies: tuple[IPNetwork, ...]


class _ClientGone(Exception):
    """The client disconnected before its request was complete: nobody to answer."""


@dataclass(slots=True)
class _Outgoing:
    method: str
    target: bytes
    headers: RawHeaders
    body: bytes | AsyncIterator[bytes]


class _Body:
    """The client's body, counted against the size limit; all of it must arrive before one
    deadline, so a client trickling a byte at a time cannot hold a connection here (and
    one upstream) for longer than the body timeout."""

    def __init__(self, receive: Receive, policy: ProxyPolicy, limit: int, expected: bool) -> None:
        self._receive = receive
        self._policy = policy
        self._limit = limit
        self._deadline = (
            asyncio.get_running_loop().time() + policy.body_timeout if expected else None
        )
        self._received = 0

    async def read(self) -> bytes | AsyncIterator[bytes]:
        """The whole body when it came in one message, else a stream of it."""
        first = await self._next()
        while first.get("more_body", False) and not first.get("body"):
            first = await self._next()
        if first["type"] == "http.disconnect":
            raise _ClientGone
        if first.get("more_body", False):
            return self._stream(first)
        return self._count(first.get("body", b""))

    async def _stream(self, first: Message) -> AsyncIterator[bytes]:
        yield self._count(first.get("body", b""))
        more = True
        while more:
            message = await self._next()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            more = message.get("more_body", False)
            yield self._count(message.get("body", b""))

    def _count(self, chunk: bytes) -> bytes:
        self._received += len(chunk)
        if self._received > self._limit:
            raise _too_large(self._limit)
        return chunk

    async def _next(self) -> Message:
        if self._deadline is None:
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._receive()
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self._policy.body_timeout:g} s.",
                headers={"Connection": "close"},
            ) from None


def _framing(body: bytes | AsyncIterator[bytes], declared: bytes | None) -> RawHeaders:
    """The body's length header, written by the gateway itself: the length of a body in
    hand, the client's `Content-Length` of one still streaming, else chunked."""
    if isinstance(body, bytes):
        if body or declared is not None:
            return [(b"content-length", str(len(body)).encode())]
        return []
    if declared is not None:
        return [(b"content-length", declared)]
    return [(b"transfer-encoding", b"chunked")]


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body exceeds {limit} bytes.")


class Exchange:
    """A request under `upstream`'s prefix, from the client's first byte to the last byte
    of the response."""

    def __init__(
        self, upstream: Upstream, policy: ProxyPolicy, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.upstream = upstream
        self.policy = policy
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = RequestHeaders(scope, policy.trusted_proxies)
        # None: no access control (`AUTH_MODE=none`).
        self.access: AccessControl | None = scope["state"]["access"]
        self.grant: Grant | None = None
        self.tokens: UsageTap | None = None

    def run(self) -> Awaitable[None]:
        # Not a coroutine of its own: each frame in a request's await chain is kept for as
        # long as its response streams, and a gateway holds thousands of slow streams.
        return self._traced_run() if tracing_enabled() else self._run()

    async def _traced_run(self) -> None:
        # The request's server span is named by the proxied prefix; the exchange is its child.
        route = self.upstream.route_template
        server = trace.get_current_span()
        server.update_name(f"{self.scope['method']} {route}")
        server.set_attribute("http.route", route)
        attributes = {"gateway.upstream": self.upstream.name, "url.path": self.scope["path"]}
        with _TRACER.start_as_current_span(
            f"proxy {self.upstream.name}", kind=SpanKind.CLIENT, attributes=attributes
        ):
            await self._run()

    async def _run(self) -> None:
        try:
            await self.relay(await self.open(await self.admit()))
        except ServiceError as error:
            if error.status >= 500 and tracing_enabled():
                trace.get_current_span().set_status(StatusCode.ERROR, error.code)
            await error_response(error, self.scope["path"])(self.scope, self.receive, self.send)
        except _ClientGone:
            return

    async def admit(self) -> _Outgoing:
        """The request as it goes upstream, once access control, rate limit and size allow it."""
        if self.access is not None:
            await self._check_access(self.access)
        if self.upstream.rate_limited:
            await self._count_rate()
        declared = self.headers.get(b"content-length")
        limit = self.upstream.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _too_large(limit)
        chunked = self.headers.get(b"transfer-encoding") is not None
        expected = chunked or declared not in (None, b"0")
        body = await _Body(self.receive, self.policy, limit, expected).read()
        headers = self.headers.upstream_headers(
            checked=self.grant is not None, report_usage=self.tokens is not None
        )
        if tracing_enabled():
            # The upstream's spans hang under the proxy's, not under a client's.
            headers = without_trace_context(headers) + trace_context_headers()
        return _Outgoing(
            self.scope["method"], self._target(), headers + _framing(body, declared), body
        )

    async def _check_access(self, access: AccessControl) -> None:
        metrics = self.upstream.metrics
        try:
            self.grant = grant = await access.admit(
                self.headers, self.upstream.name, self.scope["method"], self.scope["query_string"]
            )
        except ServiceError as error:
            if metrics is not None:
                metrics.refused(error.status, error.code)
            raise
        if metrics is not None:
            metrics.admitted(grant.key.id)
        client_id_var.set(grant.key.id)
        if grant.counts_tokens:
            self.tokens = UsageTap()

    def _target(self) -> bytes:
        """The raw path and query, byte for byte as the client sent them."""
        raw_path: bytes = self.scope.get("raw_path") or self.scope["path"].encode()
        query: bytes = self.scope["query_string"]
        return raw_path + b"?" + query if query else raw_path

    async def _count_rate(self) -> None:
        limiter: RateLimiter = self.scope["state"]["limiter"]
        decision = await limiter.hit(f"{self.upstream.name}:{self.headers.client_ip()}")
        if not decision.allowed:
            if self.upstream.metrics is not None:
                self.upstream.metrics.rate_limited()
            raise RateLimited(
                f"More than {decision.limit} requests per minute to {self.upstream.prefix}.",
                headers={"Retry-After": str(decision.retry_after)},
            )

    async def open(self, request: _Outgoing) -> UpstreamResponse:
        """The upstream's response head, recorded in the upstream's metrics."""
        metrics = self.upstream.metrics
        started = time.perf_counter()
        try:
            response = await self._open(request)
        except httpx.TransportError as exc:
            if metrics is not None:
                metrics.failure(
                    isinstance(exc, httpx.TimeoutException), time.perf_counter() - started
                )
            raise self.upstream.problem(exc) from exc
        if metrics is not None:
            metrics.response(response.status, time.perf_counter() - started)
        if tracing_enabled():
            trace.get_current_span().set_attribute("http.response.status_code", response.status)
        return response

    async def _open(self, request: _Outgoing) -> UpstreamResponse:
        """A connection error is retried once where the method is idempotent, the upstream
        allows it and the body is still in hand."""
        try:
            return await self._exchange(request)
        except _RETRYABLE:
            if not self._may_retry(request):
                raise
            logger.info("retrying after a connection error", upstream=self.upstream.name)
            if self.upstream.metrics is not None:
                self.upstream.metrics.retry()
        return await self._exchange(request)

    def _may_retry(self, request: _Outgoing) -> bool:
        return (
            self.upstream.retry_idempotent
            and request.method in _IDEMPOTENT
            and isinstance(request.body, bytes)
        )

    async def _exchange(self, request: _Outgoing) -> UpstreamResponse:
        upstream = self.upstream
        return await upstream.connector.exchange(
            upstream.origin,
            request.method,
            request.target,
            [(b"host", upstream.host), *request.headers],
            request.body,
            upstream.timeouts,
        )

    async def relay(self, response: UpstreamResponse) -> None:
        if self.tokens is not None:
            self.tokens.spent = reported_tokens(response.headers)
            response = self.tokens.tapped(response)
        try:
            if _small_length(response.headers):
                await self._relay_whole(response)
            else:
                await self._stream(response)
        finally:
            if self.tokens is not None and self.grant is not None and self.access is not None:
                await self.access.spend_tokens(self.grant.key, self.tokens.spent)

    async def _relay_whole(self, response: UpstreamResponse) -> None:
        """A small body of known length is read before the status line goes out, so an
        upstream dying mid-body is a clean 502/504 problem rather than a truncated 200."""
        try:
            content = b"".join([chunk async for chunk in response.stream])
        except httpx.TransportError as exc:
            raise self.upstream.problem(exc, mid_response=True) from exc
        finally:
            await response.stream.aclose()
        await self.send(self._start(response))
        await self.send({"type": "http.response.body", "body": content, "more_body": False})

    async def _stream(self, response: UpstreamResponse) -> None:
        with span(_TRACER, "proxy stream"):
            start = self._start(response)
            try:
                if any(name == b"content-length" for name, _ in start["headers"]):
                    await self.send(start)
                    await _pump_sized(response.stream, self.send)
                else:
                    await self._pump_until_disconnect(start, response.stream)
            except httpx.TransportError as exc:
                # The status line is already sent: all that is left is to cut the response
                # short, so the client sees a truncated body rather than a clean end.
                logger.warning(
                    "upstream failed mid-response", upstream=self.upstream.name, error=str(exc)
                )
                raise
            finally:
                await response.stream.aclose()

    def _start(self, response: UpstreamResponse) -> Message:
        headers = response_headers(response.headers)
        if self.grant is not None and self.grant.quota is not None:
            headers += [
                (name.lower().encode(), value.encode())
                for name, value in self.grant.quota.headers().items()
            ]
        return {"type": "http.response.start", "status": response.status, "headers": headers}

    async def _pump_until_disconnect(self, start: Message, stream: httpx.AsyncByteStream) -> None:
        """A stream of unknown length (SSE) ends early when its client leaves, so the
        upstream (and OpenAI behind it) stops working for nobody.

        The stream is pumped in the request's own task, so the head and the chunk in hand
        leave in this pass of the event loop (so that both go out in one write,
        `servicekit.server`)."""
        send = self.send
        with CancelledOnDisconnect(self.receive):
            await send(start)
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pump_sized(stream: httpx.AsyncByteStream, send: Send) -> None:
    """A body of known length: each chunk is held until the next one shows up, so the
    last (usually the only) one goes out together with the end of the response."""
    held: bytes | None = None
    async for chunk in stream:
        if held is not None:
            await send({"type": "http.response.body", "body": held, "more_body": True})
        held = chunk
    await send({"type": "http.response.body", "body": held or b"", "more_body": False})


def _small_length(raw_headers: RawHeaders) -> bool:
    for name, value in raw_headers:
        if name.lower() == b"content-length":
            return value.isdigit() and int(value) <= _WHOLE_RESPONSE_BYTES
    return False
