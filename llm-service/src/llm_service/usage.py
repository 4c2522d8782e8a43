"""The tokens a response used, reported to the gateway when it asks (`X-Usage-Report:
tokens`), which counts them against the caller's key: an `X-Usage-Tokens` header on a JSON
response, a last `: usage-tokens <n>` comment line on an event stream (see
`servicekit.usage`). Every route reports what its upstream call logs, so a new route that
logs its call's usage is counted too.
"""

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicekit.usage import USAGE_COMMENT, USAGE_REPORT_HEADER, USAGE_TOKENS_HEADER

_REPORT = USAGE_REPORT_HEADER.lower().encode()
_EVENT_STREAM = b"text/event-stream"


def total_tokens(usage: Mapping[str, Any]) -> int:
    """The total of any of OpenAI's usage shapes: chat (`prompt_tokens`,
    `completion_tokens`), embeddings (`prompt_tokens`), responses (`input_tokens`,
    `output_tokens`)."""
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = ("input_tokens", "output_tokens", "prompt_tokens", "completion_tokens")
    return sum(value for name in parts if isinstance(value := usage.get(name), int))


class _Meter:
    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens = 0


# The request's meter: a mutable holder, so a stream's generator (run in a task of its
# own, with a copy of the context) adds to the same one.
_meter: ContextVar[_Meter | None] = ContextVar("usage_meter", default=None)


def record_usage(usage: Mapping[str, Any] | None) -> None:
    """Counts an upstream call's usage towards the report of the current request."""
    meter = _meter.get()
    if meter is not None and usage:
        meter.tokens += total_tokens(usage)


class UsageReportMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(name == _REPORT for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        meter = _Meter()
        token = _meter.set(meter)
        streaming = False

        async def send_with_report(message: Message) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                streaming = headers.get("content-type", "").encode().startswith(_EVENT_STREAM)
                if not streaming:
                    headers[USAGE_TOKENS_HEADER] = str(meter.tokens)
            elif streaming and not message.get("more_body", False):
                comment = USAGE_COMMENT + str(meter.tokens).encode() + b"\n\n"
                message = {**message, "body": message.get("body", b"") + comment}
            await send(message)

        try:
            await self.app(scope, receive, send_with_report)
        finally:
            _meter.reset(token)
