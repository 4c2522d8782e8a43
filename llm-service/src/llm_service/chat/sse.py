"""Server-sent events, both ways: reading the upstream's, writing ours."""

import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llm_service.chat.exceptions import MalformedUpstreamResponse, openai_error
from servicekit import ServiceError
from servicekit.disconnect import CancelledOnDisconnect
from servicekit.problems import problem_body

DONE = b"data: [DONE]\n\n"
_SEQUENCE_NUMBER = re.compile(rb'"sequence_number":\s*(\d+)')


def data_event(data: Mapping[str, Any]) -> bytes:
    return b"data: %b\n\n" % orjson.dumps(data)


def end_of_events(buffer: bytes) -> int:
    """Where the last complete event in `buffer` ends (0: none yet)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
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


def parse_event(data: bytes) -> dict[str, Any]:
    """One upstream event's JSON object; an `error` object in it is a failure."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedUpstreamResponse("a stream event is not JSON") from None
    if not isinstance(parsed, dict):
        raise MalformedUpstreamResponse("a stream event is not an object")
    if isinstance(parsed.get("error"), dict):
        raise MalformedUpstreamResponse("the upstream reported an error mid-stream")
    return parsed


def find_usage(tail: bytes) -> dict[str, Any] | None:
    """The `usage` of the last event in `tail` that has one, without parsing every event."""
    at = tail.rfind(b'"usage":{')
    if at < 0:
        return None
    start = tail.rfind(b"data:", 0, at)
    end = tail.find(b"\n", at)
    try:
        event = orjson.loads(tail[start + 5 : end if end >= 0 else None])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    # A chat chunk has its own `usage`; the Responses API's `response.completed` has its
    # response's.
    response = event.get("response")
    usage = event.get("usage") or (response.get("usage") if isinstance(response, dict) else None)
    return usage if isinstance(usage, dict) else None


_EVENT_BOUNDARY = re.compile(rb"\r?\n\r?\n")
_USAGE = b'"usage":{'


def _is_usage_chunk(block: bytes) -> bool:
    """A chunk with `usage` and no choices: what `stream_options.include_usage` adds."""
    if _USAGE not in block:
        return False
    data = b"\n".join(
        line[5:].lstrip(b" ") for line in block.splitlines() if line.startswith(b"data:")
    )
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("choices") == [] and bool(parsed.get("usage"))


def _block_start(events: bytes, low: int, at: int) -> int:
    """Where the event holding `events[at]` begins: after the last boundary before `at`
    (every boundary ends in `\n\n` or `\n\r\n`), at `low` at the earliest."""
    lf, crlf = events.rfind(b"\n\n", low, at), events.rfind(b"\n\r\n", low, at)
    return max(low, lf + 2 if lf >= 0 else low, crlf + 3 if crlf >= 0 else low)


def without_usage_chunk(events: bytes) -> bytes:
    """Complete `events` without the usage chunk, if one is among them; only the events
    that name a `usage` object are parsed."""
    kept, done = [], 0
    at = events.find(_USAGE)
    while at >= 0:
        start = _block_start(events, done, at)
        boundary = _EVENT_BOUNDARY.search(events, at)
        end = boundary.end() if boundary else len(events)
        if _is_usage_chunk(events[start : boundary.start() if boundary else end]):
            kept.append(events[done:start])
            done = end
        at = events.find(_USAGE, end)
    return b"".join([*kept, events[done:]]) if kept else events


def error_event(error: ServiceError, instance: str, *, openai: bool) -> bytes:
    """An `error` event whose data is the problem document for `error`."""
    body = problem_body(error.status, error.code, error.title, error.detail, instance)
    if openai:
        # The openai SDK raises an APIError for an event whose data has an `error` object.
        body["error"] = openai_error(body, error)
    return b"event: error\ndata: %b\n\n" % orjson.dumps(body)


def response_error_event(error: ServiceError, sent: bytes) -> bytes:
    """The Responses API's own `error` event for `error`, numbered after the last event in
    `sent` (what the client received last): the SDK hands it to the client as a typed
    `ResponseErrorEvent`."""
    numbers = _SEQUENCE_NUMBER.findall(sent)
    data = {
        "type": "error",
        "code": error.code,
        "message": error.detail or error.title,
        "param": None,
        "sequence_number": int(numbers[-1]) + 1 if numbers else 0,
    }
    return b"event: error\ndata: %b\n\n" % orjson.dumps(data)


async def ending_in_error_event(
    events: AsyncGenerator[bytes, None], instance: str, *, openai: bool
) -> AsyncGenerator[bytes, None]:
    """`events`; a `ServiceError` they raise once the response began ends them as an
    `error` event, the only way left to tell the client."""
    async with aclosing(events):
        try:
            async for event in events:
                yield event
        except ServiceError as error:
            yield error_event(error, instance, openai=openai)


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` of `events`, which are closed, and with them the upstream's
    stream, as soon as the client leaves.

    The events are sent from the request's own task, cancelled when the client leaves
    (`servicekit.disconnect`): Starlette's `StreamingResponse` runs an anyio task
    group with a task of its own for the body, whose start delays the first event by a pass
    of the event loop and costs CPU on every stream.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(events, headers=_HEADERS)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with CancelledOnDisconnect(receive):
            async with aclosing(self._events):
                await self.stream_response(send)
