"""A real HTTP server speaking OpenAI's wire format, scriptable with faults.

It stands in for the OpenAI API in tests and benchmarks: `POST /v1/chat/completions`
(plain and `stream=true` in OpenAI's chunk format, usage chunk with
`stream_options.include_usage`), `POST /v1/embeddings` (a deterministic unit vector per
input, `float` or `base64`), `GET /v1/models` and `GET /v1/models/{id}`. Each API call
takes the next fault from a queue (a status with `retry-after`, a hang, malformed JSON, a
dropped connection before or during the stream, a delay) and is recorded.

In a test: `with OpenAIStandin() as upstream: upstream.script(Fault.status(429, retry_after=1))`
(it serves from its own thread and event loop). Standalone: `python -m devstack.openai_standin
--port 9000`, scripted over HTTP with `POST /_standin/script` (a JSON list of faults),
`GET /_standin/calls`, `POST /_standin/reset` and `POST /_standin/config`.
"""

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import math
import random
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import orjson

FaultKind = Literal["status", "hang", "malformed", "drop", "drop_after", "delay"]

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small")
EMBEDDING_DIMENSIONS = 1536
DEFAULT_REPLY = "Hello! This is the OpenAI stand-in speaking."
_PIECE = re.compile(r"\s*\S+")
_MAX_HEAD = 64 * 1024


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
        """Send the headers and `chunks` stream events (0: none), then drop the connection."""
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


