"""The LLM half through the gateway, with real processes: our API and the official SDK."""

import base64
import struct
import time
from typing import Literal

import httpx
import orjson
import pytest
from openai import APIStatusError, AsyncOpenAI, RateLimitError, UnprocessableEntityError
from openai.types.chat import ChatCompletionMessageParam

from devstack.openai_standin import OpenAIStandin
from devstack.postgres import free_port
from tests.e2e_stack import STANDIN_API_KEY, Stack, StartService, gateway_env, llm_env

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


def sse_data(body: str) -> list[str]:
    return [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]


async def test_chat_through_the_gateway(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=30) as client:
        response = await client.post("/api/v1/openai/chat", json={"messages": MESSAGES})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "gpt-4o-mini"
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"]
    assert body["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_streamed_chat_through_the_gateway(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=30) as client:
        response = await client.post(
            "/api/v1/openai/chat", json={"messages": MESSAGES, "stream": True}
        )
        plain = await client.post("/api/v1/openai/chat", json={"messages": MESSAGES})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    final = orjson.loads(events[-2])
    assert final["finish_reason"] == "stop"
    assert final["usage"]["total_tokens"] > 0
    text = "".join(orjson.loads(event).get("delta", "") for event in events[:-2])
    assert text == plain.json()["message"]["content"]


@pytest.fixture
def sdk(stack: Stack) -> AsyncOpenAI:
    # The client's key is not the service's: the LLM service talks to OpenAI with its own.
    return AsyncOpenAI(
        base_url=f"{stack.gateway.url}/api/v1/openai/v1", api_key="client-side", max_retries=0
    )


async def test_official_sdk_plain(sdk: AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


async def test_official_sdk_streaming(sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage_seen = False
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage_seen = usage_seen or chunk.usage is not None
    assert len(pieces) > 1
    assert usage_seen


async def test_official_sdk_models_list(sdk: AsyncOpenAI) -> None:
    models = [model.id async for model in sdk.models.list()]
    assert set(models) == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_official_sdk_embeddings_through_the_gateway(
    sdk: AsyncOpenAI, encoding_format: Literal["float", "base64"]
) -> None:
    texts = ["An audit trail.", "Who did what, and when."]
    result = await sdk.embeddings.create(
        model="text-embedding-3-small", input=texts, encoding_format=encoding_format
    )
    assert [item.index for item in result.data] == [0, 1]
    assert result.model == "text-embedding-3-small"
    assert result.usage.prompt_tokens == 8
    if encoding_format == "float":
        vectors = [item.embedding for item in result.data]
    else:  # the SDK leaves a base64 string asked for explicitly as it came
        raw = [base64.b64decode(str(item.embedding)) for item in result.data]
        vectors = [list(struct.unpack(f"<{len(r) // 4}f", r)) for r in raw]
    assert [len(vector) for vector in vectors] == [1536, 1536]
    assert all(abs(sum(v * v for v in vector) - 1) < 1e-3 for vector in vectors)
    again = await sdk.embeddings.create(model="text-embedding-3-small", input=texts[0])
    assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)


async def test_official_sdk_embeddings_outside_the_allowlist_are_422(sdk: AsyncOpenAI) -> None:
    with pytest.raises(UnprocessableEntityError) as invalid:
        await sdk.embeddings.create(model="text-embedding-3-large", input="Hi")
    assert invalid.value.param == "model"


async def test_official_sdk_sees_a_model_outside_the_allowlist_as_422(sdk: AsyncOpenAI) -> None:
    with pytest.raises(UnprocessableEntityError):
        await sdk.chat.completions.create(model="gpt-5-secret", messages=MESSAGES)


async def test_sdk_stream_chunks_arrive_as_the_upstream_sends_them(
    start_service: StartService, stack: Stack
) -> None:
    delay = 0.25
    with OpenAIStandin(api_key=STANDIN_API_KEY, reply="a b c d e", chunk_delay=delay) as slow:
        llm = start_service("llm", llm_env(slow))
        gateway = start_service("gateway", gateway_env(stack.audits.url, llm.url))
        client = AsyncOpenAI(base_url=f"{gateway.url}/api/v1/openai/v1", api_key="x")
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
        )
        arrivals = [time.monotonic() - started async for chunk in stream if chunk.choices]
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] >= 3 * delay, arrivals


async def test_the_key_never_leaves_the_llm_service(stack: Stack, sdk: AsyncOpenAI) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=30) as client:
        responses = [
            await client.post("/api/v1/openai/chat", json={"messages": MESSAGES}),
            await client.post(
                "/api/v1/openai/chat", json={"messages": MESSAGES, "model": "not-allowed"}
            ),
            await client.get("/api/v1/openai/v1/models"),
            await client.get("/health/ready"),
            await client.get("/openapi.json"),
        ]
    for response in responses:
        assert STANDIN_API_KEY not in response.text
        assert STANDIN_API_KEY not in str(response.headers)
    for name in ("gateway", "llm", "audits"):
        assert STANDIN_API_KEY not in stack.log_text(name)


async def test_an_unconfigured_llm_degrades_the_gateway(
    start_service: StartService, stack: Stack
) -> None:
    llm = start_service("llm", {"OPENAI_API_KEY": ""})
    gateway = start_service("gateway", gateway_env(stack.audits.url, llm.url))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        ready = await client.get("/health/ready")
        chat = await client.post("/api/v1/openai/chat", json={"messages": MESSAGES})
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["services"]["llm"]["status"] != "ok"
    assert chat.status_code == 503
    assert chat.headers["content-type"] == "application/problem+json"
    assert chat.json()["code"] == "llm_not_configured"


def _assert_sdk_sees_the_problem(error: APIStatusError, status: int, code: str) -> None:
    """The SDK's exception carries the gateway's problem through OpenAI's `error` object."""
    problem = error.response.json()
    assert error.status_code == status, problem
    assert problem["code"] == code
    assert error.body == problem["error"]
    assert (error.code, error.type, error.param) == (code, code, None)
    assert error.message == f"Error code: {status} - {problem['detail']}"


async def test_the_gateways_own_problems_reach_the_sdk_as_openai_errors(
    start_service: StartService, stack: Stack
) -> None:
    gateway = start_service(
        "gateway", gateway_env(stack.audits.url, stack.llm.url, RATE_LIMIT_LLM_PER_MINUTE="1")
    )
    sdk = AsyncOpenAI(base_url=f"{gateway.url}/api/v1/openai/v1", api_key="x", max_retries=0)
    await sdk.models.list()
    with pytest.raises(RateLimitError) as limited:
        await sdk.models.list()
    _assert_sdk_sees_the_problem(limited.value, 429, "rate_limited")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        refused = (await client.get("/api/v1/openai/v1/models/%2e%2e")).json()
        elsewhere = (await client.get("/api/v1/audits/%2e%2e")).json()
    assert refused["error"] == {
        "message": refused["detail"],
        "type": "not_found",
        "param": None,
        "code": "not_found",
    }
    # Only the OpenAI-compatible routes carry it.
    assert "error" not in elsewhere


async def test_an_unreachable_llm_service_reaches_the_sdk_as_an_openai_error(
    start_service: StartService, stack: Stack
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    gateway = start_service("gateway", gateway_env(stack.audits.url, nowhere))
    sdk = AsyncOpenAI(base_url=f"{gateway.url}/api/v1/openai/v1", api_key="x", max_retries=0)
    with pytest.raises(APIStatusError) as failed:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    problem = failed.value.response.json()
    _assert_sdk_sees_the_problem(failed.value, problem["status"], problem["code"])
    assert problem["status"] in (502, 503)
