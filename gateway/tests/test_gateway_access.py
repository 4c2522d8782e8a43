"""Access control (`AUTH_MODE=api_key`) in process: keys, scopes, the 401/403 answers, what
reaches an upstream (counted by the `Recorder`s), limits, and the keys file's reload."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import GatewayClient, Recorder, running_gateway, scrape

from devstack.postgres import free_port
from gateway.keys import file_entry, new_key, parse_keys
from gateway.keys.__main__ import main as keys_main
from testkit.checks import assert_problem
from testkit.metrics import value

SCOPES = ("audits:read", "audits:write", "audits:admin", "llm")
RECORD = "/api/v1/audits/01a215df-8c84-7376-862d-f9dc91ca4485"
# (method, path, scope it needs): a route of every kind on both upstreams.
ROUTES = [
    ("GET", "/api/v1/audits", "audits:read"),
    ("GET", "/api/v1/audits/export?format=csv", "audits:read"),
    ("GET", RECORD, "audits:read"),
    ("GET", f"{RECORD}/history", "audits:read"),
    ("GET", "/api/v1/audits/verify", "audits:read"),
    ("HEAD", "/api/v1/audits", "audits:read"),
    ("POST", "/api/v1/audits", "audits:write"),
    ("POST", "/api/v1/audits/batch", "audits:write"),
    ("PUT", RECORD, "audits:admin"),
    ("DELETE", RECORD, "audits:admin"),
    ("POST", "/api/v1/openai/chat", "llm"),
    ("POST", "/api/v1/openai/v1/chat/completions", "llm"),
    ("POST", "/api/v1/openai/v1/embeddings", "llm"),
    ("GET", "/api/v1/openai/v1/models", "llm"),
]


class Keys:
    """A keys file with one key per scope (named after it) and the keys in clear."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clear: dict[str, str] = {}
        self.entries: list[dict[str, Any]] = []

    def add(self, key_id: str, scopes: list[str], **limits: int) -> str:
        key = new_key()
        self.clear[key_id] = key
        self.entries.append(file_entry(key_id, key, scopes, limits))  # type: ignore[arg-type]
        self.write()
        return key

    def remove(self, key_id: str) -> None:
        self.entries = [entry for entry in self.entries if entry["id"] != key_id]
        self.write()

    def write(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"keys": self.entries}))
        temporary.replace(self.path)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    keys = Keys(tmp_path / "keys.json")
    for scope in SCOPES:
        keys.add(scope.replace(":", "-"), [scope])
    return keys


@asynccontextmanager
async def guarded(
    keys: Keys, audits: Recorder | None = None, llm: Recorder | None = None, **settings: Any
) -> AsyncIterator[GatewayClient]:
    options: dict[str, Any] = {"auth_failures_per_minute": 0, **settings}
    async with running_gateway(
        audits, llm, auth_mode="api_key", api_keys_file=str(keys.path), **options
    ) as gateway:
        yield gateway


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_every_route_for_no_key_unknown_key_key_without_scope_and_with_it(
    keys: Keys,
) -> None:
    async with guarded(keys) as gateway:
        for method, path, scope in ROUTES:
            before = len(gateway.audits.requests) + len(gateway.llm.requests)
            missing = await gateway.request(method, path, json={})
            assert missing.status_code == 401, (method, path)
            assert missing.headers["www-authenticate"] == 'Bearer realm="api"'
            unknown = await gateway.request(method, path, json={}, headers=bearer(new_key()))
            assert unknown.status_code == 401
            assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
            for other in SCOPES:
                if other != scope:
                    response = await gateway.request(
                        method, path, json={}, headers=bearer(keys.clear[other.replace(":", "-")])
                    )
                    assert response.status_code == 403, (method, path, other)
                    if method != "HEAD":
                        assert_problem(response, 403, "forbidden")
            seen = len(gateway.audits.requests) + len(gateway.llm.requests)
            assert seen == before, f"{method} {path} reached an upstream unauthorised"
            allowed = await gateway.request(
                method, path, json={}, headers=bearer(keys.clear[scope.replace(":", "-")])
            )
            assert allowed.status_code == 200, (method, path)
            assert len(gateway.audits.requests) + len(gateway.llm.requests) == seen + 1
        for method, path, _ in ROUTES[:1]:
            assert_problem(await gateway.request(method, path), 401, "unauthorized")


async def test_public_routes_stay_public(keys: Keys) -> None:
    async with guarded(keys) as gateway:
        for path in ("/", "/health", "/health/ready", "/docs", "/openapi.json"):
            assert (await gateway.get(path)).status_code == 200, path


