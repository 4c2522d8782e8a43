"""Rate limiting of the LLM routes at the gateway, end to end, in memory and through Redis.

Gateways run as their own processes in front of the session stack's audits and llm.
"""

import random

import httpx

from tests.e2e_stack import Stack, StartService, gateway_env

LIMIT = 5
MODELS = "/api/v1/openai/v1/models"


def _gateway_env(stack: Stack, **extra: str) -> dict[str, str]:
    return gateway_env(
        stack.audits.url, stack.llm.url, RATE_LIMIT_LLM_PER_MINUTE=str(LIMIT), **extra
    )


def _client_ip() -> str:
    # Unique per test run, so that counters shared through Redis never collide.
    return f"198.51.100.{random.randint(1, 254)}"


def _assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1


async def test_memory_limit_per_client_ip_llm_routes_only(
    stack: Stack, start_service: StartService
) -> None:
    gateway = start_service("gateway", _gateway_env(stack))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for _ in range(LIMIT):
            assert (await client.get(MODELS)).status_code == 200
        _assert_rate_limited(await client.get(MODELS))
        # An untrusted client cannot escape its bucket by claiming another address.
        spoofed = await client.get(MODELS, headers={"X-Forwarded-For": _client_ip()})
        _assert_rate_limited(spoofed)
        # The audits routes are not limited.
        for _ in range(LIMIT * 2):
            assert (await client.get("/api/v1/audits", params={"limit": 1})).status_code == 200


async def test_forwarded_for_is_trusted_only_from_configured_proxies(
    stack: Stack, start_service: StartService
) -> None:
    gateway = start_service("gateway", _gateway_env(stack, TRUSTED_PROXIES="127.0.0.1"))
    first, second = "203.0.113.10", "203.0.113.20"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for _ in range(LIMIT):
            response = await client.get(MODELS, headers={"X-Forwarded-For": first})
            assert response.status_code == 200
        _assert_rate_limited(await client.get(MODELS, headers={"X-Forwarded-For": first}))
        other = await client.get(MODELS, headers={"X-Forwarded-For": second})
        assert other.status_code == 200


async def test_zero_disables_the_limit(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        for _ in range(LIMIT * 3):
            assert (await client.get(MODELS)).status_code == 200


async def test_redis_limit_is_shared_by_gateway_replicas(
    stack: Stack, start_service: StartService, redis_url: str
) -> None:
    env = _gateway_env(stack, REDIS_URL=redis_url, TRUSTED_PROXIES="127.0.0.1")
    replicas = [start_service("gateway", env), start_service("gateway", env)]
    client_ip = {"X-Forwarded-For": _client_ip()}
    async with httpx.AsyncClient(timeout=10, headers=client_ip) as client:
        statuses = [
            (await client.get(f"{replicas[attempt % 2].url}{MODELS}")).status_code
            for attempt in range(LIMIT)
        ]
        assert statuses == [200] * LIMIT
        for replica in replicas:
            _assert_rate_limited(await client.get(f"{replica.url}{MODELS}"))
