"""`POST /api/v1/openai/v1/embeddings`: the allowlist, the retry policy, error fidelity and
the log line, against the stand-in with exact upstream call counts."""

import json
import time
from typing import Any

import pytest
from llm_testkit import API_KEY, ClientFactory

from devstack.openai_standin import Fault, OpenAIStandin
from testkit.checks import assert_problem

EMBEDDINGS = "/api/v1/openai/v1/embeddings"
MODEL = "text-embedding-3-small"


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": ["first text", "second text"], **extra}


async def test_embeddings_come_back_as_the_upstream_sent_them(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm(openai_allowed_models=(MODEL,)) as client:
        response = await client.post(EMBEDDINGS, json=_body(dimensions=8, user="u-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [len(item["embedding"]) for item in body["data"]] == [8, 8]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    sent = upstream.calls[0]
    assert sent.path == "/v1/embeddings"
    assert sent.json() == _body(dimensions=8, user="u-1")
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"input": "hi"}, ["body", "model"]),
        (_body(model="gpt-4o"), ["body", "model"]),
        (_body(input=[]), ["body", "input"]),
        (_body(input=""), ["body", "input"]),
        (_body(input=["x"] * 2049), ["body"]),
        (_body(encoding_format="int8"), ["body", "encoding_format"]),
        (_body(dimensions=0), ["body", "dimensions"]),
    ],
)
async def test_embedding_guards_are_422(
    llm: ClientFactory, upstream: OpenAIStandin, body: dict[str, Any], loc: list[object]
) -> None:
    async with llm(openai_allowed_models=(MODEL,)) as client:
        response = await client.post(EMBEDDINGS, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"][0]["loc"][: len(loc)] == loc
    assert problem["error"]["code"] == "validation_error"
    assert upstream.call_count == 0


async def test_an_embedding_model_needs_its_allowlist_entry(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        response = await client.post(EMBEDDINGS, json=_body())
    problem = assert_problem(response, 422, "validation_error")
    assert problem["error"]["param"] == "model"
    assert upstream.call_count == 0


async def test_embeddings_are_retried_on_429_after_its_retry_after(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.error(429, retry_after=0.3), Fault.error(503))
    started = time.monotonic()
    async with llm(openai_allowed_models=(MODEL,)) as client:
        response = await client.post(EMBEDDINGS, json=_body())
    assert response.status_code == 200, response.text
    assert upstream.call_count == 3
    assert time.monotonic() - started >= 0.3


async def test_embeddings_are_not_retried_on_400_and_keep_the_upstreams_code(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    message = "This model's maximum context length is 8192 tokens."
    upstream.script(
        Fault.error(400, message=message, code="context_length_exceeded", param="input")
    )
    async with llm(openai_allowed_models=(MODEL,)) as client:
        response = await client.post(EMBEDDINGS, json=_body())
    problem = assert_problem(response, 400, "upstream_bad_request")
    assert problem["error"] == {
        "message": f"Upstream: {message}",
        "type": "invalid_request_error",
        "param": "input",
        "code": "context_length_exceeded",
    }
    assert upstream.call_count == 1


async def test_a_malformed_embeddings_answer_is_502(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.malformed())
    async with llm(openai_allowed_models=(MODEL,)) as client:
        response = await client.post(EMBEDDINGS, json=_body())
    assert_problem(response, 502, "upstream_error")
    assert upstream.call_count == 1


async def test_one_log_line_per_embeddings_call_without_text(
    llm: ClientFactory, upstream: OpenAIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.script(Fault.error(500))
    async with llm(openai_allowed_models=(MODEL,)) as client:
        response = await client.post(EMBEDDINGS, json=_body(input="my-private-text"))
    assert response.status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    calls = [line for line in lines if line["message"] == "upstream call"]
    assert [(c["route"], c["model"], c["attempts"], c["outcome"]) for c in calls] == [
        ("embeddings", MODEL, 2, "ok")
    ]
    assert calls[0]["prompt_tokens"] == calls[0]["total_tokens"] == 1
    assert "my-private-text" not in "\n".join(json.dumps(line) for line in lines)
