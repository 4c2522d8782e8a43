"""Guards, readiness, start-up key check, OpenAI wire compatibility, logs and the key."""

import json
from typing import Any

import httpx
import orjson
import pytest
from llm_testkit import API_KEY, ClientFactory, chat_body

from devstack.openai_standin import Fault, OpenAIStandin
from testkit.checks import assert_problem

CHAT = "/api/v1/openai/chat"
WIRE = "/api/v1/openai/v1/chat/completions"
MODELS = "/api/v1/openai/v1/models"
_JSON = {"content-type": "application/json"}
_PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance", "code", "request_id"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (chat_body(model="gpt-5-ultra"), ["body", "model"]),
        (chat_body(max_tokens=4097), ["body", "max_tokens"]),
        (chat_body(max_tokens=0), ["body", "max_tokens"]),
        (chat_body(temperature=2.1), ["body", "temperature"]),
        (chat_body(temperature=-0.1), ["body", "temperature"]),
        ({"messages": []}, ["body", "messages"]),
        ({"messages": [{"role": "user", "content": "hi"}] * 257}, ["body", "messages"]),
        ({"messages": [{"role": "user", "content": "x" * 256_001}]}, ["body", "messages", 0]),
        ({"messages": [{"role": "user", "content": "x" * 200_000}] * 3}, ["body"]),
        ({"messages": [{"role": "robot", "content": "hi"}]}, ["body", "messages", 0, "role"]),
        ({"messages": [{"role": "tool", "content": "hi"}]}, ["body", "messages", 0]),
        ({"messages": [{"role": "user"}]}, ["body", "messages", 0]),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, ["body", "messages", 0]),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            ["body", "messages", 0],
        ),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, ["body", "messages", 0]),
        (chat_body(tools=[{"type": "function", "function": {"name": "a b"}}]), ["body", "tools"]),
        (chat_body(tool_choice="sometimes"), ["body", "tool_choice"]),
        ({"messages": [{"role": "user", "content": ""}]}, ["body", "messages", 0, "content"]),
        (chat_body(surprise=True), ["body", "surprise"]),
        ({}, ["body", "messages"]),
    ],
)
async def test_chat_guards_are_422(
    llm: ClientFactory, upstream: OpenAIStandin, body: dict[str, Any], loc: list[object]
) -> None:
    async with llm() as client:
        response = await client.post(CHAT, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert any(error["loc"][: len(loc)] == loc for error in problem["errors"]), problem
    assert upstream.call_count == 0


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (chat_body(model="gpt-5-ultra"), ["body", "model"]),
        (chat_body(model="gpt-4o-mini", max_tokens=5000), ["body", "max_tokens"]),
        (
            chat_body(model="gpt-4o-mini", max_completion_tokens=5000),
            ["body", "max_completion_tokens"],
        ),
        (chat_body(model="gpt-4o-mini", temperature=3), ["body", "temperature"]),
        ({"model": "gpt-4o-mini", "messages": []}, ["body", "messages"]),
        ({"model": "gpt-4o-mini"}, ["body", "messages"]),
    ],
)
async def test_wire_guards_are_422(
    llm: ClientFactory, upstream: OpenAIStandin, body: dict[str, Any], loc: list[object]
) -> None:
    async with llm() as client:
        response = await client.post(WIRE, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert any(error["loc"][: len(loc)] == loc for error in problem["errors"]), problem
    assert upstream.call_count == 0


async def test_the_allowlist_and_cap_come_from_config(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm(openai_allowed_models="gpt-4o, gpt-4.1-mini", openai_max_tokens=100) as client:
        allowed = await client.post(CHAT, json=chat_body(model="gpt-4.1-mini", max_tokens=100))
        default = await client.post(CHAT, json=chat_body())
        capped = await client.post(CHAT, json=chat_body(max_tokens=101))
        models = await client.get("/api/v1/openai/v1/models")
    assert allowed.status_code == 200
    assert allowed.json()["model"] == "gpt-4.1-mini"
    assert default.json()["model"] == "gpt-4o-mini"
    assert_problem(capped, 422, "validation_error")
    assert models.json() == {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 1715367049, "owned_by": "system"}
            for name in ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
        ],
    }
    assert [call.path for call in upstream.calls] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/models",
    ]


async def test_wire_request_reaches_the_upstream_byte_for_byte(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 7,
        "stop": ["\n\n"],
        "n": 1,
        "top_p": 0.9,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"50256": -100},
        "user": "user-42",
        "metadata": {"vendor_extension": True},
    }
    raw = orjson.dumps(body)
    async with llm() as client:
        response = await client.post(
            WIRE,
            content=raw,
            headers={"Content-Type": "application/json", "Authorization": "Bearer client-key"},
        )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    call = upstream.calls[0]
    assert call.body == raw
    assert call.headers["authorization"] == f"Bearer {API_KEY}"


