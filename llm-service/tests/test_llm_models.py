"""`GET /api/v1/openai/v1/models[/{id}]`: the upstream's entries filtered by the allowlist,
cached; the allowlist alone only when the upstream has no models endpoint."""

import pytest
from llm_testkit import ClientFactory

from devstack.openai_standin import Fault, OpenAIStandin
from testkit.checks import assert_problem

MODELS = "/api/v1/openai/v1/models"
ALLOWED = ("gpt-4o", "gpt-5-unreleased", "text-embedding-3-small")


async def test_models_are_the_upstreams_entries_of_the_allowlist(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm(openai_allowed_models=ALLOWED) as client:
        listed = await client.get(MODELS)
        one = await client.get(f"{MODELS}/gpt-4o")
        unlisted = await client.get(f"{MODELS}/gpt-4.1-mini")
        unknown = await client.get(f"{MODELS}/gpt-5-unreleased")
    assert listed.status_code == 200, listed.text
    assert listed.json() == {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 1715367049, "owned_by": "system"}
            for name in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
        ],
    }
    assert one.json() == listed.json()["data"][1]
    # Offered upstream but not allowlisted, and allowlisted but not offered: both unknown here.
    assert_problem(unlisted, 404, "not_found")
    assert_problem(unknown, 404, "not_found")
    assert [call.path for call in upstream.calls] == ["/v1/models"]


async def test_the_model_list_is_cached(llm: ClientFactory, upstream: OpenAIStandin) -> None:
    async with llm() as client:
        answers = [await client.get(MODELS) for _ in range(3)]
        answers.append(await client.get(f"{MODELS}/gpt-4o-mini"))
    assert [answer.status_code for answer in answers] == [200] * 4
    assert upstream.call_count == 1


async def test_without_a_models_endpoint_the_allowlist_alone_is_listed(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    upstream.serves_models = False
    async with llm(openai_allowed_models=ALLOWED) as client:
        listed = await client.get(MODELS)
        one = await client.get(f"{MODELS}/gpt-5-unreleased")
    assert [entry["id"] for entry in listed.json()["data"]] == ["gpt-4o-mini", *ALLOWED]
    assert one.json() == {
        "id": "gpt-5-unreleased",
        "object": "model",
        "created": 0,
        "owned_by": "openai",
    }
    assert upstream.call_count == 1


@pytest.mark.parametrize(
    ("faults", "status", "code", "calls"),
    [
        ([Fault.error(500), Fault.delay(0)], 200, None, 2),
        ([Fault.error(503)] * 4, 502, "upstream_error", 4),
        ([Fault.error(401)], 502, "upstream_auth_failed", 1),
    ],
    ids=["retried", "exhausted", "key_rejected"],
)
async def test_the_model_list_follows_the_retry_policy_and_error_mapping(
    llm: ClientFactory,
    upstream: OpenAIStandin,
    faults: list[Fault],
    status: int,
    code: str | None,
    calls: int,
) -> None:
    upstream.script(*faults)
    async with llm() as client:
        response = await client.get(MODELS)
    if code is None:
        assert response.status_code == status
    else:
        problem = assert_problem(response, status, code)
        assert problem["error"]["code"] == code
    assert upstream.call_count == calls
