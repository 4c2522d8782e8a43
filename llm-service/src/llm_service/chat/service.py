"""`POST /chat`: our request and response shapes over the upstream's chat completions."""

import asyncio
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from llm_service.chat import sse
from llm_service.chat.exceptions import MalformedUpstreamResponse, UpstreamError
from llm_service.chat.guards import Guards
from llm_service.chat.retry import UPSTREAM_FAILURES
from llm_service.chat.schemas import (
    AssistantMessage,
    ChatFunctionCall,
    ChatRequest,
    ChatResponse,
    ChatStreamEnd,
    ChatToolCall,
    Usage,
)
from llm_service.chat.upstream import OpenStream, UpstreamCall, UpstreamClient


class ChatService:
    def __init__(self, upstream: UpstreamClient, guards: Guards) -> None:
        self._upstream = upstream
        self._guards = guards

    async def chat(self, request: ChatRequest) -> ChatResponse:
        model = self._guards.model(request.model)
        call = UpstreamCall("chat", model, stream=False)
        payload, _ = await self._upstream.complete(call, self._body(request, model))
        try:
            response = _chat_response(payload, model)
        except (KeyError, IndexError, TypeError, ValueError):
            error = UpstreamError("The upstream API sent a malformed response.")
            call.log(error.code)
            raise error from None
        call.log("ok", payload.get("usage"))
        return response

    async def chat_stream(self, request: ChatRequest) -> AsyncGenerator[bytes, None]:
        """Opens the upstream stream (retried until it yields) and returns our events; a
        failure after that is raised from the events as the client's `ServiceError`."""
        model = self._guards.model(request.model)
        call = UpstreamCall("chat", model, stream=True)
        opened = await self._upstream.open(call, "/chat/completions", self._body(request, model))
        return self._events(call, opened)

    def _body(self, request: ChatRequest, model: str) -> bytes:
        self._guards.check_max_tokens(max_tokens=request.max_tokens)
        body: dict[str, Any] = {"model": model}
        body.update(
            request.model_dump(
                include={"messages", "temperature", "max_tokens", "tools", "tool_choice"},
                exclude_none=True,
            )
        )
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def _events(self, call: UpstreamCall, opened: OpenStream) -> AsyncGenerator[bytes, None]:
        stream = _ChatStream(ident="", model=call.model)
        buffer = b""
        try:
            while not stream.done and (chunk := await opened.read()):
                events, buffer = sse.split_events(buffer + chunk)
                for event in stream.feed(events):
                    yield event
            yield stream.end()
            call.log("ok", stream.usage)
            await opened.drain()
        except UPSTREAM_FAILURES as exc:
            raise self._upstream.failed(call, exc) from None
        except (asyncio.CancelledError, GeneratorExit):
            call.log("client_disconnected", stream.usage)
            raise
        finally:
            await opened.aclose()


def _chat_response(payload: dict[str, Any], model: str) -> ChatResponse:
    choice = payload["choices"][0]
    message = choice.get("message") or {}
    usage = payload.get("usage")
    return ChatResponse(
        id=payload["id"],
        model=payload.get("model") or model,
        message=AssistantMessage(
            content=message.get("content") or message.get("refusal") or "",
            tool_calls=[_tool_call(call) for call in message["tool_calls"]]
            if message.get("tool_calls")
            else None,
        ),
        finish_reason=choice.get("finish_reason"),
        usage=Usage.model_validate(usage) if usage else None,
    )


def _tool_call(call: dict[str, Any]) -> ChatToolCall:
    function = call["function"]
    return ChatToolCall(
        id=call["id"],
        function=ChatFunctionCall(name=function["name"], arguments=function["arguments"]),
    )


def _tool_call_piece(call: dict[str, Any]) -> dict[str, Any]:
    """A streamed tool-call delta as our event's `tool_call`: its `id` and `name` come on
    the first piece of each call only."""
    function = call.get("function") or {}
    piece = {"index": call.get("index", 0), "arguments": function.get("arguments") or ""}
    if call.get("id"):
        piece["id"] = call["id"]
    if function.get("name"):
        piece["name"] = function["name"]
    return piece


@dataclass(slots=True)
class _ChatStream:
    """The upstream's `chat.completion.chunk` events read so far, turned into ours: one
    per text delta or tool-call delta of the first choice, and a last one with
    `finish_reason` and `usage`."""

    ident: str
    model: str
    finish: str | None = None
    usage: Any = None
    done: bool = False

    def feed(self, events: list[bytes]) -> Iterator[bytes]:
        for data in events:
            if data == b"[DONE]":
                self.done = True
                return
            yield from self._chunk(sse.parse_event(data))

    def _chunk(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        self.ident = chunk.get("id") or self.ident
        self.model = chunk.get("model") or self.model
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                yield sse.data_event({"id": self.ident, "model": self.model, "delta": text})
            for call in delta.get("tool_calls") or ():
                yield sse.data_event(
                    {"id": self.ident, "model": self.model, "tool_call": _tool_call_piece(call)}
                )
            self.finish = choice.get("finish_reason") or self.finish

    def end(self) -> bytes:
        """The final event (the documented `Usage` alone, not OpenAI's detail objects), then
        `[DONE]`."""
        if not self.done and self.finish is None:
            raise MalformedUpstreamResponse("the stream ended before it finished")
        fields = {
            "id": self.ident,
            "model": self.model,
            "finish_reason": self.finish,
            "usage": self.usage,
        }
        try:
            end = ChatStreamEnd.model_validate(fields)
        except ValidationError:
            raise MalformedUpstreamResponse("the usage chunk is malformed") from None
        return b"data: %b\n\n%b" % (end.model_dump_json().encode(), sse.DONE)