async def test_the_key_is_consumed_and_the_client_id_set(
    keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    async with guarded(keys) as gateway:
        reader = keys.clear["audits-read"]
        for headers in (
            bearer(reader),
            {"X-API-Key": reader},
            {"authorization": f"bEaReR {reader}"},
        ):
            response = await gateway.get(
                "/api/v1/audits", headers={**headers, "X-Client-ID": "admin"}
            )
            assert response.status_code == 200
        for seen in gateway.audits.requests:
            assert seen.headers["x-client-id"] == "audits-read"
            assert "authorization" not in seen.headers
            assert "x-api-key" not in seen.headers
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    access = [line for line in lines if line.get("message") == "request"]
    assert [line.get("client_id") for line in access] == ["audits-read"] * 3
    assert keys.clear["audits-read"] not in json.dumps(lines)


@pytest.mark.parametrize(
    "presented",
    [
        "  {key}  x",
        "{key}\u00e9",
        "k\u00e9y",
        "{key} {key}",
        "x" * 10_000,
        "",
    ],
)
async def test_malformed_keys_are_401_and_reach_nothing(keys: Keys, presented: str) -> None:
    value = presented.format(key=keys.clear["audits-read"])
    async with guarded(keys) as gateway:
        status, headers, body = await gateway.raw(
            "GET",
            b"/api/v1/audits",
            [(b"authorization", b"Bearer " + value.encode("utf-8"))],
        )
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert json.loads(body)["code"] == "unauthorized"
        assert gateway.audits.requests == []


async def test_a_key_in_the_query_string_is_refused(keys: Keys) -> None:
    reader = keys.clear["audits-read"]
    async with guarded(keys) as gateway:
        for query in (f"api_key={reader}", f"limit=1&KEY={reader}", f"access_token={reader}"):
            response = await gateway.get(f"/api/v1/audits?{query}", headers=bearer(reader))
            assert_problem(response, 401, "unauthorized")
            assert reader not in response.text
        assert gateway.audits.requests == []


async def test_failed_checks_are_limited_per_client_ip(keys: Keys) -> None:
    async with guarded(keys, auth_failures_per_minute=3, trusted_proxies="10.0.0.0/8") as gateway:
        statuses = [
            (await gateway.get("/api/v1/audits", headers=bearer(new_key()))).status_code
            for _ in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429]
        limited = await gateway.get("/api/v1/audits")
        assert_problem(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        # X-Forwarded-For from an untrusted peer names no other client: still limited.
        spoofed = await gateway.get("/api/v1/audits", headers={"X-Forwarded-For": "192.0.2.9"})
        assert spoofed.status_code == 429
        # A valid key is never refused for its address's failures.
        ok = await gateway.get("/api/v1/audits", headers=bearer(keys.clear["audits-read"]))
        assert ok.status_code == 200


async def test_requests_per_minute_per_key_with_ratelimit_headers(keys: Keys) -> None:
    key = keys.add("limited", ["audits:read"], requests_per_minute=3)
    async with guarded(keys) as gateway:
        answers = [await gateway.get("/api/v1/audits", headers=bearer(key)) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert all(a.headers["ratelimit-limit"] == "3" for a in answers)
        assert 0 < int(answers[0].headers["ratelimit-reset"]) <= 60
        assert_problem(answers[3], 429, "rate_limited")
        assert 1 <= int(answers[3].headers["retry-after"]) <= 60
        assert len(gateway.audits.requests) == 3
        exposed = answers[0].headers.get("access-control-expose-headers", "")
        assert exposed == ""  # no Origin, no CORS headers
        cors = await gateway.get(
            "/api/v1/audits", headers={**bearer(key), "Origin": "https://app.example"}
        )
        assert "RateLimit-Remaining" in cors.headers["access-control-expose-headers"]
        # Another key has its own budget; a key without limits gets no RateLimit headers.
        other = await gateway.get("/api/v1/audits", headers=bearer(keys.clear["audits-read"]))
        assert other.status_code == 200
        assert "ratelimit-limit" not in other.headers


def _usage_stream(tokens: int) -> httpx.Response:
    events = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    events += b"data: [DONE]\n\n: usage-tokens %d\n\n" % tokens
    return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=events)


async def test_tokens_per_minute_a_stream_over_budget_finishes_and_the_next_is_429(
    keys: Keys,
) -> None:
    key = keys.add("spender", ["llm"], tokens_per_minute=100)
    llm = Recorder(lambda request: _usage_stream(150))
    async with guarded(keys, llm=llm) as gateway:
        first = await gateway.post(
            "/api/v1/openai/v1/chat/completions", json={}, headers=bearer(key)
        )
        assert first.status_code == 200
        assert first.text.endswith("data: [DONE]\n\n")
        assert "usage-tokens" not in first.text
        assert llm.requests[0].headers["x-usage-report"] == "tokens"
        assert first.headers["ratelimit-remaining"] == "100"
        second = await gateway.post("/api/v1/openai/chat", json={}, headers=bearer(key))
        assert_problem(second, 429, "rate_limited")
        assert second.headers["ratelimit-remaining"] == "0"
        assert len(llm.requests) == 1


async def test_tokens_of_a_json_response_come_from_its_header(keys: Keys) -> None:
    key = keys.add("embedder", ["llm"], tokens_per_minute=10)
    llm = Recorder(lambda request: httpx.Response(200, headers={"X-Usage-Tokens": "6"}, json={}))
    async with guarded(keys, llm=llm) as gateway:
        first = await gateway.post("/api/v1/openai/v1/embeddings", json={}, headers=bearer(key))
        assert "x-usage-tokens" not in first.headers
        second = await gateway.post("/api/v1/openai/v1/embeddings", json={}, headers=bearer(key))
        assert second.headers["ratelimit-remaining"] == "4"
        third = await gateway.post("/api/v1/openai/v1/embeddings", json={}, headers=bearer(key))
        assert third.status_code == 429


async def test_usage_reports_are_never_asked_for_by_clients_nor_shown_to_them() -> None:
    llm = Recorder(lambda request: httpx.Response(200, headers={"X-Usage-Tokens": "6"}, json={}))
    async with running_gateway(llm=llm) as gateway:
        response = await gateway.post(
            "/api/v1/openai/v1/embeddings", json={}, headers={"X-Usage-Report": "tokens"}
        )
        assert "x-usage-tokens" not in response.headers
        assert "x-usage-report" not in llm.requests[0].headers


async def test_the_keys_file_reloads_and_a_broken_one_keeps_the_last_good_set(
    keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    async with guarded(keys) as gateway:
        reader = keys.clear["audits-read"]
        fresh = keys.add("fresh", ["audits:read"])
        await _until(gateway, fresh, 200)
        keys.path.write_text("keys: [ {id: broken")
        await asyncio.sleep(0.6)
        assert (await gateway.get("/api/v1/audits", headers=bearer(fresh))).status_code == 200
        assert "keys file rejected" in capsys.readouterr().out
        keys.remove("audits-read")
        await _until(gateway, reader, 401)
        # Rotation: the same id under a new key.
        keys.remove("fresh")
        rotated = keys.add("fresh", ["audits:read"])
        await _until(gateway, fresh, 401)
        assert (await gateway.get("/api/v1/audits", headers=bearer(rotated))).status_code == 200


async def _until(gateway: GatewayClient, key: str, status: int) -> None:
    """The key answers `status` within a second of the file's change."""
    for _ in range(20):
        if (await gateway.get("/api/v1/audits", headers=bearer(key))).status_code == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {status} within a second")


def test_the_openapi_security_scheme_only_when_auth_is_on(keys: Keys) -> None:
    async def documents() -> tuple[dict[str, Any], dict[str, Any]]:
        def service_document(request: httpx.Request) -> httpx.Response:
            operation = {"responses": {"200": {"description": "ok"}}}
            return httpx.Response(200, json={"paths": {"/api/v1/audits": {"get": operation}}})

        async with running_gateway(Recorder(service_document)) as plain:
            off = (await plain.get("/openapi.json")).json()
        async with guarded(keys, Recorder(service_document)) as secured:
            on = (await secured.get("/openapi.json")).json()
        return off, on

    off, on = asyncio.run(documents())
    assert "securitySchemes" not in off.get("components", {})
    assert "security" not in off["paths"]["/api/v1/audits"]["get"]
    assert set(on["components"]["securitySchemes"]) == {"ApiKey", "ApiKeyHeader"}
    operation = on["paths"]["/api/v1/audits"]["get"]
    assert operation["security"] == [{"ApiKey": ["audits:read"]}, {"ApiKeyHeader": ["audits:read"]}]
    assert {"401", "403", "429"} <= set(operation["responses"])
    assert "security" not in on["paths"]["/health"]["get"]


def test_the_keys_command_prints_an_entry_that_admits_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert keys_main(["new", "--id", "ci-bot", "--scopes", "audits:read,audits:write"]) == 0
    out, err = capsys.readouterr()
    key = err.rsplit(": ", 1)[1].strip()
    [entry] = parse_keys(out).values()
    assert entry.id == "ci-bot"
    assert {s.value for s in entry.scopes} == {"audits:read", "audits:write"}
    assert key not in out
    assert (
        keys_main(["new", "--id", "x", "--scopes", "llm", "--json", "--tokens-per-minute", "5"])
        == 0
    )
    out, _ = capsys.readouterr()
    assert json.loads(out)["tokens_per_minute"] == 5
    with pytest.raises(SystemExit):
        keys_main(["new", "--id", "x", "--scopes", "root"])
    assert keys_main(["new", "--id", "bad id", "--scopes", "llm"]) == 2


async def test_metrics_count_refusals_and_admitted_keys_without_key_material(
    keys: Keys,
) -> None:
    port = free_port()
    async with guarded(keys, metrics_port=port) as gateway:
        before = await scrape(port)
        await gateway.get("/api/v1/audits")
        await gateway.get("/api/v1/audits", headers=bearer(new_key()))
        await gateway.get("/api/v1/audits", headers=bearer(keys.clear["llm"]))
        await gateway.get("/api/v1/audits", headers=bearer(keys.clear["audits-read"]))
        text = await scrape(port)

    def added(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    rejected = "gateway_auth_rejected_total"
    assert added(rejected, upstream="audits", code="unauthorized") == 2
    assert added(rejected, upstream="audits", code="forbidden") == 1
    admitted = "gateway_client_requests_total"
    assert added(admitted, upstream="audits", client_id="audits-read") == 1
    for key in keys.clear.values():
        assert key not in text
    for entry in keys.entries:
        assert entry["sha256"] not in text
