"""Access control end to end: gateways with `AUTH_MODE=api_key` as their own processes in
front of the session stack's audits and llm services (and the OpenAI stand-in).

Whether a request reached a service is read from that service's own access log, by the
request's ID: the count is taken on the upstream side."""

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from openai import AsyncOpenAI, AuthenticationError

from devstack.openai_standin import OpenAIStandin
from devstack.processes import ServiceProcess
from gateway.keys import Scope, file_entry, hash_key, new_key
from tests.e2e_stack import STANDIN_API_KEY, Stack, StartService, gateway_env

SCOPES = [scope.value for scope in Scope]
_READ_METHODS = {"get", "head", "options"}


def required(path: str, method: str) -> str:
    if path.startswith("/api/v1/openai"):
        return "llm"
    if method in _READ_METHODS:
        return "audits:read"
    return "audits:write" if method == "post" else "audits:admin"


class KeysFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []

    def add(self, scopes: list[str], **limits: int) -> tuple[str, str]:
        """A new key (its id unique to this run, so Redis counters never collide)."""
        key_id, key = f"client-{uuid4().hex[:12]}", new_key()
        self.entries.append(file_entry(key_id, key, [Scope(s) for s in scopes], limits))
        self.path.write_text(json.dumps(self.entries))
        return key_id, key


def auth_gateway(
    stack: Stack, start_service: StartService, keys: KeysFile, **extra: str
) -> ServiceProcess:
    env = gateway_env(
        stack.audits.url,
        stack.llm.url,
        AUTH_MODE="api_key",
        API_KEYS_FILE=str(keys.path),
        AUTH_FAILURES_PER_MINUTE="0",
        **extra,
    )
    return start_service("gateway", env)


@pytest.fixture
def keys(tmp_path: Path) -> KeysFile:
    return KeysFile(tmp_path / "keys.json")


def reached(stack: Stack, request_id: str) -> bool:
    return any(f'"request_id":"{request_id}"' in stack.log_text(name) for name in ("audits", "llm"))


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method, path)
        for path, item in document["paths"].items()
        if path.startswith("/api/v1/")
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    ]


async def test_every_route_of_the_merged_document_for_each_kind_of_caller(
    stack: Stack, start_service: StartService, keys: KeysFile
) -> None:
    by_scope = {scope: keys.add([scope])[1] for scope in SCOPES}
    gateway = auth_gateway(stack, start_service, keys)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        document = (await client.get("/openapi.json")).json()
        created = await client.post(
            "/api/v1/audits",
            json={"action": "login", "actor": "matrix", "resource_type": "session"},
            headers={"Authorization": f"Bearer {by_scope['audits:write']}"},
        )
        record_id = created.json()["id"]
        cases: list[tuple[str, str, str, str | None, int]] = []
        for method, template in operations(document):
            path = re.sub(r"\{[^}]+\}", record_id, template.replace("{model_id}", "gpt-4o-mini"))
            scope = required(template, method)
            cases.append((method, path, "none", None, 401))
            cases.append((method, path, "unknown", new_key(), 401))
            for other in SCOPES:
                if other != scope:
                    cases.append((method, path, other, by_scope[other], 403))
            cases.append((method, path, scope, by_scope[scope], 0))
        assert len({(m, p) for m, p, *_ in cases}) >= 15
        ids = []
        for method, path, who, key, expected in cases:
            request_id = f"matrix-{uuid4().hex}"
            headers = {"X-Request-ID": request_id}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            response = await client.request(method, path, json={}, headers=headers)
            if expected:
                assert response.status_code == expected, (method, path, who, response.text)
                assert response.json()["code"] == (
                    "unauthorized" if expected == 401 else "forbidden"
                )
            else:
                assert response.status_code not in (401, 403), (method, path, who)
            ids.append((request_id, expected == 0, method, path, who))
    await asyncio.sleep(0.3)
    for request_id, allowed, method, path, who in ids:
        assert reached(stack, request_id) is allowed, (method, path, who)
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


