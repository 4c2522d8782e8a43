"""The upstream client: OpenAI's chat completions, each call retried by one policy, and what
went wrong upstream translated into the error the client sees."""

import contextlib
import math
import re
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx2
import orjson
from loguru import logger
from openai import APIError, AsyncOpenAI, AuthenticationError, PermissionDeniedError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from llm_service.chat.constants import KEY_CHECK_TIMEOUT
from llm_service.chat.exceptions import (
    MalformedUpstreamResponse,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
)
from llm_service.chat.retry import UPSTREAM_FAILURES, retry_after, retry_policy
from llm_service.chat.transport import Hop, Reply, upstream_hop
from llm_service.config import Settings
from llm_service.metrics import (
    ATTEMPTS,
    CALL_DURATION,
    CALLS,
    RETRIES,
    TIME_TO_FIRST_CHUNK,
    TOKENS,
)
from llm_service.usage import record_usage
from servicekit import ServiceError
from servicekit.tracing import trace_context_headers, tracing_enabled

_SECRET_LIKE = re.compile(r"\b(?:sk|sess)-[A-Za-z0-9_\-*.]{8,}")


class KeyStatus(StrEnum):
    MISSING = "missing"
    UNCHECKED = "unchecked"
    VALID = "valid"
    REJECTED = "rejected"
    UNVERIFIED = "unverified"


async def check_key(client: AsyncOpenAI, settings: Settings) -> KeyStatus:
    """Ask the upstream once whether it accepts the key; never raises."""
    try:
        await client.models.list(timeout=min(settings.openai_timeout, KEY_CHECK_TIMEOUT))
    except (AuthenticationError, PermissionDeniedError):
        logger.error("OPENAI_API_KEY was rejected by the upstream API; readiness reports 503")
        return KeyStatus.REJECTED
    except APIError as exc:
        logger.warning("could not check OPENAI_API_KEY at start-up", reason=type(exc).__name__)
        return KeyStatus.UNVERIFIED
    logger.info("OPENAI_API_KEY accepted by the upstream API")
    return KeyStatus.VALID


