"""The LLM service's metrics: calls, attempts and retries, tokens equal to the upstream's usage,
time to first chunk."""

from llm_testkit import ClientFactory, chat_body

from devstack.openai_standin import Fault, OpenAIStandin
from testkit.metrics import value


async def test_calls_attempts_retries_and_tokens(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.error(500), Fault.error(429, retry_after=0.01))
    async with llm(openai_allowed_models="gpt-4o-mini,gpt-4o") as client:
        before = (await client.get("/metrics")).text
        plain = await client.post("/api/v1/openai/chat", json=chat_body(model="gpt-4o"))
        streamed = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
        text = (await client.get("/metrics")).text
    assert plain.status_code == streamed.status_code == 200
    usage = plain.json()["usage"]

    def added(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    assert added("llm_upstream_calls_total", route="chat", model="gpt-4o", outcome="ok") == 1
    assert added("llm_upstream_retries_total", route="chat", model="gpt-4o") == 2
    for status, count in (("500", 1), ("429", 1), ("200", 1)):
        assert added("llm_upstream_attempts_total", model="gpt-4o", status=status) == count
    assert added("llm_tokens_total", model="gpt-4o", kind="prompt") == usage["prompt_tokens"]
    assert (
        added("llm_tokens_total", model="gpt-4o", kind="completion") == usage["completion_tokens"]
    )
    assert added("llm_tokens_total", model="gpt-4o-mini", kind="completion") > 0
    assert added("llm_time_to_first_chunk_seconds_count", route="chat", model="gpt-4o-mini") == 1
    assert added("llm_upstream_call_duration_seconds_count", route="chat") == 2
    assert added("http_requests_total", route="/api/v1/openai/chat", status="200") == 2


async def test_a_failed_call_counts_its_error_code(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.error(400, message="bad"))
    async with llm() as client:
        before = (await client.get("/metrics")).text
        response = await client.post("/api/v1/openai/chat", json=chat_body())
        text = (await client.get("/metrics")).text
    assert response.status_code == 400
    outcome = {"route": "chat", "outcome": "upstream_bad_request"}
    assert (
        value(text, "llm_upstream_calls_total", **outcome)
        - value(before, "llm_upstream_calls_total", **outcome)
        == 1
    )