async def test_the_openai_sdk_with_a_platform_key_and_the_service_s_own_key_upstream(
    stack: Stack, start_service: StartService, keys: KeysFile, standin: OpenAIStandin
) -> None:
    key_id, key = keys.add(["llm"])
    gateway = auth_gateway(stack, start_service, keys)
    calls_before = len(standin.calls)
    sdk = AsyncOpenAI(base_url=f"{gateway.url}/api/v1/openai/v1", api_key=key, max_retries=0)
    answer = await sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
    )
    assert answer.choices[0].message.content
    chunks = [
        chunk
        async for chunk in await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    ]
    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    denied = AsyncOpenAI(base_url=sdk.base_url, api_key=new_key(), max_retries=0)
    with pytest.raises(AuthenticationError):
        await denied.models.list()
    await sdk.close()
    await denied.close()
    upstream_calls = standin.calls[calls_before:]
    assert len(upstream_calls) == 2
    for call in upstream_calls:
        assert call.headers["authorization"] == f"Bearer {STANDIN_API_KEY}"
        assert key not in json.dumps(call.headers)
    assert f'"client_id":"{key_id}"' in stack.log_text("llm")


async def test_two_gateways_share_a_key_s_budgets_through_redis(
    stack: Stack, start_service: StartService, keys: KeysFile, redis_url: str
) -> None:
    _, counted = keys.add(["audits:read"], requests_per_minute=4)
    _, spender = keys.add(["llm"], tokens_per_minute=5)
    replicas = [auth_gateway(stack, start_service, keys, REDIS_URL=redis_url) for _ in range(2)]
    async with httpx.AsyncClient(timeout=30) as client:
        statuses = [
            (
                await client.get(
                    f"{replicas[n % 2].url}/api/v1/audits?limit=1",
                    headers={"Authorization": f"Bearer {counted}"},
                )
            ).status_code
            for n in range(5)
        ]
        assert statuses == [200, 200, 200, 200, 429]

        body = {"messages": [{"role": "user", "content": "Tell me a story"}], "stream": True}
        stream = await client.post(
            f"{replicas[0].url}/api/v1/openai/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {spender}"},
        )
        assert stream.status_code == 200
        # Finished, never cut: the stream ends with OpenAI's own terminator, nothing after.
        assert stream.text.endswith("data: [DONE]\n\n")
        assert "usage-tokens" not in stream.text
        deadline = time.monotonic() + 2
        refused = None
        while time.monotonic() < deadline:
            refused = await client.post(
                f"{replicas[1].url}/api/v1/openai/chat",
                json={"messages": [{"role": "user", "content": "again"}]},
                headers={"Authorization": f"Bearer {spender}"},
            )
            if refused.status_code == 429:
                break
            await asyncio.sleep(0.1)
        assert refused is not None
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-remaining"] == "0"


async def test_a_key_removed_while_requests_run_fails_within_a_second(
    stack: Stack, start_service: StartService, keys: KeysFile
) -> None:
    _, staying = keys.add(["audits:read"])
    _, leaving = keys.add(["audits:read"])
    gateway = auth_gateway(stack, start_service, keys)
    statuses: dict[str, list[tuple[float, int]]] = {"staying": [], "leaving": []}
    stop = asyncio.Event()

    async def load(name: str, key: str) -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            while not stop.is_set():
                response = await client.get(
                    "/api/v1/audits?limit=1&include_total=false",
                    headers={"Authorization": f"Bearer {key}"},
                )
                statuses[name].append((time.monotonic(), response.status_code))

    workers = [
        asyncio.create_task(load("staying", staying)),
        asyncio.create_task(load("leaving", leaving)),
    ]
    for _ in range(200):
        if statuses["staying"] and statuses["leaving"]:
            break
        await asyncio.sleep(0.05)
    assert [status for _, status in statuses["leaving"]][:1] == [200]
    keys.entries = [entry for entry in keys.entries if entry["sha256"] != hash_key(leaving)]
    temporary = keys.path.with_suffix(".tmp")
    temporary.write_text(json.dumps(keys.entries))
    temporary.replace(keys.path)
    changed = time.monotonic()
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*workers)
    assert {status for _, status in statuses["staying"]} == {200}
    after = [status for at, status in statuses["leaving"] if at > changed + 1.0]
    assert after
    assert set(after) == {401}
