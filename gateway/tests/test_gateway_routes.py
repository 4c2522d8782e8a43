import asyncio
from collections.abc import Mapping

import httpx
import pytest
from gateway_harness import Recorder, running_gateway

from gateway import __version__


def ready(status: int, body: Mapping[str, object] | None = None) -> Recorder:
    return Recorder(lambda request: httpx.Response(status, json=body or {"status": "ok"}))


async def test_root_describes_the_api() -> None:
    async with running_gateway() as gateway:
        response = await gateway.get("/")
    assert response.status_code == 200
    assert response.json() == {
        "name": "gateway",
        "version": __version__,
        "description": "Public API gateway for the audits and LLM services.",
        "docs_url": "/docs",
        "openapi_url": "/openapi.json",
        "health_url": "/health",
        "api_prefix": "/api/v1",
    }


async def test_liveness_does_no_io() -> None:
    async with running_gateway() as gateway:
        response = await gateway.get("/health")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        assert gateway.audits.requests == []
        assert gateway.llm.requests == []


@pytest.mark.parametrize(
    ("audits_status", "llm_status", "overall", "http_status"),
    [
        (200, 200, "ok", 200),
        (200, 503, "degraded", 200),
        (503, 200, "unavailable", 503),
        (503, 503, "unavailable", 503),
    ],
)
async def test_readiness_aggregates_the_services(
    audits_status: int, llm_status: int, overall: str, http_status: int
) -> None:
    llm_body = {"status": "unavailable", "code": "llm_not_configured", "detail": "no key"}
    audits = ready(audits_status, {"status": "unavailable", "detail": "database down"})
    llm = ready(llm_status, llm_body)
    async with running_gateway(audits, llm) as gateway:
        response = await gateway.get("/health/ready")
    assert response.status_code == http_status
    body = response.json()
    assert body["status"] == overall
    assert set(body["services"]) == {"audits", "llm"}
    for name, status in (("audits", audits_status), ("llm", llm_status)):
        service = body["services"][name]
        assert service["status"] == ("ok" if status == 200 else "unavailable")
        assert service["latency_ms"] >= 0
        assert (service["detail"] is None) == (status == 200)
    if llm_status != 200:
        assert body["services"]["llm"]["detail"] == "llm_not_configured: no key"
    assert [r.url.path for r in audits.requests] == ["/health/ready"]


async def test_readiness_checks_are_bounded_and_concurrent() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with running_gateway(Recorder(hang), Recorder(hang), health_check_timeout=0.3) as gateway:
        started = asyncio.get_running_loop().time()
        response = await gateway.get("/health/ready")
        elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 503
    assert response.json()["services"]["audits"]["detail"] == "no answer within 0.3 s"
    assert elapsed < 2.0

    async with running_gateway(Recorder(), Recorder(refuse)) as gateway:
        response = await gateway.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["services"]["llm"]["detail"] == "unreachable"


async def test_database_check_is_passed_through() -> None:
    body = {
        "status": "ok",
        "latency_ms": 1.0,
        "migration": {"current": "a", "head": "a", "up_to_date": True},
    }
    audits = Recorder(lambda request: httpx.Response(200, json=body))
    async with running_gateway(audits) as gateway:
        response = await gateway.get("/health/db", headers={"X-Request-ID": "db-check-1"})
    assert response.status_code == 200
    assert response.json() == body
    assert audits.requests[0].url.path == "/health/db"
    assert audits.requests[0].headers["x-request-id"] == "db-check-1"

    problem = {"status": 503, "code": "database_unavailable", "title": "Service Unavailable"}
    down = Recorder(
        lambda request: httpx.Response(
            503, json=problem, headers={"Content-Type": "application/problem+json"}
        )
    )
    async with running_gateway(down) as gateway:
        response = await gateway.get("/health/db")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "database_unavailable"


async def test_database_check_without_audits_is_502() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with running_gateway(Recorder(refuse)) as gateway:
        response = await gateway.get("/health/db")
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"


async def test_method_not_allowed_and_validation_are_problems() -> None:
    async with running_gateway() as gateway:
        response = await gateway.post("/health")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "method_not_allowed"
