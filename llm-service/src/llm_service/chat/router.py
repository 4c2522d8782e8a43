from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from llm_service.chat import sse
from llm_service.chat.dependencies import ChatServiceDep, WireServiceDep
from llm_service.chat.exceptions import openai_error
from llm_service.chat.schemas import (
    ChatRequest,
    ChatResponse,
    ChatStreamDelta,
    ChatStreamEnd,
    ChatStreamToolCallDelta,
    WireChatCompletion,
    WireChatRequest,
    WireEmbeddingList,
    WireEmbeddingRequest,
    WireModel,
    WireModelList,
    WireProblem,
    WireResponse,
    WireResponseRequest,
)
from servicekit import PROBLEM_MEDIA_TYPE, ServiceError, problem_responses
from servicekit.jsonbody import StrictJSONRoute


class _OpenAIErrorRoute(StrictJSONRoute):
    """A route whose errors are the app's problem documents plus OpenAI's `error` object:
    the official SDK takes its exception's message, type and code from that object."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except (ServiceError, RequestValidationError, HTTPException) as exc:
                handlers = request.app.exception_handlers
                render = next(handlers[cls] for cls in type(exc).__mro__ if cls in handlers)
                response: Response = await render(request, exc)
                cause: Exception = exc
            problem = orjson.loads(response.body)
            problem["error"] = openai_error(problem, cause)
            response.body = orjson.dumps(problem)
            response.headers["content-length"] = str(len(response.body))
            return response

        return handler


def _wire_problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    schema = {"$ref": "#/components/schemas/WireProblem"}
    return {
        status: {**entry, "model": WireProblem, "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
        for status, entry in problem_responses(*statuses).items()
    }


router = APIRouter(prefix="/openai", tags=["llm"], route_class=StrictJSONRoute)
wire_router = APIRouter(prefix="/v1", route_class=_OpenAIErrorRoute)

# A body over LLM_MAX_BODY_BYTES is 413.
_POST_STATUSES = (400, 413, 422, 429, 502, 503, 504)


def _sse_doc(description: str, example: str) -> dict[str, Any]:
    return {
        "text/event-stream": {
            # OpenAPI 3.1 has no stream schema (3.2's `itemSchema`): `schema` is one event.
            "schema": {
                "type": "object",
                "description": description,
                "properties": {
                    "event": {"type": "string", "description": "`message` (default) or `error`."},
                    "data": {"type": "string", "description": "A JSON document, or `[DONE]`."},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"},
                },
                "required": ["data"],
            },
            "example": example,
        }
    }


def _event_stream(
    events: AsyncGenerator[bytes, None], request: Request, *, openai: bool
) -> sse.EventStreamResponse:
    """A failure after the stream began becomes its last event, a problem for this request."""
    body = sse.ending_in_error_event(events, request.scope["path"], openai=openai)
    return sse.EventStreamResponse(body)


_CHAT_STREAM = _sse_doc(
    f"With `stream: true`: one `data:` event per text delta ({ChatStreamDelta.__name__}: "
    f"`id`, `model`, `delta`) or tool-call delta ({ChatStreamToolCallDelta.__name__}: "
    "`id`, `model`, `tool_call: {index, id?, name?, arguments}`; `id` and `name` on the "
    "first piece of each call, the `arguments` pieces of one `index` concatenated are its "
    f"JSON arguments), then one with `finish_reason` and `usage` ({ChatStreamEnd.__name__}), "
    "then `data: [DONE]`. If the upstream fails after the stream began, an `event: error` "
    "whose data is a problem document ends it.",
    'data: {"id":"chatcmpl-1","model":"gpt-4o-mini","delta":"Hel"}\n\n'
    'data: {"id":"chatcmpl-1","model":"gpt-4o-mini","delta":"lo"}\n\n'
    'data: {"id":"chatcmpl-1","model":"gpt-4o-mini","finish_reason":"stop",'
    '"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    "data: [DONE]\n\n"
    "\n(with tools)\n\n"
    'data: {"id":"chatcmpl-2","model":"gpt-4o-mini","tool_call":{"index":0,'
    '"id":"call_abc","name":"get_weather","arguments":""}}\n\n'
    'data: {"id":"chatcmpl-2","model":"gpt-4o-mini","tool_call":{"index":0,'
    '"arguments":"{\\"city\\":\\"Oslo\\"}"}}\n\n'
    'data: {"id":"chatcmpl-2","model":"gpt-4o-mini","finish_reason":"tool_calls",'
    '"usage":{"prompt_tokens":60,"completion_tokens":7,"total_tokens":67}}\n\n'
    "data: [DONE]\n\n",
)
_WIRE_STREAM = _sse_doc(
    "With `stream: true`: OpenAI's `chat.completion.chunk` events exactly as the upstream "
    "sent them, ending with `data: [DONE]`. If the upstream fails after the stream began, "
    "an `event: error` (a problem document with an OpenAI `error` object) ends it.",
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741570283,'
    '"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"},'
    '"finish_reason":null}]}\n\ndata: [DONE]\n\n',
)


@router.post(
    "/chat",
    summary="Chat completion (JSON, or server-sent events with `stream: true`)",
    description=(
        "Models outside `OPENAI_ALLOWED_MODELS` and `max_tokens` above `OPENAI_MAX_TOKENS` "
        "are rejected with 422. Upstream failures are retried (408, 409, 429, 5xx, "
        "connection errors, timeouts) within `OPENAI_MAX_RETRIES` and "
        "`OPENAI_RETRY_MAX_TIME`; a stream only until its first byte was sent."
    ),
    response_model=ChatResponse,
    responses={200: {"content": _CHAT_STREAM}, **problem_responses(*_POST_STATUSES)},
)
async def chat(
    body: ChatRequest, service: ChatServiceDep, request: Request
) -> ChatResponse | Response:
    if body.stream:
        return _event_stream(await service.chat_stream(body), request, openai=False)
    return await service.chat(body)


@wire_router.post(
    "/chat/completions",
    summary="OpenAI-compatible chat completions (plain and streaming)",
    description=(
        "OpenAI's request and response formats: point the official `openai` SDK at "
        "`base_url=<gateway>/api/v1/openai/v1`. Every standard field (tools, tool_choice, "
        "response_format, seed, stop, n, top_p, penalties, logit_bias, user, "
        "stream_options, ...) is forwarded unchanged; the service's key is used, whatever "
        "key the client sends. Guards as on `/chat` (`max_tokens` and "
        "`max_completion_tokens` above `OPENAI_MAX_TOKENS` → 422). Errors are problem "
        "documents with OpenAI's `error` object added, which the SDK raises as "
        "`APIStatusError` with the problem's `detail` as its message and `code` as its code."
    ),
    response_model=None,
    responses={
        200: {"model": WireChatCompletion, "content": _WIRE_STREAM},
        **_wire_problems(*_POST_STATUSES, 415),
    },
)
async def chat_completions(
    body: WireChatRequest, service: WireServiceDep, request: Request
) -> Response:
    raw = await request.body()
    if body.stream:
        return _event_stream(await service.stream(body, raw), request, openai=True)
    return Response(await service.completion(body, raw), media_type="application/json")


_RESPONSES_STREAM = _sse_doc(
    "With `stream: true`: the Responses API's typed events exactly as the upstream sent "
    "them (`event:` names the `type` of its `data`: `response.created`, "
    "`response.output_text.delta`, `response.function_call_arguments.delta`, ..., "
    "`response.completed` with the response's `usage`). If the upstream fails after the "
    "stream began, the API's own `error` event ends it: `{type: error, code, message, "
    "param, sequence_number}`, `code` one of the problem codes (`upstream_error`, "
    "`upstream_timeout`).",
    'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
    '"response":{"id":"resp_1","object":"response","status":"in_progress","output":[]}}\n\n'
    'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    '"sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,'
    '"delta":"Hi","logprobs":[]}\n\n',
)


@wire_router.post(
    "/responses",
    summary="OpenAI-compatible Responses API (plain and streaming)",
    description=(
        "OpenAI's Responses API request and response (`client.responses.create`, plain and "
        "with `stream: true`): every field (instructions, tools, text.format, reasoning, "
        "previous_response_id, ...) is forwarded unchanged, the response and its stream "
        "events come back unchanged. Guards, retries and errors as on chat completions "
        "(`max_output_tokens` above `OPENAI_MAX_TOKENS` → 422); a stream is retried only "
        "until its first byte."
    ),
    response_model=None,
    responses={
        200: {"model": WireResponse, "content": _RESPONSES_STREAM},
        **_wire_problems(*_POST_STATUSES, 415),
    },
)
async def responses(
    body: WireResponseRequest, service: WireServiceDep, request: Request
) -> Response:
    raw = await request.body()
    if body.stream:
        return sse.EventStreamResponse(await service.response_stream(body, raw))
    return Response(await service.response(body, raw), media_type="application/json")


@wire_router.post(
    "/embeddings",
    summary="OpenAI-compatible embeddings",
    description=(
        "OpenAI's embeddings request and response, byte for byte (`encoding_format` "
        "`float` or `base64`, `dimensions`, ...). The model must be allowlisted: embedding "
        "models are named in `OPENAI_ALLOWED_MODELS` like chat models (422 otherwise). "
        "Retries and errors as on chat completions."
    ),
    response_model=None,
    responses={
        200: {"model": WireEmbeddingList},
        **_wire_problems(*_POST_STATUSES, 415),
    },
)
async def embeddings(
    body: WireEmbeddingRequest, service: WireServiceDep, request: Request
) -> Response:
    content = await service.embeddings(body, await request.body())
    return Response(content, media_type="application/json")


_MODELS_DESCRIPTION = (
    "The upstream's own entries of the models in the allowlist (`OPENAI_MODEL` and "
    "`OPENAI_ALLOWED_MODELS`), in allowlist order; asked for at most once a minute. An "
    "allowlisted model the upstream does not list is left out. Only when the upstream has "
    "no models endpoint (404) are the entries made from the allowlist alone (`created: 0`)."
)


@wire_router.get(
    "/models",
    summary="OpenAI-compatible list of the allowlisted models",
    description=_MODELS_DESCRIPTION,
    responses=_wire_problems(400, 429, 502, 503, 504),
)
async def list_models(service: WireServiceDep) -> WireModelList:
    return await service.models()


@wire_router.get(
    "/models/{model_id:path}",
    summary="OpenAI-compatible description of one allowlisted model",
    description=_MODELS_DESCRIPTION,
    # 422 listed so that FastAPI's default one (HTTPValidationError) is not: no id fails it.
    responses=_wire_problems(400, 404, 422, 429, 502, 503, 504),
)
async def retrieve_model(model_id: str, service: WireServiceDep) -> WireModel:
    return await service.model(model_id)


router.include_router(wire_router)
