"""The retry policy and how upstream failures reach the client, with exact upstream call
counts and timings."""

import email.utils
import time
from datetime import UTC, datetime, timedelta

import httpx
import httpx2
import orjson
import pytest
from llm_testkit import ClientFactory, chat_body, sse_events

from devstack.openai_standin import Fault, OpenAIStandin
from llm_service.chat.exceptions import UpstreamStatusError
from llm_service.chat.retry import retry_after
from testkit.checks import assert_problem

REPLY = "Hello! This is the OpenAI stand-in speaking."


async def test_plain_chat_answers_in_our_shape(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body(temperature=0.5))
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == {"role": "assistant", "content": REPLY}
    assert body["model"] == "gpt-4o-mini"
    assert body["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["id"].startswith("chatcmpl-")
    assert upstream.call_count == 1
    sent = upstream.calls[0].json()
    assert sent == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0.5,
    }


async def test_429_waits_at_least_retry_after(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    upstream.script(Fault.error(429, retry_after=1))
    async with llm() as client:
        started = time.monotonic()
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert upstream.call_count == 2
    assert 1.0 <= elapsed < 3.0


async def test_429_honours_retry_after_ms(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    upstream.script(Fault.error(429, retry_after_ms=400, retry_after=30))
    async with llm() as client:
        started = time.monotonic()
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert upstream.call_count == 2
    assert 0.4 <= elapsed < 2.0


async def test_429_after_retries_is_429_with_retry_after(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(*[Fault.error(429, retry_after=0.1)] * 3)
    async with llm(openai_max_retries=2) as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
    assert_problem(response, 429, "upstream_rate_limited")
    assert response.headers["retry-after"] == "1"
    assert upstream.call_count == 3


async def test_retry_after_beyond_the_budget_gives_up_at_once(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.error(429, retry_after=7))
    async with llm(openai_retry_max_time=2) as client:
        started = time.monotonic()
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        elapsed = time.monotonic() - started
    assert_problem(response, 429, "upstream_rate_limited")
    assert response.headers["retry-after"] == "7"
    assert upstream.call_count == 1
    assert elapsed < 2  # no sleep toward the 2 s budget before giving up


async def test_5xx_then_success(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    upstream.script(Fault.error(503))
    async with llm() as client:
        started = time.monotonic()
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert upstream.call_count == 2
    assert elapsed < 1.5  # the first full-jitter wait is at most 0.5 s


async def test_5xx_forever_is_502_after_max_retries_plus_one_calls(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(*[Fault.error(500)] * 10)
    async with llm(openai_max_retries=3) as client:
        started = time.monotonic()
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        elapsed = time.monotonic() - started
    assert_problem(response, 502, "upstream_error")
    assert upstream.call_count == 4
    assert elapsed < 0.5 + 1 + 2 + 1.5


@pytest.mark.parametrize("status", [408, 409, 502, 504])
async def test_each_retryable_status_is_retried(
    llm: ClientFactory, upstream: OpenAIStandin, status: int
) -> None:
    upstream.script(Fault.error(status))
    async with llm(openai_max_retries=1) as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
    assert response.status_code == 200
    assert upstream.call_count == 2


async def test_the_time_budget_bounds_all_attempts(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(*[Fault.error(500)] * 50)
    async with llm(openai_max_retries=40, openai_retry_max_time=1.0) as client:
        started = time.monotonic()
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        elapsed = time.monotonic() - started
    assert_problem(response, 502, "upstream_error")
    assert elapsed < 2.0
    assert 2 <= upstream.call_count < 40


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_key_is_502_after_exactly_one_call(
    llm: ClientFactory, upstream: OpenAIStandin, status: int
) -> None:
    upstream.script(Fault.error(status))
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
    assert_problem(response, 502, "upstream_auth_failed")
    assert upstream.call_count == 1


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_upstream_client_errors_are_400_after_one_call(
    llm: ClientFactory, upstream: OpenAIStandin, status: int
) -> None:
    upstream.script(Fault.error(status, message="Invalid value for 'seed'."))
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
    body = assert_problem(response, 400, "upstream_bad_request")
    assert "Invalid value for 'seed'." in str(body["detail"])
    assert upstream.call_count == 1


async def test_a_hang_is_504_after_each_attempt_timed_out(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.hang(5), Fault.hang(5))
    async with llm(openai_timeout=0.3, openai_max_retries=1) as client:
        started = time.monotonic()
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        elapsed = time.monotonic() - started
    assert_problem(response, 504, "upstream_timeout")
    assert upstream.call_count == 2
    assert 0.6 <= elapsed < 2.5


async def test_a_dropped_connection_is_retried(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    upstream.script(Fault.drop())
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
    assert response.status_code == 200
    assert upstream.call_count == 2


async def test_connection_failures_forever_are_502(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(*[Fault.drop()] * 5)
    async with llm(openai_max_retries=2) as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
    assert_problem(response, 502, "upstream_error")
    assert upstream.call_count == 3


async def test_an_unreachable_upstream_is_502(llm: ClientFactory) -> None:
    async with llm(
        openai_base_url="http://127.0.0.1:9/v1", openai_max_retries=1, openai_retry_max_time=1
    ) as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
    assert_problem(response, 502, "upstream_error")


async def test_malformed_json_is_502_without_retry(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.malformed())
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        wire = await client.post(
            "/api/v1/openai/v1/chat/completions", json=chat_body(model="gpt-4o-mini")
        )
    assert_problem(response, 502, "upstream_error")
    assert upstream.call_count == 2
    assert wire.status_code == 200  # the fault was used up by the first call


# -- streams -----------------------------------------------------------------------------


async def test_stream_is_one_event_per_delta_then_usage_then_done(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == ("message", "[DONE]")
    *deltas, end = [orjson.loads(data) for _, data in events[:-1]]
    assert "".join(d["delta"] for d in deltas) == REPLY
    assert len(deltas) == len(upstream.pieces)
    assert end["finish_reason"] == "stop"
    assert end["usage"]["completion_tokens"] == len(upstream.pieces)
    # Exactly the documented `Usage`, as the JSON answer has: OpenAI's *_details stay out.
    assert set(end["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert end["id"] == deltas[0]["id"]
    sent = upstream.calls[0].json()
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "fault", [Fault.drop(), Fault.drop_after(0), Fault.error(500)], ids=["drop", "empty", "500"]
)
async def test_stream_failing_before_its_first_chunk_is_retried(
    llm: ClientFactory, upstream: OpenAIStandin, fault: Fault
) -> None:
    upstream.script(fault)
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == ("message", "[DONE]")
    assert all(name == "message" for name, _ in events)
    assert upstream.call_count == 2


async def test_stream_failing_after_its_first_chunk_ends_with_an_error_event(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.drop_after(3))
    async with llm() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["message", "message", "error"]
    problem = orjson.loads(events[-1][1])
    assert problem["code"] == "upstream_error"
    assert problem["status"] == 502
    assert problem["type"] == "/problems/upstream_error"
    assert problem["instance"] == "/api/v1/openai/chat"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert upstream.call_count == 1


async def test_stream_failing_before_its_first_chunk_forever_is_a_plain_problem(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(*[Fault.drop_after(0)] * 3)
    async with llm(openai_max_retries=2) as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
    assert_problem(response, 502, "upstream_error")
    assert upstream.call_count == 3


async def test_stream_stalling_mid_way_ends_with_a_timeout_event(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.chunk_delay = 1.0
    async with llm(openai_timeout=0.3) as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
    events = sse_events(response.text)
    assert events[-1][0] == "error"
    assert orjson.loads(events[-1][1])["code"] == "upstream_timeout"
    assert upstream.call_count == 1


async def test_wire_stream_failing_mid_way_ends_with_an_openai_style_error_event(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.drop_after(2))
    body = chat_body(model="gpt-4o-mini", stream=True)
    async with llm() as client:
        response = await client.post("/api/v1/openai/v1/chat/completions", json=body)
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["message", "message", "error"]
    error = orjson.loads(events[-1][1])
    assert error["code"] == "upstream_error"
    assert error["error"]["code"] == "upstream_error"
    assert upstream.call_count == 1


async def test_wire_stream_is_the_upstream_bytes(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    body = chat_body(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True})
    async with llm() as client:
        ours = await client.post("/api/v1/openai/v1/chat/completions", json=body)
    async with httpx.AsyncClient() as direct:
        theirs = await direct.post(
            f"{upstream.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {upstream.api_key}"},
        )
    ours_events = [orjson.loads(d) for _, d in sse_events(ours.text)[:-1]]
    theirs_events = [orjson.loads(d) for _, d in sse_events(theirs.text)[:-1]]
    for event in ours_events + theirs_events:
        event.pop("id")
        event.pop("created")
    assert ours_events == theirs_events
    assert "prompt_tokens_details" in ours_events[-1]["usage"]
    assert ours.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_openai_and_http_headers(
    headers: dict[str, str], seconds: float | None
) -> None:
    error = UpstreamStatusError(429, httpx2.Headers(headers), {})
    assert retry_after(error) == seconds


def test_retry_after_accepts_an_http_date() -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    error = UpstreamStatusError(503, httpx2.Headers({"retry-after": when}), {})
    wait = retry_after(error)
    assert wait is not None
    assert 28 <= wait <= 30


async def test_streams_reuse_their_upstream_connection(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        for _ in range(5):
            response = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
            assert sse_events(response.text)[-1] == ("message", "[DONE]")
            plain = await client.post("/api/v1/openai/chat", json=chat_body())
            assert plain.status_code == 200
    assert upstream.call_count == 10
    # Read to its end, each stream hands its connection back: one TCP connect, not one each.
    assert upstream.connection_count == 1
