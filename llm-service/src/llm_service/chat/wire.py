"""OpenAI's wire format (chat completions, embeddings, models): the client's request bytes
go upstream, the upstream's come back."""

import asyncio
from collections.abc import AsyncGenerator

import orjson

from llm_service.chat import sse
from llm_service.chat.exceptions import ModelNotFound
from llm_service.chat.guards import Guards
from llm_service.chat.retry import UPSTREAM_FAILURES
from llm_service.chat.schemas import (
    WireChatRequest,
    WireEmbeddingRequest,
    WireModel,
    WireModelList,
)
from llm_service.chat.upstream import OpenStream, UpstreamCall, UpstreamClient


class WireService:
    def __init__(self, upstream: UpstreamClient, guards: Guards) -> None:
        self._upstream = upstream
        self._guards = guards

    async def completion(self, request: WireChatRequest, raw: bytes) -> bytes:
        """The upstream's chat completion, byte for byte."""
        model, body = self._body(request, raw)
        call = UpstreamCall("wire", model, stream=False)
        payload, content = await self._upstream.complete(call, body)
        call.log("ok", payload.get("usage"))
        return content

    async def stream(self, request: WireChatRequest, raw: bytes) -> AsyncGenerator[bytes, None]:
        """Opens the upstream stream (retried until it yields) and returns its events; a
        failure after that is raised from the events as the client's `ServiceError`."""
        model, body = self._body(request, raw)
        call = UpstreamCall("wire", model, stream=True)
        opened = await self._upstream.open(call, body)
        return self._events(call, opened)

    async def embeddings(self, request: WireEmbeddingRequest, raw: bytes) -> bytes:
        """The upstream's embeddings, byte for byte."""
        model = self._guards.model(request.model)
        call = UpstreamCall("embeddings", model, stream=False)
        payload, content = await self._upstream.embed(call, raw)
        call.log("ok", payload.get("usage"))
        return content

    def models(self) -> WireModelList:
        return WireModelList(data=[WireModel(id=name) for name in self._guards.models])

    def model(self, name: str) -> WireModel:
        if name not in self._guards.models:
            raise ModelNotFound(f"No model '{name}' is offered here.")
        return WireModel(id=name)

    def _body(self, request: WireChatRequest, raw: bytes) -> tuple[str, bytes]:
        model = self._guards.model(request.model)
        self._guards.check_max_tokens(
            max_tokens=request.max_tokens, max_completion_tokens=request.max_completion_tokens
        )
        self._guards.check_n(request.n)
        if request.model is None:
            raw = orjson.dumps({**orjson.loads(raw), "model": model})
        return model, raw

    async def _events(self, call: UpstreamCall, opened: OpenStream) -> AsyncGenerator[bytes, None]:
        """The upstream's chunks unchanged, cut at event boundaries so that an error event
        after a failure never lands inside a half-sent one."""
        buffer, previous, last = b"", b"", b""
        try:
            while chunk := await opened.read():
                buffer += chunk
                if cut := sse.end_of_events(buffer):
                    previous, last, buffer = last, buffer[:cut], buffer[cut:]
                    yield last
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
