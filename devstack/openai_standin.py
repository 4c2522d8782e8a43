"""A real HTTP server speaking OpenAI's wire format, scriptable with faults.

It stands in for the OpenAI API in tests and benchmarks: `POST /v1/chat/completions`
(plain and `stream=true` in OpenAI's chunk format with the usage chunk of
`stream_options.include_usage`; tool calls and their streamed argument deltas, JSON-schema
output, `n` choices, logprobs), `POST /v1/responses` (the Responses API, plain and as its
typed stream events), `POST /v1/embeddings` (a deterministic unit vector per input, `float`
or `base64`), `GET /v1/models` and `GET /v1/models/{id}`; what each answers is in
`devstack.openai_replies`. Each API call takes the next fault from a queue
(`devstack.openai_faults`: a status with an error code and `retry-after`, a hang, malformed
JSON, a dropped connection before or during the stream, a delay) and is recorded.

In a test: `with OpenAIStandin() as upstream: upstream.script(Fault.error(429, retry_after=1))`
(it serves from its own thread and event loop). Standalone: `python -m devstack.openai_standin
--port 9000`, scripted over HTTP with `POST /_standin/script` (a JSON list of faults),
`GET /_standin/calls`, `POST /_standin/reset` and `POST /_standin/config`.
"""

import argparse
import asyncio
import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from devstack.openai_faults import Drop, Fault, Reply, error_reply
from devstack.openai_replies import (
    EMBEDDING_DIMENSIONS,
    ChatReplies,
    ResponseReplies,
    embeddings_reply,
    split_reply,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "EMBEDDING_DIMENSIONS",
    "Fault",
    "OpenAIStandin",
    "RecordedCall",
]

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small")
DEFAULT_REPLY = "Hello! This is the OpenAI stand-in speaking."
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class RecordedCall:
    """One API call as the stand-in received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def _read_request(reader: asyncio.StreamReader) -> RecordedCall:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head[:-4].split(b"\r\n")
    method, target, _ = request_line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    if target.startswith(("http://", "https://")):
        # The absolute form, as a client sends it to a proxy: the stand-in serves as one.
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return RecordedCall(method, target.split("?", 1)[0], headers, body)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1715367049, "owned_by": "system"}


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
        host: str = "127.0.0.1",
    ) -> None:
        self.port = port
        self.host = host
        self.api_key = api_key
        self.models = tuple(models)
        self.pieces = split_reply(reply)
        self._chat = ChatReplies()
        self._responses = ResponseReplies()
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
        """Listen on `host` (127.0.0.1) in the running loop (the port is known afterwards)."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, backlog=2048, limit=_MAX_HEAD
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
                request = await _read_request(reader)
                await self._dispatch(request, writer)
                if request.headers.get("connection", "").lower() == "close":
                    break
        except (Drop, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.transport.abort()
        except asyncio.CancelledError:
            # Shutting down: end quietly (asyncio's stream callback would log a cancelled task).
            writer.transport.abort()
        except (ValueError, UnicodeDecodeError):
            self._respond(writer, error_reply(400, "Malformed HTTP request."))
        finally:
            self._handlers.discard(task)
            writer.close()

    def _respond(
        self, writer: asyncio.StreamWriter, reply: Reply, *, length: int | None = None
    ) -> None:
        """Write a JSON reply; `length`: the `content-length` to announce, if not its own."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
        writer.write(
            (
                f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(reply.body) if length is None else length}\r\n"
                f"x-request-id: req_standin_{next(self._ids)}\r\n{extra}\r\n"
            ).encode("latin-1")
            + reply.body
        )

    async def _dispatch(self, request: RecordedCall, writer: asyncio.StreamWriter) -> None:
        if request.path.startswith("/_standin/"):
            self._respond(writer, self._control(request))
            return
        self.call_count += 1
        self._calls.append(request)
        reply = self._refusal(request)
        fault = self.faults.popleft() if self.faults and reply is None else None
        if fault is not None:
            reply = await fault.play()
        reply = reply or self._answer(request)
        cut = fault.cut_after if fault is not None else None
        if reply.events is None:
            await self._send_json(writer, reply, cut)
        else:
            await self._send_stream(writer, reply.events, cut)

    def _refusal(self, request: RecordedCall) -> Reply | None:
        """401 for a call without the configured key."""
        if self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        return error_reply(401, f"Incorrect API key provided: {presented}.", "invalid_api_key")

    def _answer(self, request: RecordedCall) -> Reply:
        try:
            return self._route(request)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            # A body of the right JSON types in the wrong shape, as OpenAI answers it.
            return error_reply(400, f"Invalid request body: {type(exc).__name__}.")

    def _route(self, request: RecordedCall) -> Reply:
        method, path = request.method, request.path
        if method == "GET" and self.serves_models and path.startswith("/v1/models"):
            return self._models(path)
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat.reply(request.body, self.pieces)
        if method == "POST" and path == "/v1/responses":
            return self._responses.reply(request.body, self.pieces)
        if method == "POST" and path == "/v1/embeddings":
            return embeddings_reply(request.body)
        return error_reply(404, f"Unknown request URL: {method} {path}.")

    def _models(self, path: str) -> Reply:
        if path == "/v1/models":
            data = [_model(name) for name in self.models]
            return Reply(200, orjson.dumps({"object": "list", "data": data}))
        name = path.removeprefix("/v1/models/")
        if path.startswith("/v1/models/") and name in self.models:
            return Reply(200, orjson.dumps(_model(name)))
        return error_reply(404, f"The model '{name}' does not exist", "model_not_found")

    async def _send_json(self, writer: asyncio.StreamWriter, reply: Reply, cut: int | None) -> None:
        """The reply; with `cut`, half of it and then a dropped connection."""
        if cut is None:
            self._respond(writer, reply)
            return
        half = Reply(reply.status, reply.body[: len(reply.body) // 2], reply.headers)
        self._respond(writer, half, length=len(reply.body))
        await writer.drain()
        raise Drop

    async def _send_stream(
        self, writer: asyncio.StreamWriter, events: tuple[bytes, ...], cut: int | None
    ) -> None:
        """Server-sent events, `chunk_delay` apart; with `cut`, only that many, then a drop."""
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
            b"x-request-id: req_standin_%d\r\n\r\n" % next(self._ids)
        )
        delay = self.chunk_delay
        if not delay and cut is None:
            # Nothing to wait for between events: one write, as a fast server would send it.
            writer.write(head + _chunk(b"".join(events)) + b"0\r\n\r\n")
            return
        writer.write(head)
        for sent, data in enumerate(events):
            if cut is not None and sent >= cut:
                await writer.drain()
                raise Drop
            if delay and sent:
                await asyncio.sleep(delay)
            writer.write(_chunk(data))
            if delay:
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def _control(self, request: RecordedCall) -> Reply:
        method, path, body = request.method, request.path, request.body
        if method == "POST" and path == "/_standin/script":
            self.script(*(Fault.from_dict(item) for item in orjson.loads(body or b"[]")))
        elif method == "POST" and path == "/_standin/reset":
            self.reset()
        elif method == "POST" and path == "/_standin/config":
            self._configure(orjson.loads(body or b"{}"))
        elif method == "GET" and path == "/_standin/calls":
            return Reply(200, orjson.dumps(self._recorded()))
        else:
            return error_reply(404, f"Unknown control route {path}.")
        return Reply(200, b'{"ok":true}')

    def _configure(self, config: Mapping[str, Any]) -> None:
        self.chunk_delay = float(config.get("chunk_delay", self.chunk_delay))
        self.api_key = config.get("api_key", self.api_key)
        self.serves_models = bool(config.get("serves_models", self.serves_models))
        if "reply" in config:
            self.pieces = split_reply(config["reply"])

    def _recorded(self) -> dict[str, Any]:
        calls = [
            {"method": c.method, "path": c.path, "headers": c.headers, "body": c.body.decode()}
            for c in self._calls
        ]
        return {"count": self.call_count, "pending_faults": len(self.faults), "calls": calls}


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
    parser.add_argument(
        "--host", default="127.0.0.1", help="0.0.0.0 in a container, on the network it joins"
    )
    parser.add_argument("--api-key", default=None, help="reject calls without this key (401)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    args = parser.parse_args()
    standin = OpenAIStandin(
        args.port,
        api_key=args.api_key,
        reply=args.reply,
        chunk_delay=args.chunk_delay,
        host=args.host,
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
