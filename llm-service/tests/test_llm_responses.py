"""`POST /api/v1/openai/v1/responses`: the Responses API passed through (plain and streamed),
with the allowlist, the token cap, the retry policy (a stream only before its first byte),
error fidelity and the log line, against the stand-in with exact upstream call counts."""

import json
from typing import Any

import orjson
import pytest
from llm_testkit import ClientFactory, sse_events

from devstack.openai_standin import Fault, OpenAIStandin
from testkit.checks import assert_problem

RESPONSES = "/api/v1/openai/v1/responses"


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": "Say hello.", **extra}


def _typed_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, orjson.loads(data)) for name, data in sse_events(text)]


async def test_a_response_comes_back_as_the_upstream_sent_it(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    body = _body(instructions="Be brief.", store=False, metadata={"k": "v"})
    async with llm() as client:
        response = await client.post(RESPONSES, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "response"
    assert answer["output"][0]["content"][0]["text"] == "".join(upstream.pieces)
    assert answer["usage"]["output_tokens"] == len(upstream.pieces)
    assert upstream.calls[0].path == "/v1/responses"
    assert upstream.calls[0].json() == body


async def test_the_default_model_is_named_when_none_is(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm(openai_model="gpt-4o") as client:
        response = await client.post(RESPONSES, json={"input": "hi"})
    assert response.status_code == 200, response.text
    assert upstream.calls[0].json() == {"input": "hi", "model": "gpt-4o"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_body(model="gpt-5"), "model"),
        (_body(max_output_tokens=10_000), "max_output_tokens"),
        (_body(input=""), "input"),
        (_body(input=[]), "input"),
        (_body(input=["not an item"]), "input"),
        (_body(input=[{"role": "user", "content": [{"type": "input_text"}]}]), "input"),
        (_body(input=[{"role": "user", "content": ["a bare string"]}]), "input"),
        (_body(stream="yes"), "stream"),
    ],
)
async def test_guards_and_malformed_input_are_422(
    llm: ClientFactory, upstream: OpenAIStandin, body: dict[str, Any], param: str
) -> None:
    async with llm(openai_max_tokens=1000) as client:
        response = await client.post(RESPONSES, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert problem["error"]["param"].split(".")[0] == param
    assert upstream.call_count == 0


async def test_an_upstream_400_keeps_its_code_and_is_not_retried(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.error(400, code="context_length_exceeded", param="input"))
    async with llm() as client:
        response = await client.post(RESPONSES, json=_body(stream=True))
    problem = assert_problem(response, 400, "upstream_bad_request")
    assert (problem["error"]["code"], problem["error"]["param"]) == (
        "context_length_exceeded",
        "input",
    )
    assert upstream.call_count == 1


async def test_stream_events_pass_through_unchanged(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        response = await client.post(RESPONSES, json=_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _typed_events(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[0][0] == "response.created"
    assert events[-1][0] == "response.completed"
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert deltas == upstream.pieces
    assert "[DONE]" not in response.text


async def test_a_stream_is_retried_before_its_first_byte(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.error(503), Fault.drop(), Fault.drop_after(0))
    async with llm() as client:
        response = await client.post(RESPONSES, json=_body(stream=True))
    assert response.status_code == 200
    assert _typed_events(response.text)[-1][0] == "response.completed"
    assert upstream.call_count == 4


async def test_a_stream_is_not_retried_after_it_began_and_ends_with_an_error_event(
    llm: ClientFactory, upstream: OpenAIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.chunk_delay = 0.01
    upstream.script(Fault.drop_after(3))
    async with llm() as client:
        response = await client.post(RESPONSES, json=_body(stream=True, input="private-text"))
    assert response.status_code == 200
    events = _typed_events(response.text)
    assert [name for name, _ in events[:3]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    name, error = events[3]
    assert name == "error"
    assert error == {
        "type": "error",
        "code": "upstream_error",
        "message": "Could not reach the upstream API, or it dropped the connection.",
        "param": None,
        "sequence_number": 3,
    }
    assert len(events) == 4
    assert upstream.call_count == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    calls = [line for line in lines if line["message"] == "upstream call"]
    assert [(c["route"], c["stream"], c["outcome"]) for c in calls] == [
        ("responses", True, "upstream_error")
    ]
    assert "private-text" not in json.dumps(lines)


async def test_one_log_line_with_the_usage_of_each_call(
    llm: ClientFactory, upstream: OpenAIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    async with llm() as client:
        plain = await client.post(RESPONSES, json=_body())
        streamed = await client.post(RESPONSES, json=_body(stream=True))
    assert plain.status_code == streamed.status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    calls = [line for line in lines if line["message"] == "upstream call"]
    usage = plain.json()["usage"]
    assert [
        (c["route"], c["stream"], c["prompt_tokens"], c["completion_tokens"], c["outcome"])
        for c in calls
    ] == [
        ("responses", stream, usage["input_tokens"], usage["output_tokens"], "ok")
        for stream in (False, True)
    ]
