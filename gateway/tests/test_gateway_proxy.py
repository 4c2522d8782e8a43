import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_harness import Recorder, running_gateway
from starlette.datastructures import MutableHeaders
from starlette.types import Message

from gateway.cors import vary_on_origin


async def test_forwards_method_path_query_body_and_end_to_end_headers() -> None:
    async with running_gateway() as gateway:
        response = await gateway.put(
            "/api/v1/audits/42?x=1&y=%20z",
            content=b'{"a": 1}',
            headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer t",
                "X-Custom": "v",
            },
        )
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        [seen] = gateway.audits.requests
        assert seen.method == "PUT"
        assert seen.url.raw_path == b"/api/v1/audits/42?x=1&y=%20z"
        assert seen.url.host == "audits.internal"
        assert seen.content == b'{"a": 1}'
        assert seen.headers["authorization"] == "Bearer t"
        assert seen.headers["x-custom"] == "v"
        assert seen.headers["content-type"] == "application/json"


async def test_strips_hop_by_hop_headers_both_ways() -> None:
    audits, llm = Recorder(), Recorder()
    audits.handler = lambda request: httpx.Response(
        200,
        content=b"ok",
        headers={
            "Connection": "close, X-Upstream-Private",
            "X-Upstream-Private": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "Upgrade": "h2c",
            "Trailer": "X-Checksum",
            "X-Kept": "yes",
        },
    )
    async with running_gateway(audits, llm) as gateway:
        response = await gateway.get(
            "/api/v1/audits",
            headers={
                "Connection": "keep-alive, X-Private",
                "X-Private": "1",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Trailer": "X-Checksum",
                "Upgrade": "websocket",
                "Proxy-Authorization": "Basic abc",
                "Proxy-Connection": "keep-alive",
                "X-Kept": "yes",
            },
        )
    [seen] = audits.requests
    for name in (
        "x-private",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert name not in seen.headers, name
    assert seen.headers["x-kept"] == "yes"
    assert "connection" not in seen.headers
    for name in ("x-upstream-private", "keep-alive", "proxy-authenticate", "upgrade", "trailer"):
        assert name not in response.headers, name
    assert response.headers["x-kept"] == "yes"


async def test_sets_forwarding_headers_and_ignores_client_supplied_ones() -> None:
    async with running_gateway() as gateway:
        await gateway.get(
            "/api/v1/audits",
            headers={
                "X-Forwarded-For": "10.9.9.9",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-Proto": "https",
            },
        )
        [seen] = gateway.audits.requests
        assert seen.headers["x-forwarded-for"] == "203.0.113.7"
        assert seen.headers["x-forwarded-proto"] == "http"
        assert seen.headers["x-forwarded-host"] == "gateway.test"
        assert seen.headers["host"] == "audits.internal:8001"


async def test_trusted_proxy_chain_is_extended() -> None:
    audits = Recorder()
    async with running_gateway(audits, trusted_proxies="203.0.113.0/24") as gateway:
        await gateway.get(
            "/api/v1/audits",
            headers={
                "X-Forwarded-For": "198.51.100.1",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "api.example",
            },
        )
    [seen] = audits.requests
    assert seen.headers["x-forwarded-for"] == "198.51.100.1, 203.0.113.7"
    assert seen.headers["x-forwarded-proto"] == "https"
    assert seen.headers["x-forwarded-host"] == "api.example"


async def test_a_client_sent_client_id_never_reaches_an_upstream() -> None:
    async with running_gateway() as gateway:
        for name in ("X-Client-ID", "x-client-id", "X-CLIENT-ID"):
            await gateway.get("/api/v1/audits", headers={name: "admin"})
            await gateway.post("/api/v1/openai/v1/chat/completions", headers={name: "admin"})
        seen = gateway.audits.requests + gateway.llm.requests
        assert len(seen) == 6
        assert all("x-client-id" not in request.headers for request in seen)


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("req-123.abc:DEF_-", True), ("bad id\r\nX-Injected: 1", False), ("x" * 129, False)],
)
async def test_request_id_is_forwarded_and_echoed(incoming: str, kept: bool) -> None:
    async with running_gateway() as gateway:
        gateway.audits.handler = lambda request: httpx.Response(
            200, headers={"X-Request-ID": "upstream-own"}
        )
        response = await gateway.get(
            "/api/v1/audits", headers={"X-Request-ID": incoming.replace("\r\n", " ")}
        )
        [seen] = gateway.audits.requests
        echoed = response.headers["x-request-id"]
        assert seen.headers["x-request-id"] == echoed
        assert (echoed == incoming) is kept


