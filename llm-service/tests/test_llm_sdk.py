"""The official `openai` SDK against the service running under uvicorn as a real process."""

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from llm_testkit import API_KEY, sse_events

from devstack.openai_standin import Fault, OpenAIStandin
from devstack.processes import ServiceProcess

REPLY = "Hello! This is the OpenAI stand-in speaking."
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say hello."}
]


@pytest.fixture(scope="module")
def service_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm") / "llm.log"


@pytest.fixture(scope="module")
def service(_standin: OpenAIStandin, service_log: Path) -> Iterator[ServiceProcess]:
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": _standin.base_url,
        "OPENAI_ALLOWED_MODELS": "gpt-4o,gpt-4.1-mini",
        "OPENAI_TIMEOUT": "2",
        "OPENAI_MAX_RETRIES": "2",
        "OPENAI_RETRY_MAX_TIME": "5",
        "LOG_LEVEL": "DEBUG",
    }
    with service_log.open("wb") as log:
        process = ServiceProcess("llm", env, log=log).start()
        yield process
        process.stop()


@pytest.fixture
def sdk(service: ServiceProcess, upstream: OpenAIStandin) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{service.url}/api/v1/openai/v1", api_key="not-used", max_retries=0
    ) as client:
        yield client


def test_sdk_plain(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, seed=1)
    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(upstream.pieces)
    assert upstream.calls[0].json()["seed"] == 1