def _token_counts(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Prompt and completion tokens of a call: chat completions and embeddings name them
    so, the Responses API input and output tokens."""
    return {
        "prompt": usage.get("prompt_tokens", usage.get("input_tokens")),
        "completion": usage.get("completion_tokens", usage.get("output_tokens")),
    }


_TRACER = trace.get_tracer("llm_service.upstream")


@dataclass(slots=True)
class UpstreamCall:
    """One upstream call (all its attempts), reported as one log line and in the metrics;
    traced, when tracing is on, as a span with one child per attempt and one for a stream."""

    route: str
    model: str
    stream: bool
    attempts: int = 0
    started: float = field(default_factory=time.perf_counter)
    span: Span | None = None
    stream_span: Span | None = None

    def __post_init__(self) -> None:
        if tracing_enabled():
            attributes: dict[str, str | bool] = {
                "gen_ai.request.model": self.model,
                "llm.stream": self.stream,
            }
            self.span = _TRACER.start_span(
                f"openai {self.route}", kind=SpanKind.CLIENT, attributes=attributes
            )

    def attempt(self) -> AbstractContextManager[Span | None]:
        """The span of one attempt, current while it runs (its `traceparent` goes upstream)."""
        if self.span is None:
            return nullcontext()
        return _TRACER.start_as_current_span(
            "openai attempt",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={"llm.attempt": self.attempts},
        )

    def attempted(self, status: int | str) -> None:
        """An attempt ended with the upstream's status (or `timeout`, `connection_error`)."""
        ATTEMPTS.labels(self.route, self.model, str(status)).inc()
        if self.span is not None:
            trace.get_current_span().set_attribute("llm.upstream_status", str(status))

    def first_chunk(self) -> None:
        TIME_TO_FIRST_CHUNK.labels(self.route, self.model).observe(
            time.perf_counter() - self.started
        )
        if self.span is not None:
            context = trace.set_span_in_context(self.span)
            self.stream_span = _TRACER.start_span("openai stream", context=context)

    def log(self, outcome: str, usage: Mapping[str, Any] | None = None) -> None:
        """The call's one log line; its usage also goes into the gateway's usage report."""
        record_usage(usage)
        usage = usage or {}
        tokens = _token_counts(usage)
        elapsed = time.perf_counter() - self.started
        logger.info(
            "upstream call",
            route=self.route,
            model=self.model,
            stream=self.stream,
            attempts=self.attempts,
            latency_ms=round(elapsed * 1000, 2),
            prompt_tokens=tokens["prompt"],
            completion_tokens=tokens["completion"],
            total_tokens=usage.get("total_tokens"),
            outcome=outcome,
        )
        CALLS.labels(self.route, self.model, outcome).inc()
        CALL_DURATION.labels(self.route, self.model).observe(elapsed)
        if self.attempts > 1:
            RETRIES.labels(self.route, self.model).inc(self.attempts - 1)
        for kind, count in tokens.items():
            if isinstance(count, int) and count > 0:
                TOKENS.labels(self.model, kind).inc(count)
        if self.span is not None:
            self._end_spans(outcome, tokens)

    def _end_spans(self, outcome: str, tokens: Mapping[str, Any]) -> None:
        assert self.span is not None
        if self.stream_span is not None:
            self.stream_span.end()
        self.span.set_attributes({"llm.outcome": outcome, "llm.attempts": self.attempts})
        for kind, count in tokens.items():
            if isinstance(count, int):
                self.span.set_attribute(f"gen_ai.usage.{kind}_tokens", count)
        if outcome not in {"ok", "no_models_endpoint", "client_disconnected"}:
            self.span.set_status(StatusCode.ERROR, outcome)
        self.span.end()


class OpenStream:
    """An upstream stream whose first bytes have arrived."""

    def __init__(self, reply: Reply, first: bytes):
        self._reply = reply
        self._chunks = reply.chunks
        self._pending = first

    async def read(self) -> bytes:
        """The next chunk of the body; `b""` at its end."""
        chunk, self._pending = self._pending, b""
        return chunk or await anext(self._chunks, b"")

    async def drain(self) -> None:
        """Read the body to its end so that its connection goes back to the pool; closed
        early it is dropped, and the next stream pays a new TLS handshake."""
        with contextlib.suppress(*UPSTREAM_FAILURES):
            async for _ in self._chunks:
                pass

    async def aclose(self) -> None:
        await self._reply.aclose()


class UpstreamClient:
    """OpenAI's API upstream (chat completions, the Responses API, embeddings, models), with
    one retry policy around every call.

    It sends our (already validated) JSON bytes to the SDK client's base URL with its auth
    and default headers, over the upstream hop (`llm_service.chat.transport`), and hands
    back the upstream's bytes: the SDK's per-request machinery (option models, response
    parsing) would add CPU to every call (`make bench`, rows `llm` and `llm-ttfc`) and
    nothing to a pass-through.
    """

    def __init__(self, client: AsyncOpenAI, http: httpx2.AsyncClient, settings: Settings) -> None:
        headers = {**client.default_headers, **client.auth_headers}
        raw = [
            (name.lower().encode(), value.encode())
            for name, value in headers.items()
            if isinstance(value, str)
        ]
        self._hop: Hop = upstream_hop(http, str(client.base_url), raw, settings.openai_timeout)
        self._settings = settings
        policy = retry_policy(settings.openai_max_retries, settings.openai_retry_max_time)
        self._call_once = policy(self._attempt)
        self._open_once = policy(self._open_attempt)

    async def complete(self, call: UpstreamCall, body: bytes) -> tuple[dict[str, Any], bytes]:
        """The chat completion, parsed and as sent; raises the client's `ServiceError`."""
        return await self._call(call, "/chat/completions", body, "choices")

    async def respond(self, call: UpstreamCall, body: bytes) -> tuple[dict[str, Any], bytes]:
        """The Responses API's response, parsed and as sent; raises the client's `ServiceError`."""
        return await self._call(call, "/responses", body, "output")

    async def embed(self, call: UpstreamCall, body: bytes) -> tuple[dict[str, Any], bytes]:
        """The embeddings, parsed and as sent; raises the client's `ServiceError`."""
        return await self._call(call, "/embeddings", body, "data")

    async def models(self, call: UpstreamCall) -> list[dict[str, Any]] | None:
        """The upstream's model entries; `None` when it has no models endpoint (404)."""
        try:
            payload, _ = await self._call_once(call, "/models", None, "data")
        except UpstreamStatusError as exc:
            if exc.status != 404:
                raise self.failed(call, exc) from None
            call.log("no_models_endpoint")
            return None
        except UPSTREAM_FAILURES as exc:
            raise self.failed(call, exc) from None
        call.log("ok")
        entries = payload["data"]
        return [entry for entry in entries if isinstance(entry, dict) and "id" in entry]

    async def open(self, call: UpstreamCall, path: str, body: bytes) -> OpenStream:
        """The stream of `path` (`/chat/completions`, `/responses`), retried until its first
        bytes arrive; raises the client's `ServiceError`."""
        try:
            return await self._open_once(call, path, body)
        except UPSTREAM_FAILURES as exc:
            raise self.failed(call, exc) from None

    async def _call(
        self, call: UpstreamCall, path: str, body: bytes, member: str
    ) -> tuple[dict[str, Any], bytes]:
        try:
            return await self._call_once(call, path, body, member)
        except UPSTREAM_FAILURES as exc:
            raise self.failed(call, exc) from None

    async def aclose(self) -> None:
        await self._hop.aclose()

    def failed(self, call: UpstreamCall, exc: Exception) -> ServiceError:
        """The error the client sees for an upstream failure, logged as the call's outcome."""
        error = self._translate(exc)
        call.log(error.code)
        return error

    async def _send(self, call: UpstreamCall, path: str, body: bytes | None) -> Reply:
        """POST `body`, or GET without one; a status of 400 or more is raised."""
        method = "GET" if body is None else "POST"
        with call.attempt():
            headers = trace_context_headers() if call.span else []
            try:
                reply = await self._hop.send(method, path, body, headers)
            except httpx2.TimeoutException:
                call.attempted("timeout")
                raise
            except httpx2.TransportError:
                call.attempted("connection_error")
                raise
            call.attempted(reply.status)
        if reply.status >= 400:
            raise UpstreamStatusError.from_reply(reply.status, reply.headers, await reply.read())
        return reply

    async def _attempt(
        self, call: UpstreamCall, path: str, body: bytes | None, member: str
    ) -> tuple[dict[str, Any], bytes]:
        """One attempt; a 200 must be a JSON object with a list `member` (`choices`, `data`)."""
        call.attempts += 1
        content = await (await self._send(call, path, body)).read()
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise MalformedUpstreamResponse("the response is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get(member), list):
            raise MalformedUpstreamResponse(f"the response has no {member}")
        return payload, content

    async def _open_attempt(self, call: UpstreamCall, path: str, body: bytes) -> OpenStream:
        """Open the stream and wait for its first bytes: until then a failure is retried."""
        call.attempts += 1
        reply = await self._send(call, path, body)
        try:
            async for first in reply.chunks:
                if first:
                    call.first_chunk()
                    return OpenStream(reply, first)
        except BaseException:
            await reply.aclose()
            raise
        await reply.aclose()
        raise httpx2.RemoteProtocolError("the upstream ended the stream before its first chunk")

    def _translate(self, exc: Exception) -> ServiceError:
        if isinstance(exc, UpstreamStatusError):
            return self._translate_status(exc)
        if isinstance(exc, httpx2.TimeoutException):
            return UpstreamTimeout(
                f"The upstream API did not answer within {self._settings.openai_timeout:g} s."
            )
        if isinstance(exc, MalformedUpstreamResponse):
            return UpstreamError(f"The upstream API sent a malformed response: {exc}.")
        return UpstreamError("Could not reach the upstream API, or it dropped the connection.")

    def _translate_status(self, exc: UpstreamStatusError) -> ServiceError:
        """Our credentials are our problem (502), the request is the client's (400), a
        rate limit is passed on (429, with a wait), and anything else is the upstream's.
        The upstream's error object goes with the two the client can act on."""
        status = exc.status
        if status in {401, 403}:
            return UpstreamAuthFailed(
                f"The upstream API rejected the service's API key (HTTP {status})."
            )
        if status == 429:
            wait = max(1, math.ceil(retry_after(exc) or 1))
            return UpstreamRateLimited(
                f"The upstream API is rate limiting us; retry in {wait} s.",
                headers={"Retry-After": str(wait)},
                upstream=exc.error,
            )
        if status == 408:
            return UpstreamTimeout("The upstream API timed out (HTTP 408).")
        if status < 500 and status != 409:
            return UpstreamBadRequest(self._upstream_message(exc), upstream=exc.error)
        return UpstreamError(f"The upstream API failed with HTTP {status}.")

    def _upstream_message(self, exc: UpstreamStatusError) -> str:
        message = exc.error.get("message")
        if not isinstance(message, str) or not message:
            return f"The upstream API rejected the request (HTTP {exc.status})."
        key = self._settings.openai_api_key
        if key is not None:
            message = message.replace(key.get_secret_value(), "[redacted]")
        return "Upstream: " + _SECRET_LIKE.sub("[redacted]", message)[:1000]