async def test_unknown_paths_are_problems_and_never_forwarded() -> None:
    async with running_gateway() as gateway:
        for path in ("/api/v1/nope", "/api/v1/auditsX", "/api/v2/audits", "/api/v1/openaiX"):
            response = await gateway.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "not_found"
            assert response.json()["request_id"] == response.headers["x-request-id"]
        assert gateway.audits.requests == []
        assert gateway.llm.requests == []


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/v1/audits/../../etc/passwd",
        b"/api/v1/audits/..",
        b"/api/v1/audits/%2e%2e/secret",
        b"/api/v1/audits/%2E%2e/secret",
        b"/api/v1/audits/.%2e/secret",
        b"/api/v1/audits//etc",
        b"//api/v1/audits",
        b"/api/v1/audits/%2f..%2fadmin",
        b"/api/v1/audits/%2Fadmin",
        b"/api/v1/audits/..%5cadmin",
        b"/api/v1/audits/a\\..\\b",
        b"/api/v1/audits/./x",
        b"/api/v1/audits/%00",
        b"/api/v1/openai/../audits",
        b"/api/v1/openai/%2e%2e/%2e%2e/admin",
    ],
)
async def test_traversal_attempts_never_reach_an_upstream(raw_path: bytes) -> None:
    async with running_gateway() as gateway:
        status, headers, _ = await gateway.raw("GET", raw_path)
        assert status in (400, 404)
        assert headers["content-type"] == "application/problem+json"
        assert gateway.audits.requests == []
        assert gateway.llm.requests == []


async def test_body_over_limit_by_content_length_is_refused_up_front() -> None:
    async with running_gateway() as gateway:
        response = await gateway.post("/api/v1/audits", content=b"x" * (1_048_576 + 1))
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
        assert gateway.audits.requests == []


async def test_chunked_body_over_limit_is_cut_off_while_streaming() -> None:
    audits, llm = Recorder(), Recorder()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):
            sent += 1024
            yield b"y" * 1024

    async with running_gateway(audits, llm, max_body_bytes=10_000) as gateway:
        response = await gateway.post("/api/v1/audits", content=body())
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
        assert audits.requests == []

        small = await gateway.post("/api/v1/audits", content=(c async for c in _chunks(3, 1000)))
        assert small.status_code == 200
        assert audits.requests[0].content == b"z" * 3000


async def test_the_llm_routes_have_their_own_body_limit() -> None:
    audits, llm = Recorder(), Recorder()
    async with running_gateway(
        audits, llm, max_body_bytes=10_000, llm_max_body_bytes=20_000
    ) as gateway:
        fits = await gateway.post("/api/v1/openai/v1/chat/completions", content=b"a" * 15_000)
        too_big = await gateway.post("/api/v1/openai/chat", content=b"b" * 20_001)
        streamed = await gateway.post("/api/v1/openai/chat", content=_chunks(30, 1000))
        audit = await gateway.post("/api/v1/audits", content=b"c" * 15_000)
    assert fits.status_code == 200
    assert [len(request.content) for request in llm.requests] == [15_000]
    for refused in (too_big, streamed, audit):
        assert refused.status_code == 413
        assert refused.json()["code"] == "payload_too_large"
    assert too_big.json()["detail"] == "The request body exceeds 20000 bytes."
    assert audit.json()["detail"] == "The request body exceeds 10000 bytes."
    assert audits.requests == []


async def test_by_default_an_llm_body_may_hold_an_image_of_several_mebibytes() -> None:
    llm = Recorder()
    async with running_gateway(llm=llm) as gateway:
        response = await gateway.post(
            "/api/v1/openai/v1/chat/completions", content=b"i" * 5_000_000
        )
        audit = await gateway.post("/api/v1/audits", content=b"i" * 2_000_000)
    assert response.status_code == 200
    assert len(llm.requests[0].content) == 5_000_000
    assert audit.status_code == 413


async def _chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"z" * size


async def test_upstream_down_is_502_and_slow_is_504() -> None:
    audits, llm = Recorder(), Recorder()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    audits.handler = refuse
    llm.handler = slow
    async with running_gateway(audits, llm) as gateway:
        down = await gateway.get("/api/v1/audits")
        late = await gateway.post("/api/v1/openai/chat", json={})
    assert down.status_code == 502
    assert down.headers["content-type"] == "application/problem+json"
    assert down.json()["code"] == "upstream_unavailable"
    assert late.status_code == 504
    assert late.json()["code"] == "upstream_timeout"
    assert late.json()["request_id"] == late.headers["x-request-id"]


