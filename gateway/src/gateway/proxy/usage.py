"""The tokens an LLM response used, as the LLM service reports them to the gateway (see
`servicekit.usage`): read, and removed before the client sees them."""

from collections.abc import AsyncIterator

import httpx

from gateway.proxy.headers import RawHeaders
from gateway.transport import UpstreamResponse
from servicekit.usage import USAGE_COMMENT, USAGE_TOKENS_HEADER

_TOKENS_HEADER = USAGE_TOKENS_HEADER.lower().encode()
_EVENT_STREAM = b"text/event-stream"


def reported_tokens(headers: RawHeaders) -> int:
    """The tokens of a JSON response, from its `X-Usage-Tokens` header (0 without one)."""
    for name, value in headers:
        if name.lower() == _TOKENS_HEADER:
            return int(value) if value.isdigit() else 0
    return 0


def _is_event_stream(headers: RawHeaders) -> bool:
    return any(
        name.lower() == b"content-type" and value.lower().startswith(_EVENT_STREAM)
        for name, value in headers
    )


def _held_tail(data: bytes) -> int:
    """How many bytes at the end of `data` could be the start of a usage comment line."""
    for size in range(min(len(USAGE_COMMENT) - 1, len(data)), 0, -1):
        start = len(data) - size
        if USAGE_COMMENT.startswith(data[start:]) and (start == 0 or data[start - 1] == 0x0A):
            return size
    return 0


def _split_comment(data: bytes) -> tuple[bytes, int | None, bytes]:
    """`data` without a complete usage comment line, the tokens it named, and an incomplete
    tail that may still become one (held back until the next chunk)."""
    at = 0 if data.startswith(USAGE_COMMENT) else data.find(b"\n" + USAGE_COMMENT) + 1
    if at == 0 and not data.startswith(USAGE_COMMENT):
        held = _held_tail(data)
        return data[: len(data) - held], None, data[len(data) - held :]
    end = data.find(b"\n", at)
    if end < 0:
        return data[:at], None, data[at:]
    value = data[at + len(USAGE_COMMENT) : end].strip()
    # The comment is an event of its own: its blank line goes with it.
    rest = data[end + 2 :] if data[end + 1 : end + 2] == b"\n" else data[end + 1 :]
    return data[:at] + rest, int(value) if value.isdigit() else None, b""


class _TappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, tap: "UsageTap") -> None:
        self._stream = stream
        self._tap = tap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held = b""
        async for chunk in self._stream:
            out, tokens, held = _split_comment(held + chunk)
            if tokens is not None:
                self._tap.spent = tokens
            if out:
                yield out
        if held:
            yield held

    async def aclose(self) -> None:
        await self._stream.aclose()


class UsageTap:
    """The tokens a response reported (`spent`); a stream's usage comment is cut out."""

    def __init__(self) -> None:
        self.spent = 0

    def tapped(self, response: UpstreamResponse) -> UpstreamResponse:
        if not _is_event_stream(response.headers):
            return response
        return response._replace(stream=_TappedStream(response.stream, self))
