import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_network

import pytest
from gateway_harness import running_gateway

from gateway.proxy.headers import client_ip
from gateway.ratelimit import MemoryRateLimiter, RedisRateLimiter
from testkit.debian import ensure_command

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


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port, never the machine's own."""
    binary = ensure_command("redis-server", "redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


async def test_redis_limiter_is_shared_between_instances(redis_server: str) -> None:
    first, second = RedisRateLimiter(redis_server, limit=3), RedisRateLimiter(redis_server, limit=3)
    try:
        decisions = [await limiter.hit("llm:1.2.3.4") for limiter in (first, second, first, second)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert 1 <= decisions[-1].retry_after <= 60
        assert (await second.hit("llm:5.6.7.8")).allowed
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_limits_the_gateway_and_fails_open(redis_server: str) -> None:
    async with running_gateway(rate_limit_llm_per_minute=1, redis_url=redis_server) as gateway:
        assert (await gateway.get("/api/v1/openai/v1/models")).status_code == 200
        assert (await gateway.get("/api/v1/openai/v1/models")).status_code == 429
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    async with running_gateway(rate_limit_llm_per_minute=1, redis_url=nowhere) as gateway:
        for _ in range(3):
            assert (await gateway.get("/api/v1/openai/v1/models")).status_code == 200
