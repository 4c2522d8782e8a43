from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from llm_service.chat.dependencies import ChatServiceDep
from llm_service.chat.schemas import (
    ChatRequest,
    ChatResponse,
    ChatStreamDelta,
    ChatStreamEnd,
    WireChatCompletion,
    WireChatRequest,
    WireModel,
    WireModelList,
)
from servicekit import problem_responses

router = APIRouter(prefix="/openai", tags=["llm"])

_UPSTREAM_ERRORS = problem_responses(400, 422, 429, 502, 503, 504)
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


_CHAT_STREAM = _sse_doc(
    f"With `stream: true`: one `data:` event per delta ({ChatStreamDelta.__name__}: "
    f"`id`, `model`, `delta`), then one with `finish_reason` and `usage` "
    f"({ChatStreamEnd.__name__}), then `data: [DONE]`. If the upstream fails after the "
    "stream began, an `event: error` whose data is a problem document ends it.",
    'data: {"id":"chatcmpl-1","model":"gpt-4o-mini","delta":"Hel"}\n\n'
    'data: {"id":"chatcmpl-1","model":"gpt-4o-mini","delta":"lo"}\n\n'
    'data: {"id":"chatcmpl-1","model":"gpt-4o-mini","finish_reason":"stop",'
    '"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
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
    responses={200: {"content": _CHAT_STREAM}, **_UPSTREAM_ERRORS},
)
async def chat(
    body: ChatRequest, service: ChatServiceDep, request: Request
) -> ChatResponse | Response:
    if body.stream:
        events = await service.chat_stream(body, request.url.path)
        return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
    return await service.chat(body)


@router.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completions (plain and streaming)",
    description=(
        "OpenAI's request and response formats: point the official `openai` SDK at "
        "`base_url=<gateway>/api/v1/openai/v1`. Every standard field (tools, tool_choice, "
        "response_format, seed, stop, n, top_p, penalties, logit_bias, user, "
        "stream_options, ...) is forwarded unchanged; the service's key is used, whatever "
        "key the client sends. Guards as on `/chat` (`max_tokens` and "
        "`max_completion_tokens` above `OPENAI_MAX_TOKENS` → 422). Errors are problem "
        "documents, which the SDK raises as `APIStatusError`."
    ),
    response_model=None,
    responses={200: {"model": WireChatCompletion, "content": _WIRE_STREAM}, **_UPSTREAM_ERRORS},
)
async def chat_completions(
    body: WireChatRequest, service: ChatServiceDep, request: Request
) -> Response:
    raw = await request.body()
    if body.stream:
        chunks = await service.wire_stream(body, raw, request.url.path)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=_SSE_HEADERS)
    return Response(await service.wire_completion(body, raw), media_type="application/json")


@router.get(
    "/v1/models",
    summary="OpenAI-compatible list of the allowlisted models",
    responses=problem_responses(503),
)
async def list_models(service: ChatServiceDep) -> WireModelList:
    return service.models()


@router.get(
    "/v1/models/{model_id:path}",
    summary="OpenAI-compatible description of one allowlisted model",
    responses=problem_responses(404, 503),
)
async def retrieve_model(model_id: str, service: ChatServiceDep) -> WireModel:
    return service.model(model_id)