async def test_connection_errors_are_retried_once_for_idempotent_audits_calls_only() -> None:
    audits, llm = Recorder(), Recorder()
    failures = {"left": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        if failures["left"]:
            failures["left"] -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"ok": True})

    audits.handler = flaky
    llm.handler = flaky
    async with running_gateway(audits, llm) as gateway:
        failures["left"] = 1
        assert (await gateway.get("/api/v1/audits")).status_code == 200
        failures["left"] = 1
        assert (await gateway.delete("/api/v1/audits/1")).status_code == 200
        failures["left"] = 2
        assert (await gateway.get("/api/v1/audits")).status_code == 502
        failures["left"] = 1
        assert (await gateway.post("/api/v1/audits", json={})).status_code == 502
        failures["left"] = 1
        assert (await gateway.get("/api/v1/openai/v1/models")).status_code == 502
    attempts = [r.method for r in audits.requests]
    assert attempts == ["GET", "GET", "DELETE", "DELETE", "GET", "GET", "POST"]
    assert [r.method for r in llm.requests] == ["GET"]


async def test_streamed_response_is_relayed() -> None:
    audits, llm = Recorder(), Recorder()

    async def events() -> AsyncIterator[bytes]:
        for index in range(3):
            await asyncio.sleep(0)
            yield f"data: {index}\n\n".encode()

    llm.handler = lambda request: httpx.Response(
        200, content=events(), headers={"Content-Type": "text/event-stream"}
    )
    async with running_gateway(audits, llm) as gateway:
        response = await gateway.post("/api/v1/openai/chat", json={"stream": True})
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_cors_preflight_is_answered_by_the_gateway() -> None:
    async with running_gateway() as gateway:
        response = await gateway.options(
            "/api/v1/audits",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-request-id",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "x-request-id" in response.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in response.headers
        assert gateway.audits.requests == []

        simple = await gateway.get("/api/v1/audits", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "*"
        exposed = simple.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed
        assert "retry-after" in exposed


async def test_url_and_header_size_limits() -> None:
    async with running_gateway() as gateway:
        long_url = await gateway.get("/api/v1/audits", params={"q": "x" * 9000})
        assert long_url.status_code == 414
        assert long_url.json()["code"] == "uri_too_long"
        big_headers = await gateway.get(
            "/api/v1/audits", headers={f"X-H{i}": "v" * 1000 for i in range(40)}
        )
        assert big_headers.status_code == 431
        assert big_headers.json()["code"] == "request_header_fields_too_large"
        assert gateway.audits.requests == []


async def test_a_stalled_body_is_cut_off_with_408() -> None:
    parts: list[Message] = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def stall() -> Message:
        if parts:
            return parts.pop()
        await asyncio.sleep(30)
        raise AssertionError("the gateway kept waiting")

    async with running_gateway(client_body_timeout=0.2) as gateway:
        status, headers, body = await gateway.raw(
            "POST", b"/api/v1/audits", [(b"content-length", b"1000")], stall
        )
        assert status == 408
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert b'"code":"request_timeout"' in body
        assert gateway.audits.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-type", b"application/json")],
        [(b"vary", b"Accept-Encoding"), (b"content-type", b"text/plain")],
        [(b"vary", b"Accept"), (b"x-a", b"1"), (b"vary", b"Cookie"), (b"x-b", b"2")],
    ],
)
def test_vary_on_origin_is_what_starlettes_cors_writes(headers: list[tuple[bytes, bytes]]) -> None:
    ours = list(headers)
    vary_on_origin(ours)
    starlettes = MutableHeaders(raw=list(headers))
    starlettes["Vary"] = ", ".join([*starlettes.getlist("Vary"), "Origin"])
    assert ours == starlettes.raw


async def test_a_response_without_origin_varies_on_origin_with_the_upstreams_vary() -> None:
    audits = Recorder(
        lambda request: httpx.Response(200, json=[], headers={"Vary": "Accept-Encoding"})
    )
    async with running_gateway(audits) as gateway:
        plain = await gateway.get("/api/v1/audits")
        browser = await gateway.get("/api/v1/audits", headers={"Origin": "https://app.example"})
        own = await gateway.get("/health")
    assert plain.headers.get_list("vary") == ["Accept-Encoding, Origin"]
    assert "access-control-allow-origin" not in plain.headers
    assert browser.headers.get_list("vary") == ["Accept-Encoding, Origin"]
    assert browser.headers["access-control-allow-origin"] == "*"
    assert own.headers.get_list("vary") == ["Origin"]
