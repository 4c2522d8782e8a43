import httpx
import pytest
from gateway_harness import Recorder, running_gateway, scrape

from devstack.postgres import free_port
from testkit.metrics import label_values, value


async def test_metrics_are_on_their_own_port_not_the_public_one() -> None:
    port = free_port()
    audits = Recorder()
    async with running_gateway(audits=audits, metrics_port=port) as gateway:
        before = await scrape(port)
        assert (await gateway.get("/api/v1/audits/abc?x=1")).status_code == 200
        public = await gateway.get("/metrics")
        text = await scrape(port)
    assert public.status_code == 404
    assert [request.url.path for request in audits.requests] == ["/api/v1/audits/abc"]

    def added(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    route = "/api/v1/audits/{path}"
    assert added("http_requests_total", route=route, method="GET", status="200") == 1
    assert added("http_requests_total", route="unmatched", status="404") == 1
    assert added("gateway_upstream_requests_total", upstream="audits", outcome="2xx") == 1
    assert added("gateway_upstream_request_duration_seconds_count", upstream="audits") == 1


async def test_metrics_on_the_public_listener_when_asked() -> None:
    port = free_port()
    async with running_gateway(metrics_public=True, metrics_port=port) as gateway:
        response = await gateway.get("/metrics")
        with pytest.raises(httpx.ConnectError):
            await scrape(port)
    assert response.status_code == 200
    assert "http_requests_total" in response.text


async def test_upstream_failures_and_rate_limits_are_counted() -> None:
    port = free_port()

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with running_gateway(
        audits=Recorder(down),
        llm=Recorder(slow),
        metrics_port=port,
        rate_limit_llm_per_minute=1,
    ) as gateway:
        before = await scrape(port)
        assert (await gateway.get("/api/v1/audits/abc")).status_code == 502
        assert (await gateway.post("/api/v1/openai/chat", json={})).status_code == 504
        assert (await gateway.post("/api/v1/openai/chat", json={})).status_code == 429
        text = await scrape(port)

    def added(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    assert added("gateway_upstream_requests_total", upstream="audits", outcome="unavailable") == 1
    assert added("gateway_upstream_retries_total", upstream="audits") == 1
    assert added("gateway_upstream_requests_total", upstream="llm", outcome="timeout") == 1
    assert added("gateway_rate_limited_total", upstream="llm") == 1
    assert label_values(text, "gateway_upstream_requests_total", "upstream") == {"audits", "llm"}
