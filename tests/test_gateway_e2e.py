"""The gateway as a real process in front of real services, and in front of a recording
upstream where the test must see exactly what reached the service (or that nothing did)."""

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from uuid import UUID

import httpx
import pytest
import uvicorn
from openapi_spec_validator import validate
from starlette.types import Message, Receive, Scope, Send

from devstack.openai_standin import OpenAIStandin
from devstack.postgres import free_port
from devstack.processes import ServiceProcess
from testkit.checks import assert_problem
from tests.e2e_stack import STANDIN_API_KEY, Stack, StartService, gateway_env, llm_env, wait_ready

TWO_MIB = 2 * 1024 * 1024


@dataclass
class Seen:
    method: str
    raw_path: bytes
    headers: dict[str, str]
    body_bytes: int = 0
    complete: bool = False


@dataclass
class RecordingUpstream:
    """An HTTP server that records every request it receives, run from its own thread."""

    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen = Seen(
            scope["method"],
            scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b""),
            {k.decode(): v.decode() for k, v in scope["headers"]},
        )
        with self.lock:
            self.seen.append(seen)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            seen.body_bytes += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen.complete = True
        if scope["path"] == "/api/v1/audits/slow":
            await asyncio.sleep(5)
        await send(_start(200, [(b"content-type", b"application/json")]))
        await send({"type": "http.response.body", "body": b'{"echo": true}'})


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers}


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    server = uvicorn.Server(
        uvicorn.Config(upstream, port=upstream.port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield upstream
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def recorded_gateway_process(
    recorder: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A gateway with the recording upstream as its audits service and no llm service."""
    env = gateway_env(recorder.url, f"http://127.0.0.1:{free_port()}", AUDITS_TIMEOUT="1")
    with (tmp_path_factory.mktemp("gateway") / "gateway.log").open("ab") as log:
        gateway = ServiceProcess("gateway", {"LOG_LEVEL": "INFO", **env}, log=log).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def recorded_gateway(recorder: RecordingUpstream, recorded_gateway_process: ServiceProcess) -> str:
    with recorder.lock:
        recorder.seen.clear()
    return recorded_gateway_process.url


async def raw_request(base_url: str, request_target: str, method: str = "GET") -> tuple[int, bytes]:
    """Sends the request line byte for byte (HTTP clients normalise `..` and `//`)."""
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {request_target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        writer.write(head.encode() + b"\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response


# -- against the real services -----------------------------------------------------------


async def test_request_ids_are_kept_replaced_and_present_on_errors(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        created = await client.post(
            "/api/v1/audits",
            json={"action": "create", "actor": "e2e", "resource_type": "gateway-test"},
            headers={"X-Request-ID": "e2e-gateway-req.1"},
        )
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"] == "e2e-gateway-req.1"
        assert created.json()["request_id"] == "e2e-gateway-req.1"

        replaced = await client.get("/api/v1/audits", headers={"X-Request-ID": "bad id;rm -rf"})
        assert replaced.status_code == 200
        UUID(replaced.headers["x-request-id"])

        missing = await client.get(
            f"/api/v1/audits/{UUID(int=0)}", headers={"X-Request-ID": "e2e-missing-1"}
        )
        assert_problem(missing, 404, "not_found")
        assert missing.headers["x-request-id"] == "e2e-missing-1"
    assert "e2e-gateway-req.1" in stack.log_text("audits")


async def test_errors_are_problem_documents(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        assert_problem(await client.get("/api/v1/nothing-here"), 404, "not_found")
        assert_problem(await client.get(f"/api/v1/audits/{UUID(int=1)}"), 404, "not_found")
        assert_problem(await client.post("/health"), 405, "method_not_allowed")
        assert_problem(
            await client.patch(f"/api/v1/audits/{UUID(int=1)}"), 405, "method_not_allowed"
        )
        assert_problem(
            await client.get("/api/v1/audits", params={"limit": 500}), 422, "validation_error"
        )
        assert_problem(
            await client.post("/api/v1/audits", content=b"x" * TWO_MIB), 413, "payload_too_large"
        )


async def test_unreachable_and_slow_upstreams_are_502_and_504(
    recorded_gateway: str, start_service: StartService
) -> None:
    async with httpx.AsyncClient(base_url=recorded_gateway, timeout=10) as client:
        assert_problem(await client.get("/api/v1/openai/v1/models"), 502, "upstream_unavailable")
        started = time.monotonic()
        assert_problem(await client.get("/api/v1/audits/slow"), 504, "upstream_timeout")
        assert time.monotonic() - started < 4


async def test_merged_openapi_is_valid_and_docs_are_served_locally(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        document = (await client.get("/openapi.json")).json()
        validate(document)
        paths = document["paths"]
        for path in ("/", "/health", "/health/ready", "/health/db", "/api/v1/audits"):
            assert path in paths, path
        assert "/api/v1/openai/chat" in paths
        assert "/api/v1/audits/{audit_id}" in paths
        operation_ids = [
            operation["operationId"] for item in paths.values() for operation in item.values()
        ]
        assert len(operation_ids) == len(set(operation_ids)), operation_ids
        assert {"create_audit", "list_audits", "chat", "chat_completions"} <= set(operation_ids)
        # The gateway documents the pass-through /health/db with a schema of its own.
        audits_document = (await client.get(f"{stack.audits.url}/openapi.json")).json()
        for name in ("DatabaseHealth", "MigrationState"):
            ours = document["components"]["schemas"][name]
            theirs = audits_document["components"]["schemas"][name]
            assert ours["properties"] == theirs["properties"], name
        page = await client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert urls
        for url in urls:
            assert url.startswith("/"), url
            assert not url.startswith("//"), url
            assert (await client.get(url)).status_code == 200, url


async def test_health_goes_ok_degraded_unavailable_as_services_stop(
    service_database_url: str, standin: OpenAIStandin, start_service: StartService
) -> None:
    audits = start_service("audits", {"DATABASE_URL": service_database_url})
    llm = start_service("llm", llm_env(standin))
    gateway = start_service("gateway", gateway_env(audits.url, llm.url))
    wait_ready(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        ok = await client.get("/health/ready")
        assert ok.status_code == 200
        assert ok.json()["status"] == "ok"
        assert (await client.get("/health/db")).json()["migration"]["up_to_date"] is True

        llm.kill()
        degraded = await client.get("/health/ready")
        assert degraded.status_code == 200
        body = degraded.json()
        assert body["status"] == "degraded"
        assert body["services"]["audits"]["status"] == "ok"
        assert body["services"]["llm"]["status"] == "unavailable"

        audits.kill()
        unavailable = await client.get("/health/ready")
        assert unavailable.status_code == 503
        assert unavailable.json()["status"] == "unavailable"
        assert (await client.get("/health")).status_code == 200


async def test_server_sent_events_arrive_chunk_by_chunk(start_service: StartService) -> None:
    delay = 0.3
    with OpenAIStandin(
        api_key=STANDIN_API_KEY, reply="one two three four five", chunk_delay=delay
    ) as slow:
        llm = start_service("llm", llm_env(slow))
        gateway = start_service("gateway", gateway_env(f"http://127.0.0.1:{free_port()}", llm.url))
        arrivals: list[float] = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            started = time.monotonic()
            async with client.stream(
                "POST",
                "/api/v1/openai/chat",
                json={"messages": [{"role": "user", "content": "count"}], "stream": True},
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for chunk in response.aiter_raw():
                    if chunk.strip():
                        arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 3, arrivals
    # The first event reached the client while the upstream was still producing the rest.
    assert arrivals[-1] - arrivals[0] >= 2 * delay, arrivals


# -- against the recording upstream ------------------------------------------------------


TRAVERSALS = (
    "/api/v1/audits/../../etc/passwd",
    "/api/v1/audits/%2e%2e/%2e%2e/admin",
    "/api/v1/audits/%2E%2E/x",
    "/api/v1/audits/./x",
    "/api/v1/audits//x",
    "//api/v1/audits",
    "/api/v1/audits/..%2f..%2fadmin",
    "/api/v1/audits/%2fetc",
    "/api/v1/audits/..%5c..%5cadmin",
    "/api/v1/audits/..\\..\\admin",
    "/api/v1/openai/../audits",
    "/api/v1/openai/%2e%2e/audits",
)


async def test_traversal_attempts_never_reach_an_upstream(
    recorded_gateway: str, recorder: RecordingUpstream
) -> None:
    for target in TRAVERSALS:
        status, response = await raw_request(recorded_gateway, target)
        assert status == 404, target
        assert b"application/problem+json" in response, target
        assert b'"code":"not_found"' in response, target
    assert recorder.requests() == []


async def test_a_two_mib_body_is_refused_without_reaching_the_upstream(
    recorded_gateway: str, recorder: RecordingUpstream
) -> None:
    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(32):
            yield b"c" * (64 * 1024)

    async with httpx.AsyncClient(base_url=recorded_gateway, timeout=30) as client:
        declared = await client.post("/api/v1/audits", content=b"x" * TWO_MIB)
        assert_problem(declared, 413, "payload_too_large")
        assert recorder.requests() == []
        streamed = await client.post("/api/v1/audits", content=chunked())
        assert_problem(streamed, 413, "payload_too_large")
        # The chunked body was cut off at the limit: the upstream never got a whole request.
        assert not any(seen.complete for seen in recorder.requests())
        assert all(seen.body_bytes <= TWO_MIB // 2 for seen in recorder.requests())
        assert (await client.post("/api/v1/audits", content=b"small")).status_code == 200


async def test_forwarding_headers_and_hop_by_hop_stripping(
    recorded_gateway: str, recorder: RecordingUpstream
) -> None:
    async with httpx.AsyncClient(base_url=recorded_gateway, timeout=10) as client:
        response = await client.get(
            "/api/v1/audits?limit=1&x=%20y",
            headers={
                "X-Request-ID": "hop-test-1",
                "Connection": "X-Secret",
                "X-Secret": "1",
                "Proxy-Authorization": "Basic eA==",
                "X-Forwarded-For": "6.6.6.6",
                "X-End-To-End": "kept",
            },
        )
    assert response.status_code == 200
    [seen] = recorder.requests()
    assert seen.raw_path == b"/api/v1/audits?limit=1&x=%20y"
    assert seen.headers["x-request-id"] == "hop-test-1"
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"
    assert seen.headers["x-forwarded-proto"] == "http"
    assert seen.headers["x-forwarded-host"].startswith("127.0.0.1:")
    assert seen.headers["x-end-to-end"] == "kept"
    for name in ("x-secret", "proxy-authorization"):
        assert name not in seen.headers


async def test_cors_preflight_is_answered_by_the_gateway(
    recorded_gateway: str, recorder: RecordingUpstream
) -> None:
    async with httpx.AsyncClient(base_url=recorded_gateway, timeout=10) as client:
        preflight = await client.options(
            "/api/v1/audits",
            headers={
                "Origin": "https://ui.example",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "content-type,x-request-id",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "PUT" in preflight.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in preflight.headers
        assert recorder.requests() == []
        actual = await client.get("/api/v1/audits", headers={"Origin": "https://ui.example"})
        assert actual.headers["access-control-allow-origin"] == "*"
        exposed = actual.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed
        assert "retry-after" in exposed
