"""What the stand-in answers, in OpenAI's wire format: chat completions (text, tool calls,
JSON-schema output, `n` choices, logprobs; plain or as `chat.completion.chunk` events),
embeddings, and the Responses API (plain or as its typed stream events).

Replies are deterministic: the configured reply's words, a tool call whose arguments are the
simplest instance of the tool's JSON schema, a unit vector seeded by the input's text.
"""

import base64
import functools
import hashlib
import itertools
import math
import random
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from devstack.openai_faults import Reply, error_reply

EMBEDDING_DIMENSIONS = 1536
MAX_EMBEDDING_DIMENSIONS = 3072
_PIECE = re.compile(r"\s*\S+")
_JSON_PIECE = re.compile(r".{1,8}", re.DOTALL)
_MAX_SCHEMA_DEPTH = 16


def split_reply(text: str) -> list[str]:
    """The pieces (one per token, as the stand-in counts them) a reply streams in."""
    return _PIECE.findall(text)


def sample(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """The simplest instance of a JSON schema: what a model asked for structured output or
    a tool call's arguments would at least have to produce."""
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return None
    defs = {**(defs or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    if "$ref" in schema:
        return sample(defs.get(schema["$ref"].rsplit("/", 1)[-1]), defs, depth + 1)
    for choice in ("const", "enum", "default"):
        if choice in schema:
            return schema["enum"][0] if choice == "enum" else schema[choice]
    for union in ("anyOf", "oneOf", "allOf"):
        if schema.get(union):
            return sample(schema[union][0], defs, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((name for name in kind if name != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: sample(sub, defs, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [sample(schema.get("items"), defs, depth + 1)] * max(1, schema.get("minItems", 1))
    return {"string": "standin", "integer": 1, "number": 1.5, "boolean": True}.get(kind)


def _count(value: Any, default: int) -> int:
    """A count from the request (`n`, `dimensions`, a token limit): JSON may spell 2 as 2.0."""
    return int(value) if isinstance(value, int | float) and value >= 0 else default


def _text_of(content: Any) -> str:
    """The text of a message's (or an input item's) content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _prompt_tokens(items: list[Any]) -> int:
    return sum(len(_text_of(item.get("content")).split()) + 4 for item in items)


def _pieces(text: str) -> list[str]:
    return _JSON_PIECE.findall(text) if text.startswith("{") else split_reply(text)


@dataclass(slots=True)
class _Answer:
    """What the model "says" to one request: text pieces, or one tool call."""

    pieces: list[str]
    finish_reason: str
    tool: str | None = None
    call_id: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _answer(
    pieces: list[str], limit: Any, tool: tuple[str, Any] | None, schema: Any, ident: int
) -> _Answer:
    if tool is not None:
        arguments = orjson.dumps(sample(tool[1])).decode()
        return _Answer(_JSON_PIECE.findall(arguments), "tool_calls", tool[0], f"call_{ident}")
    if schema is not None:
        pieces = _pieces(orjson.dumps(sample(schema)).decode())
    cut = pieces[: _count(limit, len(pieces))]
    return _Answer(cut, "length" if len(cut) < len(pieces) else "stop")


def _pick_tool(tools: list[Any], wanted: Any) -> tuple[str, Any] | None:
    """(name, parameters schema) of the function the model calls: the named one, else the
    first."""
    named = [tool for tool in tools if isinstance(tool, dict) and isinstance(tool.get("name"), str)]
    if not named:
        return None
    chosen = next((tool for tool in named if tool["name"] == wanted), named[0])
    return chosen["name"], chosen.get("parameters")


def _chat_tool(request: dict[str, Any]) -> tuple[str, Any] | None:
    """None once the last message is a tool's result, or with `tool_choice: none`."""
    choice = request.get("tool_choice")
    if choice == "none" or request["messages"][-1].get("role") == "tool":
        return None
    tools = [t.get("function") for t in request.get("tools") or () if isinstance(t, dict)]
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    return _pick_tool(tools, wanted)


def _chat_schema(request: dict[str, Any]) -> Any:
    response_format = request.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return None
    return response_format.get("json_schema", {}).get("schema", {})


def _logprobs(pieces: list[str], top: int) -> dict[str, Any]:
    def entry(token: str, rank: int) -> dict[str, Any]:
        return {"token": token, "logprob": -0.01 * (rank + 1), "bytes": list(token.encode())}

    content = [
        {**entry(piece, 0), "top_logprobs": [entry(piece, rank) for rank in range(top)]}
        for piece in pieces
    ]
    return {"content": content, "refusal": None}


def _model_request(body: bytes) -> dict[str, Any] | Reply:
    """A JSON object naming a model, or the 400 OpenAI answers instead."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error_reply(400, "We could not parse the JSON body.")
    if not isinstance(request, dict) or not request.get("model"):
        return error_reply(400, "You must provide a model parameter.", param="model")
    return request


@dataclass
class ChatReplies:
    """Chat completions, plain and streamed."""

    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def reply(self, body: bytes, pieces: list[str]) -> Reply:
        request = _model_request(body)
        if isinstance(request, Reply):
            return request
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return error_reply(400, "You must provide a non-empty messages array.", "messages")
        ident = next(self.ids)
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        answer = _answer(pieces, limit, _chat_tool(request), _chat_schema(request), ident)
        chat = _Chat(request, answer, ident, _prompt_tokens(messages))
        return chat.stream() if request.get("stream") else chat.completion()


@dataclass(slots=True)
class _Chat:
    request: dict[str, Any]
    answer: _Answer
    ident: int
    prompt_tokens: int

    @property
    def base(self) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-standin{self.ident}",
            "created": int(time.time()),
            "model": self.request["model"],
            "service_tier": "default",
            "system_fingerprint": "fp_standin",
        }

    @property
    def usage(self) -> dict[str, Any]:
        completion = len(self.answer.pieces)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    @property
    def choices(self) -> range:
        return range(_count(self.request.get("n"), 1))

    def _logprobs(self, pieces: list[str]) -> dict[str, Any] | None:
        if not self.request.get("logprobs") or self.answer.tool:
            return None
        return _logprobs(pieces, _count(self.request.get("top_logprobs"), 0))

    def _tool_call(self, arguments: str, *, head: bool = True) -> dict[str, Any]:
        function = {"name": self.answer.tool, "arguments": arguments} if head else {}
        if not head:
            return {"index": 0, "function": {"arguments": arguments}}
        return {"index": 0, "id": self.answer.call_id, "type": "function", "function": function}

    def completion(self) -> Reply:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if self.answer.tool:
            message["tool_calls"] = [self._tool_call(self.answer.text)]
            message["tool_calls"][0].pop("index")
        else:
            message.update(content=self.answer.text, annotations=[])
        choices = [
            {
                "index": index,
                "message": message,
                "logprobs": self._logprobs(self.answer.pieces),
                "finish_reason": self.answer.finish_reason,
            }
            for index in self.choices
        ]
        body = {**self.base, "object": "chat.completion", "choices": choices, "usage": self.usage}
        return Reply(200, orjson.dumps(body))

    def stream(self) -> Reply:
        include_usage = bool((self.request.get("stream_options") or {}).get("include_usage"))
        chunk = {**self.base, "object": "chat.completion.chunk"}
        if include_usage:
            chunk["usage"] = None

        def event(index: int, delta: dict[str, Any], **extra: Any) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            return b"data: %b\n\n" % orjson.dumps({**chunk, "choices": [{**choice, **extra}]})

        events = []
        for index in self.choices:
            events += [event(index, delta, **extra) for delta, extra in self._deltas()]
            events.append(event(index, {}, finish_reason=self.answer.finish_reason))
        if include_usage:
            last = {**chunk, "choices": [], "usage": self.usage}
            events.append(b"data: %b\n\n" % orjson.dumps(last))
        return Reply(200, events=(*events, b"data: [DONE]\n\n"))

    def _deltas(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(delta, other choice fields) of each chunk of one choice."""
        if self.answer.tool:
            yield {"role": "assistant", "content": None, "tool_calls": [self._tool_call("")]}, {}
            for piece in self.answer.pieces:
                yield {"tool_calls": [self._tool_call(piece, head=False)]}, {}
            return
        yield {"role": "assistant", "content": "", "refusal": None}, {}
        for piece in self.answer.pieces:
            yield {"content": piece}, {"logprobs": self._logprobs([piece])}


# -- embeddings ----------------------------------------------------------------------------


def embeddings_reply(body: bytes) -> Reply:
    """One unit vector per input, seeded by its text, as floats or base64."""
    try:
        request = orjson.loads(body)
        inputs, model = request["input"], request["model"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return error_reply(400, "You must provide a model and an input.", param="input")
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    dimensions = _count(request.get("dimensions"), EMBEDDING_DIMENSIONS) or EMBEDDING_DIMENSIONS
    if dimensions > MAX_EMBEDDING_DIMENSIONS:
        message = f"dimensions must be at most {MAX_EMBEDDING_DIMENSIONS}."
        return error_reply(400, message, "invalid_value", "dimensions")
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
    return Reply(
        200, orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})
    )


@functools.lru_cache(maxsize=1024)
def _unit_vector(seed: bytes, dimensions: int) -> list[float]:
    rng = random.Random(hashlib.sha256(seed).digest())  # noqa: S311 - test data, not secrets
    values = [rng.gauss(0, 1) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in values))
    return [value / norm for value in values]


# -- the Responses API ---------------------------------------------------------------------


def _input_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    items = request.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    return [item for item in items or () if isinstance(item, dict)]


def _response_tool(request: dict[str, Any], items: list[dict[str, Any]]) -> tuple[str, Any] | None:
    """As on chat: none once a call's output is in, or with `tool_choice: none`."""
    choice = request.get("tool_choice")
    if choice == "none" or items[-1].get("type") == "function_call_output":
        return None
    tools = [
        t for t in request.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
    ]
    return _pick_tool(tools, choice.get("name") if isinstance(choice, dict) else None)


def _response_schema(request: dict[str, Any]) -> Any:
    text_format = (request.get("text") or {}).get("format") or {}
    return text_format.get("schema") if text_format.get("type") == "json_schema" else None


@dataclass
class ResponseReplies:
    """`POST /v1/responses`, plain and streamed."""

    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def reply(self, body: bytes, pieces: list[str]) -> Reply:
        request = _model_request(body)
        if isinstance(request, Reply):
            return request
        items = _input_items(request)
        if not items:
            return error_reply(400, "You must provide an input.", param="input")
        ident = next(self.ids)
        limit = request.get("max_output_tokens")
        tool, schema = _response_tool(request, items), _response_schema(request)
        answer = _answer(pieces, limit, tool, schema, ident)
        response = _Response(request, answer, ident, _prompt_tokens(items))
        return response.stream() if request.get("stream") else response.plain()


@dataclass(slots=True)
class _Response:
    request: dict[str, Any]
    answer: _Answer
    ident: int
    input_tokens: int
    sequence: Iterator[int] = field(default_factory=itertools.count)

    @property
    def status(self) -> str:
        return "incomplete" if self.answer.finish_reason == "length" else "completed"

    def _item(self, status: str, text: str) -> dict[str, Any]:
        if self.answer.tool:
            return {
                "type": "function_call",
                "id": f"fc_standin{self.ident}",
                "call_id": self.answer.call_id,
                "name": self.answer.tool,
                "arguments": text,
                "status": status,
            }
        content = [self._part(text)] if status == "completed" else []
        return {
            "type": "message",
            "id": f"msg_standin{self.ident}",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _object(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        done = status != "in_progress"
        outputs = len(self.answer.pieces)
        usage = {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": outputs,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + outputs,
        }
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": f"resp_standin{self.ident}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": self.request.get("instructions"),
            "max_output_tokens": self.request.get("max_output_tokens"),
            "model": self.request["model"],
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": self.request.get("previous_response_id"),
            "temperature": self.request.get("temperature", 1.0),
            "text": self.request.get("text") or {"format": {"type": "text"}},
            "tool_choice": self.request.get("tool_choice", "auto"),
            "tools": self.request.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage if done else None,
            "metadata": {},
        }

    def plain(self) -> Reply:
        output = [self._item("completed", self.answer.text)]
        return Reply(200, orjson.dumps(self._object(self.status, output)))

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": next(self.sequence), **fields}
        return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps(data))

    def stream(self) -> Reply:
        where = {"item_id": self._item("in_progress", "")["id"], "output_index": 0}
        final = self._item("completed", self.answer.text)
        events = [
            self._event("response.created", response=self._object("in_progress", [])),
            self._event("response.in_progress", response=self._object("in_progress", [])),
            self._event(
                "response.output_item.added", output_index=0, item=self._item("in_progress", "")
            ),
            *(self._tool_events(where) if self.answer.tool else self._text_events(where)),
            self._event("response.output_item.done", output_index=0, item=final),
            self._event(f"response.{self.status}", response=self._object(self.status, [final])),
        ]
        return Reply(200, events=tuple(events))

    def _text_events(self, where: dict[str, Any]) -> Iterator[bytes]:
        at = {**where, "content_index": 0}
        text = self.answer.text
        yield self._event("response.content_part.added", **at, part=self._part(""))
        for piece in self.answer.pieces:
            yield self._event("response.output_text.delta", **at, delta=piece, logprobs=[])
        yield self._event("response.output_text.done", **at, text=text, logprobs=[])
        yield self._event("response.content_part.done", **at, part=self._part(text))

    def _tool_events(self, where: dict[str, Any]) -> Iterator[bytes]:
        for piece in self.answer.pieces:
            yield self._event("response.function_call_arguments.delta", **where, delta=piece)
        arguments = self.answer.text
        yield self._event("response.function_call_arguments.done", **where, arguments=arguments)