@dataclass(frozen=True)
class RecordedCall:
    """One API call as the stand-in received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class _Drop(Exception):
    """Ends the connection without a (complete) response."""


def _error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _embeddings(body: bytes) -> tuple[int, bytes]:
    """(status, body) of an embeddings call: one unit vector per input, seeded by its text."""
    try:
        request = orjson.loads(body)
        inputs, model = request["input"], request["model"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return 400, _error_body(400, "You must provide a model and an input.", param="input")
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    dimensions = request.get("dimensions") or EMBEDDING_DIMENSIONS
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = _unit_vector(orjson.dumps(text), dimensions)
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(text.split()) if isinstance(text, str) else len(text) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


def _unit_vector(seed: bytes, dimensions: int) -> list[float]:
    rng = random.Random(hashlib.sha256(seed).digest())  # noqa: S311 - test data, not secrets
    values = [rng.gauss(0, 1) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in values))
    return [value / norm for value in values]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class OpenAIStandin:
    """The stand-in server; thread-safe to script and inspect while it serves."""

    def __init__(
        self,
        port: int = 0,
        *,
        api_key: str | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        reply: str = DEFAULT_REPLY,
        chunk_delay: float = 0.0,
        record_limit: int = 10_000,
    ) -> None:
        self.port = port
        self.api_key = api_key
        self.models = tuple(models)
        self.pieces = _PIECE.findall(reply)
        self.chunk_delay = chunk_delay
        self.serves_models = True
        """False: no models endpoint, as some OpenAI-compatible servers (404)."""
        self.faults: deque[Fault] = deque()
        self.call_count = 0
        self.connection_count = 0
        self._calls: deque[RecordedCall] = deque(maxlen=record_limit)
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What `OPENAI_BASE_URL` / the SDK's `base_url` should be."""
        return f"{self.url}/v1"

    @property
    def calls(self) -> list[RecordedCall]:
        return list(self._calls)

    def script(self, *faults: Fault) -> None:
        """Queue faults; each API call consumes the next one."""
        self.faults.extend(faults)

    def reset(self) -> None:
        self.faults.clear()
        self._calls.clear()
        self.call_count = 0
        self.connection_count = 0

    # -- running it ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Listen on 127.0.0.1 in the running loop (the port is known afterwards)."""
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, backlog=2048, limit=_MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    def start(self) -> "OpenAIStandin":
        """Serve from a thread with its own event loop."""
        ready = threading.Event()
        self._loop = _new_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.aclose())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="openai-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("the OpenAI stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "OpenAIStandin":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP/1.1 --------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connection_count += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head[:-4].split(b"\r\n")
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                for line in header_lines:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower().decode("latin-1")] = value.strip().decode(
                        "latin-1"
                    )
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                path = target.split("?", 1)[0]
                await self._dispatch(method, path, headers, body, writer)
                if headers.get("connection", "").lower() == "close":
                    break
        except (_Drop, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.transport.abort()
        except asyncio.CancelledError:
            # Shutting down: end quietly (asyncio's stream callback would log a cancelled task).
            writer.transport.abort()
        except (ValueError, UnicodeDecodeError):
            self._respond(writer, 400, _error_body(400, "Malformed HTTP request."))
        finally:
            self._handlers.discard(task)
            writer.close()

    def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                f"x-request-id: req_standin_{next(self._ids)}\r\n{extra}\r\n"
            ).encode("latin-1")
            + body
        )

    async def _dispatch(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> None:
        if path.startswith("/_standin/"):
            self._control(method, path, body, writer)
            return
        self.call_count += 1
        self._calls.append(RecordedCall(method, path, headers, body))
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            presented = headers.get("authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {presented}."
            self._respond(writer, 401, _error_body(401, message, "invalid_api_key"))
            return
        fault = self.faults.popleft() if self.faults else None
        drop_after: int | None = None
        if fault is not None:
            if fault.kind == "status":
                message = fault.message or f"Scripted {fault.status} from the stand-in."
                error = _error_body(fault.status, message, fault.code, fault.param)
                self._respond(writer, fault.status, error, fault.headers)
                return
            if fault.kind == "hang":
                await asyncio.sleep(fault.seconds)
                raise _Drop
            if fault.kind == "drop":
                raise _Drop
            if fault.kind == "malformed":
                self._respond(writer, 200, b'{"id": "chatcmpl-broken", "object": "chat.comp')
                return
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            if fault.kind == "drop_after":
                drop_after = fault.chunks

        serves_models = method == "GET" and self.serves_models
        if serves_models and path == "/v1/models":
            data = [self._model(name) for name in self.models]
            self._respond(writer, 200, orjson.dumps({"object": "list", "data": data}))
        elif serves_models and path.startswith("/v1/models/"):
            name = path.removeprefix("/v1/models/")
            if name in self.models:
                self._respond(writer, 200, orjson.dumps(self._model(name)))
            else:
                message = f"The model '{name}' does not exist"
                self._respond(writer, 404, _error_body(404, message, "model_not_found"))
        elif method == "POST" and path == "/v1/chat/completions":
            await self._chat(body, writer, drop_after)
        elif method == "POST" and path == "/v1/embeddings":
            self._respond(writer, *_embeddings(body))
        else:
            self._respond(writer, 404, _error_body(404, f"Unknown request URL: {method} {path}."))

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1715367049, "owned_by": "system"}

    async def _chat(
        self, body: bytes, writer: asyncio.StreamWriter, drop_after: int | None
    ) -> None:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._respond(writer, 400, _error_body(400, "We could not parse the JSON body."))
            return
        model = request.get("model") if isinstance(request, dict) else None
        messages = request.get("messages") if isinstance(request, dict) else None
        if not model or not isinstance(messages, list) or not messages:
            message = "You must provide a model parameter and a non-empty messages array."
            self._respond(writer, 400, _error_body(400, message))
            return

        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        pieces = self.pieces[:limit] if isinstance(limit, int) else self.pieces
        finish_reason = "length" if len(pieces) < len(self.pieces) else "stop"
        prompt_tokens = sum(
            len(str(m.get("content", "")).split()) + 4 for m in messages if isinstance(m, dict)
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        base = {
            "id": f"chatcmpl-standin{next(self._ids)}",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_standin",
        }

        if not request.get("stream"):
            completion = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": index,
                        "message": {
                            "role": "assistant",
                            "content": "".join(pieces),
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                    for index in range(request.get("n") or 1)
                ],
                "usage": usage,
            }
            payload = orjson.dumps(completion)
            if drop_after is not None:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(payload), payload[: len(payload) // 2])
                )
                await writer.drain()
                raise _Drop
            self._respond(writer, 200, payload)
            return

        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        chunk_base = {**base, "object": "chat.completion.chunk"}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: %b\n\n" % orjson.dumps({**chunk_base, "choices": [choice], **extra})

        events = [event({"role": "assistant", "content": "", "refusal": None})]
        events += [event({"content": piece}) for piece in pieces]
        events.append(event({}, finish_reason))
        if include_usage:
            events.append(
                b"data: %b\n\n" % orjson.dumps({**chunk_base, "choices": [], "usage": usage})
            )
        events.append(b"data: [DONE]\n\n")

        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
            b"x-request-id: req_standin_%d\r\n\r\n" % next(self._ids)
        )
        delay = self.chunk_delay
        if not delay and drop_after is None:
            # Nothing to wait for between events: one write, as a fast server would send it.
            writer.write(head + _chunk(b"".join(events)) + b"0\r\n\r\n")
            return
        writer.write(head)
        for sent, data in enumerate(events):
            if drop_after is not None and sent >= drop_after:
                await writer.drain()
                raise _Drop
            if delay and sent:
                await asyncio.sleep(delay)
            writer.write(_chunk(data))
            if delay:
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def _control(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "POST" and path == "/_standin/script":
            self.script(*(Fault.from_dict(item) for item in orjson.loads(body or b"[]")))
        elif method == "POST" and path == "/_standin/reset":
            self.reset()
        elif method == "POST" and path == "/_standin/config":
            config = orjson.loads(body or b"{}")
            self.chunk_delay = float(config.get("chunk_delay", self.chunk_delay))
            self.api_key = config.get("api_key", self.api_key)
            self.serves_models = bool(config.get("serves_models", self.serves_models))
            if "reply" in config:
                self.pieces = _PIECE.findall(config["reply"])
        elif method == "GET" and path == "/_standin/calls":
            calls = [
                {"method": c.method, "path": c.path, "headers": c.headers, "body": c.body.decode()}
                for c in self._calls
            ]
            payload = {"count": self.call_count, "pending_faults": len(self.faults)}
            self._respond(writer, 200, orjson.dumps({**payload, "calls": calls}))
            return
        else:
            self._respond(writer, 404, _error_body(404, f"Unknown control route {path}."))
            return
        self._respond(writer, 200, b'{"ok":true}')


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is part of the locked environment
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--api-key", default=None, help="reject calls without this key (401)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    args = parser.parse_args()
    standin = OpenAIStandin(
        args.port, api_key=args.api_key, reply=args.reply, chunk_delay=args.chunk_delay
    )

    async def run() -> None:
        await standin.serve()
        print(f"OpenAI stand-in on {standin.base_url}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    loop = _new_loop()
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_complete(run())


if __name__ == "__main__":
    main()