def test_sdk_stream(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4.1-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(upstream.pieces)
    assert {c.model for c in chunks} == {"gpt-4.1-mini"}


def test_sdk_models(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]
    assert sdk.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-3")


def test_sdk_sees_problems_as_api_status_errors(
    sdk: openai.OpenAI, upstream: OpenAIStandin
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        sdk.chat.completions.create(model="gpt-5-ultra", messages=MESSAGES)
    assert isinstance(invalid.value.body, dict)
    assert invalid.value.body["code"] == "validation_error"
    upstream.script(*[Fault.error(429, retry_after=0)] * 3)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert limited.value.response.headers["retry-after"] == "1"
    assert upstream.call_count == 3


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_validation_error_carries_the_detail_and_code(
    sdk: openai.OpenAI, upstream: OpenAIStandin, stream: bool
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        sdk.chat.completions.create(model="gpt-5-ultra", messages=MESSAGES, stream=stream)
    assert invalid.value.message.startswith(
        "Error code: 422 - body.model: Model 'gpt-5-ultra' is not allowed"
    )
    assert invalid.value.code == invalid.value.type == "validation_error"
    assert invalid.value.param == "model"
    problem = invalid.value.response.json()
    assert problem["detail"] == invalid.value.message.removeprefix("Error code: 422 - ")
    assert invalid.value.response.headers["content-type"] == "application/problem+json"
    assert upstream.call_count == 0


def test_sdk_not_found_carries_the_detail_and_code(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gpt-3")
    assert missing.value.message == "Error code: 404 - No model 'gpt-3' is offered here."
    assert missing.value.code == missing.value.type == "not_found"


@pytest.mark.parametrize(
    ("faults", "error_type", "code", "error_type_field", "message"),
    [
        (
            [Fault.error(400, message="Invalid value for 'seed'.")],
            openai.BadRequestError,
            "upstream_bad_request",
            "invalid_request_error",
            "Error code: 400 - Upstream: Invalid value for 'seed'.",
        ),
        (
            [Fault.error(429, retry_after=0)] * 3,
            openai.RateLimitError,
            "upstream_rate_limited",
            "rate_limit_exceeded",
            "Error code: 429 - The upstream API is rate limiting us; retry in 1 s.",
        ),
        (
            [Fault.error(401)],
            openai.InternalServerError,
            "upstream_auth_failed",
            "upstream_auth_failed",
            "Error code: 502 - The upstream API rejected the service's API key (HTTP 401).",
        ),
        (
            [Fault.error(500)] * 3,
            openai.InternalServerError,
            "upstream_error",
            "upstream_error",
            "Error code: 502 - The upstream API failed with HTTP 500.",
        ),
    ],
    ids=["400", "429", "401", "500"],
)
def test_sdk_upstream_failures_carry_the_detail_and_code(
    sdk: openai.OpenAI,
    upstream: OpenAIStandin,
    faults: list[Fault],
    error_type: type[openai.APIStatusError],
    code: str,
    error_type_field: str,
    message: str,
) -> None:
    upstream.script(*faults)
    with pytest.raises(error_type) as failure:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert failure.value.message == message
    assert failure.value.code == code  # the upstream sent no code of its own
    assert failure.value.type == error_type_field
    assert failure.value.response.json()["code"] == code
    assert upstream.call_count == len(faults)


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_sees_the_upstreams_error_code_param_and_type(
    sdk: openai.OpenAI, upstream: OpenAIStandin, stream: bool
) -> None:
    message = "This model's maximum context length is 128000 tokens."
    upstream.script(
        Fault.error(400, message=message, code="context_length_exceeded", param="messages")
    )
    with pytest.raises(openai.BadRequestError) as failure:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=stream)
    assert failure.value.status_code == 400
    assert failure.value.code == "context_length_exceeded"
    assert failure.value.param == "messages"
    assert failure.value.type == "invalid_request_error"
    assert failure.value.message == f"Error code: 400 - Upstream: {message}"
    problem = failure.value.response.json()
    assert problem["code"] == "upstream_bad_request"
    assert problem["type"] == "/problems/upstream_bad_request"
    assert problem["status"] == 400
    assert problem["request_id"] == failure.value.response.headers["x-request-id"]
    assert upstream.call_count == 1


def test_sdk_n_over_the_cap_is_422_naming_n(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=5)
    assert invalid.value.param == "n"
    assert invalid.value.code == "validation_error"
    assert "OPENAI_MAX_N" in invalid.value.message
    assert upstream.call_count == 0
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=4)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert upstream.calls[0].json()["n"] == 4


def test_sdk_stream_failing_mid_way_raises(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    upstream.script(Fault.drop_after(3))
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    received: list[object] = []
    with pytest.raises(openai.APIError) as failure:
        received.extend(stream)
    assert len(received) == 3
    assert "upstream" in failure.value.message.lower()


def test_sdk_stream_chunks_arrive_as_the_upstream_sends_them(
    sdk: openai.OpenAI, upstream: OpenAIStandin
) -> None:
    upstream.chunk_delay = 0.15
    arrivals = []
    for _ in sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        arrivals.append(time.monotonic())
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(arrivals) == len(upstream.pieces) + 2
    assert all(gap > 0.08 for gap in gaps), gaps


def test_chat_stream_events_arrive_as_the_upstream_sends_them(
    service: ServiceProcess, upstream: OpenAIStandin
) -> None:
    upstream.chunk_delay = 0.15
    arrivals = []
    body = {"messages": MESSAGES, "stream": True}
    with (
        httpx.Client(base_url=service.url) as client,
        client.stream("POST", "/api/v1/openai/chat", json=body) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        text = ""
        for piece in response.iter_text():
            arrivals.append(time.monotonic())
            text += piece
    assert len(arrivals) >= len(upstream.pieces)
    assert arrivals[-1] - arrivals[0] > 0.15 * (len(upstream.pieces) - 1)
    assert sse_events(text)[-1] == ("message", "[DONE]")


def test_the_key_is_in_no_log_line_even_at_debug(
    sdk: openai.OpenAI, upstream: OpenAIStandin, service_log: Path
) -> None:
    upstream.api_key = "sk-another-key-entirely"  # the stand-in echoes what it was sent
    with pytest.raises(openai.APIStatusError) as rejected:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert rejected.value.status_code == 502
    assert API_KEY not in rejected.value.response.text
    assert API_KEY not in str(rejected.value.response.headers)
    time.sleep(0.2)  # let the service flush its log lines
    log = service_log.read_text()
    assert "upstream_auth_failed" in log
    assert API_KEY not in log


def test_unconfigured_process_starts_and_reports_not_ready(tmp_path: Path) -> None:
    with (tmp_path / "llm.log").open("wb") as log:
        process = ServiceProcess("llm", {"OPENAI_API_KEY": ""}, log=log).start()
        try:
            ready = httpx.get(f"{process.url}/health/ready")
            chat = httpx.post(f"{process.url}/api/v1/openai/chat", json={"messages": MESSAGES})
            with (
                openai.OpenAI(
                    base_url=f"{process.url}/api/v1/openai/v1", api_key="x", max_retries=0
                ) as client,
                pytest.raises(openai.InternalServerError) as unconfigured,
            ):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        finally:
            process.stop()
    assert unconfigured.value.status_code == 503
    assert unconfigured.value.message == (
        "Error code: 503 - OPENAI_API_KEY is not set on the LLM service."
    )
    assert unconfigured.value.code == "llm_not_configured"
    assert ready.status_code == 503
    assert ready.json()["code"] == "llm_not_configured"
    assert chat.status_code == 503
    assert chat.json()["code"] == "llm_not_configured"
    warnings = [
        line for line in (tmp_path / "llm.log").read_text().splitlines() if "OPENAI_API_KEY" in line
    ]
    assert len(warnings) == 1


@pytest.mark.parametrize("path", ["/api/v1/openai/chat", "/api/v1/openai/v1/responses"])
def test_a_client_leaving_mid_stream_stops_the_upstream_stream_at_once(
    service: ServiceProcess, upstream: OpenAIStandin, service_log: Path, path: str
) -> None:
    upstream.chunk_delay = 0.5  # the whole stream would take several seconds
    body = (
        {"model": "gpt-4o-mini", "input": "Hi"} if "responses" in path else {"messages": MESSAGES}
    )
    with (
        httpx.Client(base_url=service.url) as client,
        client.stream("POST", path, json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200
        next(response.iter_bytes())
    left = time.monotonic()
    outcomes: list[str] = []
    while time.monotonic() - left < 2 and "client_disconnected" not in outcomes:
        time.sleep(0.05)
        lines = [json.loads(line) for line in service_log.read_text().splitlines() if line]
        outcomes = [line["outcome"] for line in lines if line.get("message") == "upstream call"]
    assert outcomes[-1:] == ["client_disconnected"]
    assert time.monotonic() - left < 0.5 * len(upstream.pieces) / 2
