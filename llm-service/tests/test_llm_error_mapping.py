"""Every upstream status of the documented mapping, on every OpenAI-compatible POST route:
the client's status and problem code, and OpenAI's `error` object keeping the upstream's
`type`, `code` and `param` exactly where the client can act on them (400 and 429)."""

from typing import Any

import pytest
from llm_testkit import ClientFactory

from devstack.openai_standin import Fault, OpenAIStandin
from testkit.checks import assert_problem

ROUTES: dict[str, dict[str, Any]] = {
    "/api/v1/openai/v1/chat/completions": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/api/v1/openai/v1/responses": {"model": "gpt-4o-mini", "input": "hi"},
    "/api/v1/openai/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
}
# upstream status → (our status, our code, whether the upstream's error fields are kept)
MAPPING = {
    400: (400, "upstream_bad_request", True),
    401: (502, "upstream_auth_failed", False),
    403: (502, "upstream_auth_failed", False),
    404: (400, "upstream_bad_request", True),
    408: (504, "upstream_timeout", False),
    409: (502, "upstream_error", False),
    422: (400, "upstream_bad_request", True),
    429: (429, "upstream_rate_limited", True),
    500: (502, "upstream_error", False),
    502: (502, "upstream_error", False),
    503: (502, "upstream_error", False),
    504: (502, "upstream_error", False),
}


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("upstream_status", MAPPING)
async def test_the_documented_mapping_with_the_upstreams_error_fields(
    llm: ClientFactory, upstream: OpenAIStandin, path: str, upstream_status: int
) -> None:
    status, code, kept = MAPPING[upstream_status]
    upstream.script(
        Fault.error(upstream_status, retry_after=0, code="upstream_own_code", param="input")
    )
    async with llm(
        openai_max_retries=0, openai_allowed_models=("text-embedding-3-small",)
    ) as client:
        response = await client.post(path, json=ROUTES[path])
    problem = assert_problem(response, status, code)
    error = problem["error"]
    assert error["message"] == problem["detail"]
    if kept:
        assert (error["code"], error["param"]) == ("upstream_own_code", "input")
        assert error["type"] in {"invalid_request_error", "rate_limit_exceeded"}
    else:
        assert error == {"message": problem["detail"], "type": code, "param": None, "code": code}
    if status == 429:
        assert response.headers["retry-after"] == "1"
    assert upstream.call_count == 1
