"""Chat completions upstream: guards, the retried call, streams, error translation, logging."""

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx2
import orjson
from fastapi.exceptions import RequestValidationError
from loguru import logger
from openai import APIError, AsyncOpenAI, AuthenticationError, PermissionDeniedError
from pydantic import ValidationError

from llm_service.chat.constants import KEY_CHECK_TIMEOUT
from llm_service.chat.exceptions import (
    MalformedUpstreamResponse,
    ModelNotFound,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
    openai_error,
)
from llm_service.chat.retry import UPSTREAM_FAILURES, retry_after, retry_policy
from llm_service.chat.schemas import (
    AssistantMessage,
    ChatRequest,
    ChatResponse,
    ChatStreamEnd,
    Usage,
    WireChatRequest,
    WireModel,
    WireModelList,
)
from llm_service.config import Settings
from servicekit import ServiceError
from servicekit.problems import problem_body

_SECRET_LIKE = re.compile(r"\b(?:sk|sess)-[A-Za-z0-9_\-*.]{8,}")
_DONE = b"data: [DONE]\n\n"


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


@dataclass(slots=True)
class _Call:
    """One upstream call (all its attempts), reported as one log line."""

    route: str
    model: str
    stream: bool
    attempts: int = 0
    started: float = field(default_factory=time.perf_counter)

    def log(self, outcome: str, usage: Mapping[str, Any] | None = None) -> None:
        usage = usage or {}
        logger.info(
            "upstream call",
            route=self.route,
            model=self.model,
            stream=self.stream,
            attempts=self.attempts,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 2),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            total_tokens=usage.get("total_tokens"),
            outcome=outcome,
        )


@dataclass(slots=True)
class _OpenStream:
    response: httpx2.Response
    chunks: AsyncIterator[bytes]
    first: bytes


