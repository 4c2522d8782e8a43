"""The stand-in's fault script: what it does instead of (or before) answering one API call.

A queue of `Fault`s; each API call takes the next one. `Fault.error(429, retry_after=1)`
answers an OpenAI error body, `hang`, `drop` and `malformed` never answer properly, `delay`
answers late, and `drop_after` cuts the answer short after some stream events.
"""

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

FaultKind = Literal["status", "hang", "malformed", "drop", "drop_after", "delay"]


class Drop(Exception):
    """Ends the connection without a (complete) response."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What the stand-in answers: a JSON body, or (`events`) a stream of server-sent events."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    events: tuple[bytes, ...] | None = None


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    """OpenAI's error body: `{"error": {message, type, param, code}}`."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def error_reply(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> Reply:
    return Reply(status, error_body(status, message, code, param))


@dataclass(frozen=True)
class Fault:
    """What the stand-in does instead of (or before) answering one API call."""

    kind: FaultKind
    status: int = 500
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str | None = None
    seconds: float = 0.0
    chunks: int = 0
    code: str | None = None
    param: str | None = None

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        message: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> "Fault":
        """An OpenAI error response with this status, its error object's `message`, `code`
        (`context_length_exceeded`, ...) and `param`, and optional retry hints."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        return cls(
            "status", status=status, headers=headers, message=message, code=code, param=param
        )

    @classmethod
    def hang(cls, seconds: float) -> "Fault":
        """Say nothing for `seconds`, then drop the connection."""
        return cls("hang", seconds=seconds)

    @classmethod
    def malformed(cls) -> "Fault":
        """A 200 whose JSON body is cut short."""
        return cls("malformed")

    @classmethod
    def drop(cls) -> "Fault":
        """Drop the connection before sending anything."""
        return cls("drop")

    @classmethod
    def drop_after(cls, chunks: int) -> "Fault":
        """Send the headers and `chunks` stream events (0: none), then drop the connection;
        a JSON answer is cut in half."""
        return cls("drop_after", chunks=chunks)

    @classmethod
    def delay(cls, seconds: float) -> "Fault":
        """Answer normally after `seconds`."""
        return cls("delay", seconds=seconds)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "headers": dict(self.headers)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fault":
        return cls(**{**data, "headers": dict(data.get("headers") or {})})

    async def play(self) -> Reply | None:
        """The reply that replaces the real one, if any; raises `Drop` to hang up."""
        if self.kind == "status":
            message = self.message or f"Scripted {self.status} from the stand-in."
            body = error_body(self.status, message, self.code, self.param)
            return Reply(self.status, body, self.headers)
        if self.kind == "hang":
            await asyncio.sleep(self.seconds)
            raise Drop
        if self.kind == "drop":
            raise Drop
        if self.kind == "malformed":
            return Reply(200, b'{"id": "chatcmpl-broken", "object": "chat.comp')
        if self.kind == "delay":
            await asyncio.sleep(self.seconds)
        return None

    @property
    def cut_after(self) -> int | None:
        """How many stream events go out before the connection drops (`None`: all)."""
        return self.chunks if self.kind == "drop_after" else None
