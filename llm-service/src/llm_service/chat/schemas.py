from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, model_validator
from pydantic.config import JsonDict

from llm_service.chat.constants import (
    MAX_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_INPUTS,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_TOTAL_CHARS,
)
from servicekit import Problem, ValidationFailed


def _integral(value: object) -> object:
    # JSON Schema counts 2.0 as an integer; strict validation alone would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
PositiveInteger = Annotated[int, Field(ge=1), BeforeValidator(_integral)]


class ChatTextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)


class ChatImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, description="An https:// URL or a base64 `data:` URL.")
    detail: Literal["auto", "low", "high"] | None = None


class ChatImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["image_url"]
    image_url: ChatImageURL


ChatContentPart = Annotated[ChatTextPart | ChatImagePart, Field(discriminator="type")]


class ChatFunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)
    arguments: str = Field(description="The arguments, a JSON object as a string.")


class ChatToolCall(BaseModel):
    """A call of one of the request's tools the model asked for."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: ChatFunctionCall


_CONTENT: JsonDict = {"type": ["string", "array"]}
# What each role may carry, for the schema's readers (the validator below enforces it):
# a property given `false` must be absent.
_ROLE_SHAPES: list[JsonValue] = [
    {
        "properties": {
            "role": {"enum": ["system", "user"]},
            "content": _CONTENT,
            "tool_calls": False,
            "tool_call_id": False,
        },
        "required": ["content"],
    },
    {
        "properties": {
            "role": {"const": "assistant"},
            "content": _CONTENT,
            "tool_call_id": False,
        },
        "required": ["content"],
    },
    {
        "properties": {
            "role": {"const": "assistant"},
            "tool_calls": {"type": "array"},
            "tool_call_id": False,
        },
        "required": ["tool_calls"],
    },
    {
        "properties": {
            "role": {"const": "tool"},
            "content": _CONTENT,
            "tool_calls": False,
            "tool_call_id": {"type": "string"},
        },
        "required": ["content", "tool_call_id"],
    },
]


class ChatMessage(BaseModel):
    """A message: text or content parts (text, images); an assistant's earlier tool calls,
    and a tool's result (`role: tool`, with the `tool_call_id` it answers)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"anyOf": _ROLE_SHAPES}
    )

    role: Literal["system", "user", "assistant", "tool"]
    content: (
        Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]
        | Annotated[list[ChatContentPart], Field(min_length=1)]
        | None
    ) = Field(
        default=None, description="Required, except on an assistant message with `tool_calls`."
    )
    tool_calls: list[ChatToolCall] | None = Field(
        default=None, min_length=1, description="Assistant messages only."
    )
    tool_call_id: str | None = Field(default=None, description="Tool messages only (required).")

    def text_size(self) -> int:
        if isinstance(self.content, str):
            return len(self.content)
        return sum(len(part.text) for part in self.content or () if isinstance(part, ChatTextPart))

    @model_validator(mode="after")
    def _role_fields(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("a message needs content (an assistant's may have tool_calls)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("a tool message, and only a tool message, has a tool_call_id")
        if self.text_size() > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message holds more than {MAX_MESSAGE_CHARS} characters")
        return self


class ChatFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="The arguments as a JSON Schema object."
    )
    strict: bool | None = None


class ChatTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: ChatFunction


class ChatToolName(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)


class ChatNamedToolChoice(BaseModel):
    """Call this tool."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: ChatToolName


class ChatRequest(BaseModel):
    # Strict: `"stream": 0` or `"max_tokens": true` are type errors, as the schema says.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {"role": "system", "content": "You answer in one sentence."},
                        {"role": "user", "content": "What is an audit trail?"},
                    ],
                    "temperature": 0.2,
                    "max_tokens": 200,
                }
            ]
        },
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(
        default=None, description="One of the allowlisted models; `OPENAI_MODEL` when omitted."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: PositiveInteger | None = Field(
        default=None,
        description="At most `OPENAI_MAX_TOKENS`; a larger value is rejected with 422.",
    )
    stream: bool = Field(
        default=False, description="Answer as server-sent events (`text/event-stream`)."
    )
    tools: list[ChatTool] | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Functions the model may call; its calls come back as `tool_calls`.",
    )
    tool_choice: Literal["auto", "none", "required"] | ChatNamedToolChoice | None = None

    @model_validator(mode="after")
    def _total_size(self) -> "ChatRequest":
        if sum(message.text_size() for message in self.messages) > MAX_TOTAL_CHARS:
            raise ValueError(f"the messages hold more than {MAX_TOTAL_CHARS} characters in all")
        return self


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[ChatToolCall] | None = Field(
        default=None,
        exclude_if=lambda calls: calls is None,
        description="The tools the model calls (`finish_reason: tool_calls`); absent otherwise.",
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                    "model": "gpt-4o-mini-2024-07-18",
                    "message": {
                        "role": "assistant",
                        "content": "A chronological record of who did what, and when.",
                    },
                    "finish_reason": "stop",
                    "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
                }
            ]
        }
    )

    id: str
    model: str
    message: AssistantMessage
    finish_reason: str | None
    usage: Usage | None


class ChatStreamDelta(BaseModel):
    """One `data:` event of a streamed chat: a piece of the reply."""

    id: str
    model: str
    delta: str


class ChatStreamToolCall(BaseModel):
    index: int = Field(description="Which call of this reply the piece belongs to.")
    id: str | None = Field(default=None, description="On the first piece of each call.")
    name: str | None = Field(default=None, description="On the first piece of each call.")
    arguments: str = Field(description="The next piece of the call's JSON arguments.")


class ChatStreamToolCallDelta(BaseModel):
    """One `data:` event of a streamed chat: a piece of a tool call."""

    id: str
    model: str
    tool_call: ChatStreamToolCall


class ChatStreamEnd(BaseModel):
    """The last `data:` event before `data: [DONE]`."""

    id: str
    model: str
    finish_reason: str | None
    usage: Usage | None


# OpenAI's wire format. Only what we guard is typed; every other field of OpenAI's chat
# completion request (tools, tool_choice, response_format, seed, stop, n, top_p, penalties,
# logit_bias, user, stream_options, ...) is forwarded upstream byte for byte.


class WireImageURL(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    url: str = Field(min_length=1, description="An https:// URL or a `data:` URL (base64).")
    detail: str | None = None


# The member each kind of part carries its content in: a part without it is malformed.
_PART_CONTENT = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "image_url": "image_url",
    "input_audio": "input_audio",
    "file": "file",
}


class WireContentPart(BaseModel):
    """One part of a message's content (chat's `text`, `image_url`, `input_audio`, `file`;
    the Responses API's `input_text`, `input_image`, ...). Text is counted against the size
    limits; a known kind of part must carry its content; other fields are forwarded."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None
    image_url: WireImageURL | str | None = Field(
        default=None,
        description="Chat: `{url, detail?}`; the Responses API's `input_image`: the URL itself.",
    )

    @model_validator(mode="after")
    def _has_its_content(self) -> "WireContentPart":
        member = _PART_CONTENT.get(self.type)
        if member is not None and getattr(self, member, None) is None:
            raise ValueError(f"a {self.type} part needs its `{member}`")
        if self.type == "image_url" and not isinstance(self.image_url, WireImageURL):
            raise ValueError("an image_url part's `image_url` is an object with a `url`")
        return self


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str
    content: str | list[WireContentPart] | None = None

    def text_size(self) -> int:
        if isinstance(self.content, str):
            return len(self.content)
        if self.content is None:
            return 0
        return sum(len(part.text or "") for part in self.content)


class WireChatRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            ]
        },
    )

    model: str | None = Field(default=None, description="Allowlisted; `OPENAI_MODEL` if omitted.")
    messages: list[WireMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: PositiveInteger | None = Field(
        default=None, description="At most `OPENAI_MAX_TOKENS`."
    )
    max_completion_tokens: PositiveInteger | None = Field(
        default=None, description="At most `OPENAI_MAX_TOKENS`."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    seed: Integer | None = None
    stop: str | list[str] | None = None
    n: PositiveInteger | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _sizes(self) -> "WireChatRequest":
        sizes = [message.text_size() for message in self.messages]
        if max(sizes) > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message holds more than {MAX_MESSAGE_CHARS} characters")
        if sum(sizes) > MAX_TOTAL_CHARS:
            raise ValueError(f"the messages hold more than {MAX_TOTAL_CHARS} characters in all")
        return self


class WireInputItem(BaseModel):
    """One item of a Responses API `input`: a message (`role`, `content`), a function call's
    output, ...; only message text is guarded (counted), every field is forwarded."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str | None = None
    role: str | None = None
    content: str | list[WireContentPart] | None = None

    def text_size(self) -> int:
        if isinstance(self.content, str):
            return len(self.content)
        return sum(len(part.text or "") for part in self.content or ())


class WireResponseRequest(BaseModel):
    """The Responses API's request. Only what we guard is typed; every other field
    (`instructions`, `tools`, `text`, `reasoning`, `previous_response_id`, ...) is forwarded
    upstream byte for byte."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            "examples": [
                {"model": "gpt-4o-mini", "input": "Say hello.", "stream": True},
                {
                    "model": "gpt-4o-mini",
                    "input": [{"role": "user", "content": "What is the weather in Oslo?"}],
                    "tools": [
                        {
                            "type": "function",
                            "name": "get_weather",
                            "parameters": {
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                                "required": ["city"],
                            },
                        }
                    ],
                },
            ]
        },
    )

    model: str | None = Field(default=None, description="Allowlisted; `OPENAI_MODEL` if omitted.")
    input: (
        Annotated[str, Field(min_length=1, max_length=MAX_TOTAL_CHARS)]
        | Annotated[list[WireInputItem], Field(min_length=1, max_length=MAX_MESSAGES)]
    ) = Field(description="A text, or a list of input items (messages, function call outputs).")
    max_output_tokens: PositiveInteger | None = Field(
        default=None, description="At most `OPENAI_MAX_TOKENS`."
    )
    stream: bool | None = None
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _sizes(self) -> "WireResponseRequest":
        if isinstance(self.input, str):
            return self
        sizes = [item.text_size() for item in self.input]
        if max(sizes) > MAX_MESSAGE_CHARS:
            raise ValueError(f"an input item holds more than {MAX_MESSAGE_CHARS} characters")
        if sum(sizes) > MAX_TOTAL_CHARS:
            raise ValueError(f"the input holds more than {MAX_TOTAL_CHARS} characters in all")
        return self


