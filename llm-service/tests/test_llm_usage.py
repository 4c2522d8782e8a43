"""Usage on streams (always asked of the upstream, shown only to clients who asked) and the
usage report the gateway asks for to count a key's tokens."""

import pytest
from llm_testkit import ClientFactory, chat_body, sse_events

from devstack.openai_standin import OpenAIStandin
from llm_service.usage import total_tokens

WIRE = "/api/v1/openai/v1/chat/completions"
EMBEDDINGS = "/api/v1/openai/v1/embeddings"
CHAT = "/api/v1/openai/chat"
RESPONSES = "/api/v1/openai/v1/responses"
REPORT = {"X-Usage-Report": "tokens"}


def usage_chunks(text: str) -> list[str]:
    return [data for _, data in sse_events(text) if '"usage":{' in data]


async def test_a_stream_asks_for_usage_and_hides_it_from_a_client_that_did_not(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        response = await client.post(WIRE, json=chat_body(stream=True))
    assert response.status_code == 200
    assert upstream.calls[0].json()["stream_options"] == {"include_usage": True}
    assert usage_chunks(response.text) == []
    assert response.text.endswith("data: [DONE]\n\n")
    assert "usage-tokens" not in response.text


async def test_a_client_that_asked_for_usage_gets_it_unchanged(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        body = chat_body(stream=True, stream_options={"include_usage": True})
        response = await client.post(WIRE, json=body)
    assert len(usage_chunks(response.text)) == 1


@pytest.mark.parametrize("asked", [True, False])
async def test_the_gateway_gets_a_stream_s_tokens_as_a_last_comment(
    llm: ClientFactory, upstream: OpenAIStandin, asked: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if asked else {}
    async with llm() as client:
        response = await client.post(WIRE, json=chat_body(stream=True, **options), headers=REPORT)
    *_, last = response.text.rstrip("\n").split("\n\n")
    assert last.startswith(": usage-tokens ")
    assert int(last.split()[-1]) > 0
    assert len(usage_chunks(response.text)) == (1 if asked else 0)


async def test_json_responses_report_tokens_in_a_header(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        plain = await client.post(WIRE, json=chat_body())
        reported = await client.post(WIRE, json=chat_body(), headers=REPORT)
        embedded = await client.post(
            EMBEDDINGS, json={"model": "gpt-4o-mini", "input": "x"}, headers=REPORT
        )
        own_stream = await client.post(CHAT, json=chat_body(stream=True), headers=REPORT)
    assert "x-usage-tokens" not in plain.headers
    assert int(reported.headers["x-usage-tokens"]) == reported.json()["usage"]["total_tokens"]
    assert int(embedded.headers["x-usage-tokens"]) == embedded.json()["usage"]["total_tokens"]
    assert own_stream.text.rstrip("\n").split("\n\n")[-1].startswith(": usage-tokens ")


def test_total_tokens_of_every_usage_shape() -> None:
    assert total_tokens({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == 7
    assert total_tokens({"prompt_tokens": 5}) == 5
    assert total_tokens({"input_tokens": 2, "output_tokens": 9}) == 11
    assert total_tokens({}) == 0


async def test_the_responses_api_reports_its_tokens_too(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    body = {"model": "gpt-4o-mini", "input": "Say hello."}
    async with llm() as client:
        plain = await client.post(RESPONSES, json=body, headers=REPORT)
        streamed = await client.post(RESPONSES, json={**body, "stream": True}, headers=REPORT)
    usage = plain.json()["usage"]
    assert int(plain.headers["x-usage-tokens"]) == total_tokens(usage) > 0
    last = streamed.text.rstrip("\n").split("\n\n")[-1]
    assert last.startswith(": usage-tokens ")
    assert int(last.split()[-1]) > 0