async def test_wire_request_without_a_model_gets_the_default(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        response = await client.post(WIRE, json=chat_body(seed=3))
    assert response.status_code == 200
    assert upstream.calls[0].json()["model"] == "gpt-4o-mini"
    assert upstream.calls[0].json()["seed"] == 3


async def test_wire_errors_are_problems(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    upstream.script(Fault.error(401))
    async with llm() as client:
        response = await client.post(WIRE, json=chat_body(model="gpt-4o-mini"))
        missing = await client.get("/api/v1/openai/v1/models/gpt-3")
        present = await client.get("/api/v1/openai/v1/models/gpt-4o-mini")
    assert_problem(response, 502, "upstream_auth_failed")
    assert_problem(missing, 404, "not_found")
    assert present.json()["id"] == "gpt-4o-mini"


async def _wire_failure(
    llm: ClientFactory, upstream: OpenAIStandin, case: str
) -> tuple[httpx.Response, int, str]:
    """One error of an OpenAI-compatible route: (response, status, code)."""
    body = chat_body(model="gpt-4o-mini")
    faults = {
        "upstream_400": (Fault.error(400, message="Invalid value for 'seed'."), 400),
        "upstream_401": (Fault.error(401), 502),
        "upstream_429": (Fault.error(429, retry_after=0), 429),
        "upstream_500": (Fault.error(500), 502),
        "upstream_hang": (Fault.hang(5), 504),
    }
    async with llm(openai_max_retries=0, openai_timeout=0.3) as client:
        if case in faults:
            fault, status = faults[case]
            upstream.script(fault)
            response = await client.post(WIRE, json=body)
            return response, status, response.json()["code"]
        if case == "model_not_allowed":
            return await client.post(WIRE, json=chat_body(model="gpt-5")), 422, "validation_error"
        if case == "invalid_body":
            response = await client.post(WIRE, json={"model": "gpt-4o-mini", "messages": []})
            return response, 422, "validation_error"
        if case == "not_json":
            response = await client.post(WIRE, content=b"{", headers=_JSON)
            return response, 422, "validation_error"
        if case == "undecodable_body":
            response = await client.post(WIRE, content=b"\x1a\x88\xff", headers=_JSON)
            return response, 422, "validation_error"
        if case == "not_declared_json":
            response = await client.post(
                WIRE, content=b"{}", headers={"content-type": "text/plain"}
            )
            return response, 415, "unsupported_media_type"
        return await client.get(f"{MODELS}/gpt-3"), 404, "not_found"


@pytest.mark.parametrize(
    "case",
    [
        "model_not_allowed",
        "invalid_body",
        "not_json",
        "undecodable_body",
        "not_declared_json",
        "unknown_model",
        "upstream_400",
        "upstream_401",
        "upstream_429",
        "upstream_500",
        "upstream_hang",
    ],
)
async def test_wire_errors_are_problems_with_an_openai_error_object(
    llm: ClientFactory, upstream: OpenAIStandin, case: str
) -> None:
    response, status, code = await _wire_failure(llm, upstream, case)
    problem = assert_problem(response, status, code)
    assert set(problem) - {"errors"} == _PROBLEM_FIELDS | {"error"}
    assert problem["error"]["message"] == problem["detail"]
    # The upstream's own error type reaches the client where it can act on it (the stand-in
    # sends no code or param with these).
    upstream_types = {
        "upstream_400": "invalid_request_error",
        "upstream_429": "rate_limit_exceeded",
    }
    assert problem["error"]["type"] == upstream_types.get(case, code)
    assert problem["error"]["code"] == code
    expected_param = ".".join(map(str, problem["errors"][0]["loc"][1:])) if status == 422 else None
    assert problem["error"]["param"] == (expected_param or None)
    assert int(response.headers["content-length"]) == len(response.content)
    if status == 429:
        assert response.headers["retry-after"] == "1"


async def test_wire_validation_error_names_the_param(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        response = await client.post(WIRE, json=chat_body(model="gpt-4o-mini", max_tokens=5000))
    error = assert_problem(response, 422, "validation_error")["error"]
    assert error["param"] == "max_tokens"
    assert "OPENAI_MAX_TOKENS" in error["message"]


async def test_wire_503_carries_an_openai_error_object_but_chat_errors_do_not(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm(openai_api_key=None) as client:
        wire = [
            await client.post(WIRE, json=chat_body(model="gpt-4o-mini")),
            await client.post(WIRE, json=chat_body(model="gpt-4o-mini", stream=True)),
            await client.get(MODELS),
            await client.get(f"{MODELS}/gpt-4o-mini"),
        ]
        chat = await client.post(CHAT, json=chat_body())
    for response in wire:
        problem = assert_problem(response, 503, "llm_not_configured")
        assert problem["error"] == {
            "message": "OPENAI_API_KEY is not set on the LLM service.",
            "type": "llm_not_configured",
            "param": None,
            "code": "llm_not_configured",
        }
    assert set(assert_problem(chat, 503, "llm_not_configured")) == _PROBLEM_FIELDS


async def test_every_documented_error_is_a_problem(llm: ClientFactory) -> None:
    async with llm() as client:
        document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert not {"HTTPValidationError", "ValidationError"} & set(schemas)
    problem = schemas["Problem"]
    documented = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] not in "45" or (path, status) == ("/health/ready", "503"):
                    continue  # readiness answers 503 with its own report, not a problem
                documented += 1
                where = f"{method.upper()} {path} {status}"
                ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                schema = schemas[ref.removeprefix("#/components/schemas/")]
                assert set(problem["properties"]) <= set(schema["properties"]), where
                assert set(problem["required"]) <= set(schema.get("required", [])), where
                for content in response["content"].values():
                    assert content["schema"]["$ref"] == ref, where
                if path.startswith("/api/v1/openai/v1/"):
                    assert "error" in schema["required"], where
    assert documented >= 15


async def test_unconfigured_service_is_not_ready_and_answers_503(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm(openai_api_key=None) as client:
        live = await client.get("/health")
        ready = await client.get("/health/ready")
        chat = await client.post(CHAT, json=chat_body())
        stream = await client.post(CHAT, json=chat_body(stream=True))
        wire = await client.post(WIRE, json=chat_body(model="gpt-4o-mini"))
        models = await client.get("/api/v1/openai/v1/models")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["code"] == "llm_not_configured"
    for response in (chat, stream, wire, models):
        assert_problem(response, 503, "llm_not_configured")
    assert upstream.call_count == 0


async def test_blank_key_counts_as_unset(llm: ClientFactory) -> None:
    async with llm(openai_api_key="  ") as client:
        ready = await client.get("/health/ready")
    assert ready.json()["code"] == "llm_not_configured"


async def test_startup_check_reports_a_rejected_key_in_readiness(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.api_key = "sk-the-right-one"
    async with llm(openai_validate_on_startup=True) as client:
        ready = await client.get("/health/ready")
        chat = await client.post(CHAT, json=chat_body())
    assert ready.status_code == 503
    assert ready.json()["code"] == "upstream_auth_failed"
    assert_problem(chat, 502, "upstream_auth_failed")
    assert [call.path for call in upstream.calls] == ["/v1/models", "/v1/chat/completions"]
    assert API_KEY not in ready.text + chat.text


async def test_startup_check_accepts_a_good_key(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm(openai_validate_on_startup=True) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert upstream.call_count == 1


async def test_startup_check_with_the_upstream_down_still_starts_ready(
    llm: ClientFactory,
) -> None:
    async with llm(openai_validate_on_startup=True, openai_base_url="http://127.0.0.1:9/v1") as c:
        ready = await c.get("/health/ready")
    assert ready.status_code == 200


async def test_no_startup_check_by_default(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    async with llm() as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert upstream.call_count == 0


async def test_one_log_line_per_upstream_call_without_text_or_key(
    llm: ClientFactory, upstream: OpenAIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_prompt = "my-very-private-prompt"
    upstream.script(Fault.error(500), Fault.delay(0), Fault.error(401))
    async with llm() as client:
        ok = await client.post(
            CHAT, json=chat_body(messages=[{"role": "user", "content": secret_prompt}])
        )
        rejected = await client.post(CHAT, json=chat_body(stream=True))
        streamed = await client.post(
            WIRE,
            json=chat_body(
                model="gpt-4o-mini", stream=True, stream_options={"include_usage": True}
            ),
        )
    assert ok.status_code == 200
    assert rejected.status_code == 502
    assert streamed.status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    calls = [line for line in lines if line["message"] == "upstream call"]
    assert [(c["route"], c["stream"], c["attempts"], c["outcome"]) for c in calls] == [
        ("chat", False, 2, "ok"),
        ("chat", True, 1, "upstream_auth_failed"),
        ("wire", True, 1, "ok"),
    ]
    assert calls[0]["total_tokens"] == ok.json()["usage"]["total_tokens"]
    assert calls[2]["completion_tokens"] == len(upstream.pieces)
    assert all(c["model"] == "gpt-4o-mini" and c["latency_ms"] > 0 for c in calls)
    assert all(c["request_id"] for c in calls)
    everything = "\n".join(json.dumps(line) for line in lines)
    assert secret_prompt not in everything
    assert "stand-in speaking" not in everything
    assert API_KEY not in everything


async def test_the_key_never_reaches_a_client(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    # The stand-in echoes a rejected key in its error message, as OpenAI does.
    upstream.script(
        Fault.error(400, message=f"Bad request made with {API_KEY}"),
        Fault.error(404, message="No such model for key sk-proj-abcdefghijkl"),
    )
    async with llm() as client:
        responses = [
            await client.post(CHAT, json=chat_body()),
            await client.post(CHAT, json=chat_body()),
            await client.get("/health/ready"),
            await client.get("/openapi.json"),
        ]
    assert responses[0].json()["detail"] == "Upstream: Bad request made with [redacted]"
    assert "sk-proj-abcdefghijkl" not in responses[1].text
    for response in responses:
        assert API_KEY not in response.text
        assert API_KEY not in str(response.headers)