class WireResponse(BaseModel):
    """The Responses API's response object, returned exactly as the upstream sent it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
                    "object": "response",
                    "created_at": 1741476542,
                    "status": "completed",
                    "model": "gpt-4o-mini-2024-07-18",
                    "output": [
                        {
                            "type": "message",
                            "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
                            "status": "completed",
                            "role": "assistant",
                            "content": [
                                {"type": "output_text", "text": "Hello!", "annotations": []}
                            ],
                        }
                    ],
                    "usage": {
                        "input_tokens": 9,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": 2,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": 11,
                    },
                }
            ]
        },
    )

    id: str
    object: Literal["response"]
    created_at: float
    status: str | None = None
    model: str
    output: list[dict[str, Any]] = Field(
        description="Output items: `message` (its `output_text` parts), `function_call` "
        "(`call_id`, `name`, `arguments`), `reasoning`, ..."
    )
    usage: dict[str, Any] | None = Field(
        default=None, description="`input_tokens`, `output_tokens`, `total_tokens` and details."
    )


class WireChatCompletion(BaseModel):
    """OpenAI's chat completion object, returned exactly as the upstream sent it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                    "object": "chat.completion",
                    "created": 1741570283,
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hello!"},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
                }
            ]
        },
    )

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


# OpenAI's embeddings. Only what we guard is typed; every other field (`dimensions`, `user`,
# ...) is forwarded upstream byte for byte.


class WireEmbeddingRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "model": "text-embedding-3-small",
                    "input": ["An audit trail.", "Who did what, and when."],
                    "encoding_format": "float",
                }
            ]
        },
    )

    model: str = Field(description="An embedding model named in `OPENAI_ALLOWED_MODELS`.")
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
        | Annotated[list[Integer], Field(min_length=1)]
        | Annotated[list[Annotated[list[Integer], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(
        description=(
            f"A text, a list of texts, a token array or a list of token arrays; at most "
            f"{MAX_EMBEDDING_INPUTS} inputs and {MAX_TOTAL_CHARS} characters in all."
        )
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        default=None, description="`float` (the upstream's default) or `base64`."
    )
    dimensions: (
        Annotated[int, Field(ge=1, le=MAX_EMBEDDING_DIMENSIONS), BeforeValidator(_integral)] | None
    ) = None
    user: str | None = None

    @model_validator(mode="after")
    def _sizes(self) -> "WireEmbeddingRequest":
        inputs = [self.input] if isinstance(self.input, str) else self.input
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"more than {MAX_EMBEDDING_INPUTS} inputs")
        if sum(len(text) for text in inputs if isinstance(text, str)) > MAX_TOTAL_CHARS:
            raise ValueError(f"the inputs hold more than {MAX_TOTAL_CHARS} characters in all")
        return self


class WireEmbeddingList(BaseModel):
    """OpenAI's list of embeddings, returned exactly as the upstream sent it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": 0, "embedding": [0.0123, -0.0456, 0.0789]}
                    ],
                    "model": "text-embedding-3-small",
                    "usage": {"prompt_tokens": 4, "total_tokens": 4},
                }
            ]
        },
    )

    object: Literal["list"]
    data: list[dict[str, Any]] = Field(
        description="`{object: embedding, index, embedding}`: `embedding` is a list of floats, "
        "or with `encoding_format: base64` a base64 string of little-endian float32 values."
    )
    model: str
    usage: dict[str, Any] | None = None


class WireModel(BaseModel):
    """The upstream's model entry, every field it sent kept."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "openai"


class WireModelList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "object": "list",
                    "data": [
                        {
                            "id": "gpt-4o-mini",
                            "object": "model",
                            "created": 1721172741,
                            "owned_by": "system",
                        }
                    ],
                }
            ]
        }
    )

    object: Literal["list"] = "list"
    data: list[WireModel]


