from ipaddress import ip_network

import pytest
from gateway.ratelimit import MemoryRateLimiter, client_ip
from gateway_harness import running_gateway

TRUSTED = (ip_network("10.0.0.0/8"), ip_network("192.0.2.1/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("198.51.100.9", None, "198.51.100.9"),
        ("198.51.100.9", "1.2.3.4", "198.51.100.9"),  # untrusted peer: header ignored
        ("10.1.1.1", "1.2.3.4", "1.2.3.4"),
        ("10.1.1.1", "6.6.6.6, 1.2.3.4, 10.2.2.2", "1.2.3.4"),  # spoofed left part skipped
        ("192.0.2.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"),  # only proxies: the first
        ("10.1.1.1", "", "10.1.1.1"),
    ],
)
def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded_for: str | None, expected: str
) -> None:
    assert client_ip(peer, forwarded_for, TRUSTED) == expected


async def test_memory_limiter_counts_per_key_and_window() -> None:
    limiter = MemoryRateLimiter(limit=2, window=60)
    first, second, third = [await limiter.hit("a") for _ in range(3)]
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.retry_after in range(59, 61)
    assert (await limiter.hit("b")).allowed
    quick = MemoryRateLimiter(limit=1, window=0.05)
    assert (await quick.hit("a")).allowed
    assert not (await quick.hit("a")).allowed


async def test_llm_routes_are_limited_per_client_and_audits_are_not() -> None:
    async with running_gateway(rate_limit_llm_per_minute=2) as gateway:
        statuses = [(await gateway.get("/api/v1/openai/v1/models")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await gateway.post(
            "/api/v1/openai/chat", json={}, headers={"X-Forwarded-For": "9.9.9.9"}
        )
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/problem+json"
        assert limited.json()["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert len(gateway.llm.requests) == 2
        for _ in range(5):
            assert (await gateway.get("/api/v1/audits")).status_code == 200


async def test_trusted_proxy_clients_are_limited_separately() -> None:
    async with running_gateway(
        rate_limit_llm_per_minute=1, trusted_proxies="203.0.113.0/24"
    ) as gateway:

        async def call(client: str) -> int:
            response = await gateway.get(
                "/api/v1/openai/v1/models", headers={"X-Forwarded-For": client}
            )
            return response.status_code

        assert [await call("1.1.1.1"), await call("2.2.2.2"), await call("1.1.1.1")] == [
            200,
            200,
            429,
        ]


async def test_zero_disables_the_limit() -> None:
    async with running_gateway(rate_limit_llm_per_minute=0) as gateway:
        for _ in range(100):
            response = await gateway.get("/api/v1/openai/v1/models")
            assert response.status_code == 200