class ChatService:
    """Chat completions upstream, with one retry policy around every call.

    The hot path sends our (already validated) JSON bytes through the SDK client's own
    pooled transport, with its base URL, auth and default headers, and hands back the
    upstream's bytes: the SDK's per-request machinery (option models, response parsing)
    would cost a third of the service's CPU per call and bring nothing to a pass-through.
    """

    def __init__(self, client: AsyncOpenAI, http: httpx2.AsyncClient, settings: Settings) -> None:
        self._http = http
        self._url = f"{str(client.base_url).rstrip('/')}/chat/completions"
        headers = {**client.default_headers, **client.auth_headers}
        self._headers = {name: value for name, value in headers.items() if isinstance(value, str)}
        self._settings = settings
        self._models = settings.allowed_models
        policy = retry_policy(settings.openai_max_retries, settings.openai_retry_max_time)
        self._complete_once = policy(self._complete_attempt)
        self._open_once = policy(self._open_attempt)

    # -- guards ----------------------------------------------------------------------------

    def _model(self, requested: str | None) -> str:
        if requested is None:
            return self._settings.openai_model
        if requested not in self._models:
            allowed = ", ".join(self._models)
            message = f"Model '{requested}' is not allowed; allowed models: {allowed}."
            raise RequestValidationError(
                [{"loc": ("body", "model"), "msg": message, "type": "model_not_allowed"}]
            )
        return requested

    def _check_max_tokens(self, **limits: int | None) -> None:
        cap = self._settings.openai_max_tokens
        errors = [
            {
                "loc": ("body", name),
                "msg": f"Input should be at most {cap} (OPENAI_MAX_TOKENS)",
                "type": "less_than_equal",
            }
            for name, value in limits.items()
            if value is not None and value > cap
        ]
        if errors:
            raise RequestValidationError(errors)

    # -- attempts (retried) ----------------------------------------------------------------

    async def _send(self, body: bytes, *, stream: bool) -> httpx2.Response:
        request = self._http.build_request("POST", self._url, content=body, headers=self._headers)
        response = await self._http.send(request, stream=stream)
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise UpstreamStatusError.from_response(response)
        return response

    async def _complete_attempt(self, call: _Call, body: bytes) -> tuple[dict[str, Any], bytes]:
        call.attempts += 1
        content = (await self._send(body, stream=False)).content
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise MalformedUpstreamResponse("the completion is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise MalformedUpstreamResponse("the completion has no choices")
        return payload, content

    async def _open_attempt(self, call: _Call, body: bytes) -> _OpenStream:
        """Open the stream and wait for its first bytes: until then a failure is retried."""
        call.attempts += 1
        response = await self._send(body, stream=True)
        chunks = response.aiter_bytes()
        try:
            async for first in chunks:
                if first:
                    return _OpenStream(response, chunks, first)
        except BaseException:
            await response.aclose()
            raise
        await response.aclose()
        raise httpx2.RemoteProtocolError("the upstream ended the stream before its first chunk")

    async def _complete(self, call: _Call, body: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            return await self._complete_once(call, body)
        except UPSTREAM_FAILURES as exc:
            raise self._failed(call, exc) from None

    async def _open(self, call: _Call, body: bytes) -> _OpenStream:
        try:
            return await self._open_once(call, body)
        except UPSTREAM_FAILURES as exc:
            raise self._failed(call, exc) from None

    def _failed(self, call: _Call, exc: Exception) -> ServiceError:
        error = self._translate(exc)
        call.log(error.code)
        return error

    def _translate(self, exc: Exception) -> ServiceError:
        """SPEC §7's mapping of what went wrong upstream to what the client sees."""
        if isinstance(exc, UpstreamStatusError):
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
                )
            if status == 408:
                return UpstreamTimeout("The upstream API timed out (HTTP 408).")
            if status < 500 and status != 409:
                return UpstreamBadRequest(self._upstream_message(exc))
            return UpstreamError(f"The upstream API failed with HTTP {status}.")
        if isinstance(exc, httpx2.TimeoutException):
            return UpstreamTimeout(
                f"The upstream API did not answer within {self._settings.openai_timeout:g} s."
            )
        if isinstance(exc, MalformedUpstreamResponse):
            return UpstreamError(f"The upstream API sent a malformed response: {exc}.")
        return UpstreamError("Could not reach the upstream API, or it dropped the connection.")

    def _upstream_message(self, exc: UpstreamStatusError) -> str:
        message = exc.error.get("message")
        if not isinstance(message, str) or not message:
            return f"The upstream API rejected the request (HTTP {exc.status})."
        key = self._settings.openai_api_key
        if key is not None:
            message = message.replace(key.get_secret_value(), "[redacted]")
        return "Upstream: " + _SECRET_LIKE.sub("[redacted]", message)[:1000]

    # -- our shape: POST /api/v1/openai/chat -----------------------------------------------

    def _chat_body(self, request: ChatRequest, model: str) -> bytes:
        self._check_max_tokens(max_tokens=request.max_tokens)
        body: dict[str, Any] = {
            "model": model,
            "messages": [message.model_dump() for message in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        model = self._model(request.model)
        call = _Call("chat", model, stream=False)
        payload, _ = await self._complete(call, self._chat_body(request, model))
        try:
            choice = payload["choices"][0]
            message = choice.get("message") or {}
            usage = payload.get("usage")
            response = ChatResponse(
                id=payload["id"],
                model=payload.get("model") or model,
                message=AssistantMessage(
                    content=message.get("content") or message.get("refusal") or ""
                ),
                finish_reason=choice.get("finish_reason"),
                usage=Usage.model_validate(usage) if usage else None,
            )
        except (KeyError, IndexError, TypeError, ValueError):
            error = UpstreamError("The upstream API sent a malformed response.")
            call.log(error.code)
            raise error from None
        call.log("ok", usage)
        return response

    async def chat_stream(self, request: ChatRequest, path: str) -> AsyncIterator[bytes]:
        """Opens the upstream stream (retried until it yields) and returns our events."""
        model = self._model(request.model)
        call = _Call("chat", model, stream=True)
        opened = await self._open(call, self._chat_body(request, model))
        return self._chat_events(call, opened, path)

    async def _chat_events(
        self, call: _Call, opened: _OpenStream, path: str
    ) -> AsyncIterator[bytes]:
        ident, model, finish, usage = "", call.model, None, None
        buffer, chunk, done = b"", opened.first, False
        try:
            while True:
                events, buffer = _split_events(buffer + chunk)
                for data in events:
                    if data == b"[DONE]":
                        done = True
                        break
                    parsed = _parse_event(data)
                    ident = parsed.get("id") or ident
                    model = parsed.get("model") or model
                    usage = parsed.get("usage") or usage
                    for choice in parsed.get("choices") or ():
                        if choice.get("index", 0) != 0:
                            continue
                        if text := (choice.get("delta") or {}).get("content"):
                            delta = {"id": ident, "model": model, "delta": text}
                            yield b"data: %b\n\n" % orjson.dumps(delta)
                        finish = choice.get("finish_reason") or finish
                if done:
                    break
                chunk = await anext(opened.chunks, b"")
                if not chunk:
                    break
            if not done and finish is None:
                raise MalformedUpstreamResponse("the stream ended before it finished")
            yield b"data: %b\n\n%b" % (_stream_end(ident, model, finish, usage), _DONE)
            call.log("ok", usage)
            # Read the upstream body to its end so that its connection goes back to the pool;
            # closed early it is dropped, and the next stream pays a new TLS handshake.
            with contextlib.suppress(*UPSTREAM_FAILURES):
                async for _ in opened.chunks:
                    pass
        except UPSTREAM_FAILURES as exc:
            yield _error_event(self._failed(call, exc), path)
        except (asyncio.CancelledError, GeneratorExit):
            call.log("client_disconnected", usage)
            raise
        finally:
            await opened.response.aclose()

    # -- OpenAI's wire format: POST /api/v1/openai/v1/chat/completions ---------------------

    def _wire_body(self, request: WireChatRequest, raw: bytes) -> tuple[str, bytes]:
        model = self._model(request.model)
        self._check_max_tokens(
            max_tokens=request.max_tokens, max_completion_tokens=request.max_completion_tokens
        )
        if request.model is None:
            raw = orjson.dumps({**orjson.loads(raw), "model": model})
        return model, raw

    async def wire_completion(self, request: WireChatRequest, raw: bytes) -> bytes:
        """The upstream's chat completion, byte for byte."""
        model, body = self._wire_body(request, raw)
        call = _Call("wire", model, stream=False)
        payload, content = await self._complete(call, body)
        call.log("ok", payload.get("usage"))
        return content

    async def wire_stream(
        self, request: WireChatRequest, raw: bytes, path: str
    ) -> AsyncIterator[bytes]:
        model, body = self._wire_body(request, raw)
        call = _Call("wire", model, stream=True)
        opened = await self._open(call, body)
        return self._wire_events(call, opened, path)

    async def _wire_events(
        self, call: _Call, opened: _OpenStream, path: str
    ) -> AsyncIterator[bytes]:
        """The upstream's chunks unchanged, cut at event boundaries so that an error event
        after a failure never lands inside a half-sent one."""
        buffer, chunk, previous, last = b"", opened.first, b"", b""
        try:
            while True:
                buffer += chunk
                cut = _end_of_events(buffer)
                if cut:
                    previous, last = last, buffer[:cut]
                    buffer = buffer[cut:]
                    yield last
                chunk = await anext(opened.chunks, b"")
                if not chunk:
                    break
            if buffer:
                yield buffer
            call.log("ok", _find_usage(previous + last))
        except UPSTREAM_FAILURES as exc:
            yield _error_event(self._failed(call, exc), path, wire=True)
        except (asyncio.CancelledError, GeneratorExit):
            call.log("client_disconnected")
            raise
        finally:
            await opened.response.aclose()

    def models(self) -> WireModelList:
        return WireModelList(data=[WireModel(id=name) for name in self._models])

    def model(self, name: str) -> WireModel:
        if name not in self._models:
            raise ModelNotFound(f"No model '{name}' is offered here.")
        return WireModel(id=name)


def _end_of_events(buffer: bytes) -> int:
    """Where the last complete server-sent event in `buffer` ends (0: none yet)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The `data` of each complete event in `buffer`, and the incomplete rest."""
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    *blocks, rest = buffer.split(b"\n\n")
    events = []
    for block in blocks:
        lines = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if lines:
            events.append(b"\n".join(lines))
    return events, rest


def _parse_event(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedUpstreamResponse("a stream event is not JSON") from None
    if not isinstance(parsed, dict):
        raise MalformedUpstreamResponse("a stream event is not an object")
    if isinstance(parsed.get("error"), dict):
        raise MalformedUpstreamResponse("the upstream reported an error mid-stream")
    return parsed


def _stream_end(ident: str, model: str, finish: str | None, usage: Any) -> bytes:
    """The final event of `/chat`: the documented `Usage` alone, not OpenAI's detail objects."""
    fields = {"id": ident, "model": model, "finish_reason": finish, "usage": usage}
    try:
        end = ChatStreamEnd.model_validate(fields)
    except ValidationError:
        raise MalformedUpstreamResponse("the usage chunk is malformed") from None
    return end.model_dump_json().encode()


def _find_usage(tail: bytes) -> dict[str, Any] | None:
    at = tail.rfind(b'"usage":{')
    if at < 0:
        return None
    start = tail.rfind(b"data:", 0, at)
    end = tail.find(b"\n", at)
    try:
        usage = orjson.loads(tail[start + 5 : end if end >= 0 else None]).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _error_event(error: ServiceError, path: str, *, wire: bool = False) -> bytes:
    body = problem_body(error.status, error.code, error.title, error.detail, path)
    if wire:
        # The openai SDK raises an APIError for an event whose data has an `error` object.
        body["error"] = openai_error(body)
    return b"event: error\ndata: %b\n\n" % orjson.dumps(body)