class OpenAIError(BaseModel):
    message: str = Field(description="The problem's `detail` (its `title` when it has none).")
    type: str = Field(
        description="The upstream's error `type` (`invalid_request_error`) on a 400 or 429 it "
        "sent; else the problem's `code`."
    )
    param: str | None = Field(
        description="The offending field of a validation error (`model`, `messages.0.content`), "
        "or the upstream's `param` on a 400 or 429 it sent."
    )
    code: str = Field(
        description="The upstream's error `code` (`context_length_exceeded`) on a 400 or 429 "
        "it sent; else the problem's `code`."
    )


class WireProblem(Problem):
    """A problem document with OpenAI's `error` object added, as the OpenAI-compatible
    routes answer errors: the official SDK reads `error` (`APIError.message`, `.code`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": f"/problems/{ValidationFailed.code}",
                    "title": "Validation Error",
                    "status": 422,
                    "detail": "body.model: Model 'gpt-5' is not allowed; allowed models: gpt-4o.",
                    "instance": "/api/v1/openai/v1/chat/completions",
                    "code": ValidationFailed.code,
                    "request_id": "3f1c0b9e-8f7a-4a51-9a4e-0f6f1f2b9c11",
                    "errors": [
                        {
                            "loc": ["body", "model"],
                            "message": "Model 'gpt-5' is not allowed; allowed models: gpt-4o.",
                            "type": "model_not_allowed",
                        }
                    ],
                    "error": {
                        "message": (
                            "body.model: Model 'gpt-5' is not allowed; allowed models: gpt-4o."
                        ),
                        "type": ValidationFailed.code,
                        "param": "model",
                        "code": ValidationFailed.code,
                    },
                }
            ]
        }
    )

    error: OpenAIError = Field(description="OpenAI's error object, for OpenAI's clients.")
