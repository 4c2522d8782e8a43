"""OpenAI's wire format (chat completions, the Responses API, embeddings, models): the
client's request bytes go upstream, the upstream's come back."""

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson

from llm_service.chat import sse
from llm_service.chat.constants import MODELS_CACHE_TTL
from llm_service.chat.exceptions import ModelNotFound
from llm_service.chat.guards import Guards
from llm_service.chat.retry import UPSTREAM_FAILURES
from llm_service.chat.schemas import (
    WireChatRequest,
    WireEmbeddingRequest,
    WireModel,
    WireModelList,
    WireResponseRequest,
)
from llm_service.chat.upstream import OpenStream, UpstreamCall, UpstreamClient
from servicekit import ServiceError


class WireService:
    def __init__(self, upstream: UpstreamClient, guards: Guards) -> None:
        self._upstream = upstream
        self._guards = guards
        self._models: dict[str, WireModel] = {}
        self._models_expire = 0.0
        self._models_lock = asyncio.Lock()

    async def completion(self, request: WireChatRequest, raw: bytes) -> bytes:
        """The upstream's chat completion, byte for byte."""
        model, body = self._body(request, raw, stream=False)
        call = UpstreamCall("wire", model, stream=False)
        payload, content = await self._upstream.complete(call, body)
        call.log("ok", payload.get("usage"))
        return content

    async def stream(self, request: WireChatRequest, raw: bytes) -> AsyncGenerator[bytes, None]:
        """Opens the upstream stream (retried until it yields) and returns its events; a
        failure after that is raised from the events as the client's `ServiceError`."""
        # Usage is always asked for, so that every stream's tokens are logged and counted; a
        # client that did not ask for it does not get the usage chunk.
        asked = bool((request.stream_options or {}).get("include_usage"))
        model, body = self._body(request, raw, stream=True)
        call = UpstreamCall("wire", model, stream=True)
        opened = await self._upstream.open(call, "/chat/completions", body)
        return self._events(call, opened, hide_usage=not asked)

    async def response(self, request: WireResponseRequest, raw: bytes) -> bytes:
        """The Responses API's response, byte for byte."""
        model, body = self._response_body(request, raw)
        call = UpstreamCall("responses", model, stream=False)
        payload, content = await self._upstream.respond(call, body)
        call.log("ok", payload.get("usage"))
        return content

    async def response_stream(
        self, request: WireResponseRequest, raw: bytes
    ) -> AsyncGenerator[bytes, None]:
        """Opens the upstream's stream of Responses API events (retried until it yields) and
        returns them unchanged; a failure after that ends them with the API's `error` event."""
        model, body = self._response_body(request, raw)
        call = UpstreamCall("responses", model, stream=True)
        opened = await self._upstream.open(call, "/responses", body)
        return self._response_events(call, opened)

    async def embeddings(self, request: WireEmbeddingRequest, raw: bytes) -> bytes:
        """The upstream's embeddings, byte for byte."""
        model = self._guards.model(request.model)
        call = UpstreamCall("embeddings", model, stream=False)
        payload, content = await self._upstream.embed(call, raw)
        call.log("ok", payload.get("usage"))
        return content

    async def models(self) -> WireModelList:
        return WireModelList(data=list((await self._catalogue()).values()))

    async def model(self, name: str) -> WireModel:
        entry = (await self._catalogue()).get(name)
        if entry is None:
            raise ModelNotFound(f"No model '{name}' is offered here.")
        return entry

    async def _catalogue(self) -> dict[str, WireModel]:
        """The upstream's entries of the allowlisted models, in allowlist order, asked for
        at most once per MODELS_CACHE_TTL; the allowlist alone when the upstream has no
        models endpoint."""
        async with self._models_lock:
            if time.monotonic() >= self._models_expire:
                call = UpstreamCall("models", "", stream=False)
                entries = await self._upstream.models(call)
                self._models = self._allowed(entries)
                self._models_expire = time.monotonic() + MODELS_CACHE_TTL
            return self._models

    def _allowed(self, entries: list[dict[str, Any]] | None) -> dict[str, WireModel]:
        if entries is None:
            return {name: WireModel(id=name) for name in self._guards.models}
        offered = {str(entry["id"]): entry for entry in entries}
        return {
            name: WireModel.model_validate(offered[name])
            for name in self._guards.models
            if name in offered
        }

    def _body(self, request: WireChatRequest, raw: bytes, stream: bool) -> tuple[str, bytes]:
        model = self._guards.model(request.model)
        self._guards.check_max_tokens(
            max_tokens=request.max_tokens, max_completion_tokens=request.max_completion_tokens
        )
        self._guards.check_n(request.n)
        options = request.stream_options or {}
        if stream and not options.get("include_usage"):
            body = orjson.loads(raw)
            body["model"] = model
            body["stream_options"] = {**options, "include_usage": True}
            return model, orjson.dumps(body)
        return model, _with_model(raw, model, request.model)

    def _response_body(self, request: WireResponseRequest, raw: bytes) -> tuple[str, bytes]:
        model = self._guards.model(request.model)
        self._guards.check_max_tokens(max_output_tokens=request.max_output_tokens)
        return model, _with_model(raw, model, request.model)

    async def _events(
        self, call: UpstreamCall, opened: OpenStream, hide_usage: bool
    ) -> AsyncGenerator[bytes, None]:
        """The upstream's chunks unchanged (but for a usage chunk to hide), cut at event
        boundaries so that an error event after a failure never lands inside a half-sent one."""
        buffer, previous, last = b"", b"", b""
        try:
            while chunk := await opened.read():
                buffer += chunk
                if cut := sse.end_of_events(buffer):
                    previous, last, buffer = last, buffer[:cut], buffer[cut:]
                    yield sse.without_usage_chunk(last) if hide_usage else last
            if buffer:
                yield buffer
            call.log("ok", sse.find_usage(previous + last))
        except UPSTREAM_FAILURES as exc:
            raise self._upstream.failed(call, exc) from None
        except (asyncio.CancelledError, GeneratorExit):
            call.log("client_disconnected")
            raise
        finally:
            await opened.aclose()

    async def _response_events(
        self, call: UpstreamCall, opened: OpenStream
    ) -> AsyncGenerator[bytes, None]:
        sent = b""
        try:
            async with aclosing(self._events(call, opened, hide_usage=False)) as events:
                async for sent in events:
                    yield sent
        except ServiceError as error:
            yield sse.response_error_event(error, sent)


def _with_model(raw: bytes, model: str, requested: str | None) -> bytes:
    """The body as the client sent it, with the default model named when it named none."""
    return raw if requested is not None else orjson.dumps({**orjson.loads(raw), "model": model})
