"""A real Prometheus scraping a stack of real processes while a known mix of requests goes
through the gateway: counts by route and status, the LLM's tokens and retries, bounded label
sets under a flood of random paths, and the Grafana dashboard's every query."""

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.openai_standin import Fault, OpenAIStandin
from devstack.postgres import EmbeddedPostgres, free_port
from devstack.processes import ServiceProcess
from devstack.run import migrate
from tests.e2e_stack import STANDIN_API_KEY, gateway_env, llm_env, start_logged, wait_ready
from tests.prometheus_server import Prometheus

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy/observability/grafana-dashboard.json"
RECORD = {"action": "create", "actor": "scraped", "resource_type": "document", "resource_id": "1"}
CHAT = {"messages": [{"role": "user", "content": "Say hello."}]}
FLOOD = 10_000


@dataclass
class Scraped:
    gateway: str
    prometheus: Prometheus
    standin: OpenAIStandin


@pytest.fixture(scope="module")
def scraped(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    """Fresh services (every counter starts at zero) and a Prometheus scraping them."""
    workdir = tmp_path_factory.mktemp("prometheus")
    database_url = postgres.create_database("scraped")
    migrate(database_url)
    metrics_port = free_port()
    started: list[ServiceProcess] = []
    with OpenAIStandin(api_key=STANDIN_API_KEY) as standin:
        try:
            audits = start_logged("audits", {"DATABASE_URL": database_url}, workdir / "audits.log")
            started.append(audits)
            llm = start_logged("llm", llm_env(standin), workdir / "llm.log")
            started.append(llm)
            env = gateway_env(audits.url, llm.url, METRICS_PORT=str(metrics_port))
            gateway = start_logged("gateway", env, workdir / "gateway.log")
            started.append(gateway)
            wait_ready(gateway.url)
            targets = {
                "gateway": f"127.0.0.1:{metrics_port}",
                "audits": f"127.0.0.1:{audits.port}",
                "llm": f"127.0.0.1:{llm.port}",
            }
            with Prometheus(workdir, targets) as prometheus:
                yield Scraped(gateway.url, prometheus, standin)
        finally:
            for service in reversed(started):
                service.stop()


def send_the_mix(scraped: Scraped) -> int:
    """5 creates, 3 reads, 2 misses, 1 invalid create; 3 chats (one streamed) after a 500 and
    a 503 from the upstream. Returns the tokens the upstream reported."""
    with httpx.Client(base_url=scraped.gateway) as client:
        ids = [client.post("/api/v1/audits", json=RECORD).json()["id"] for _ in range(5)]
        for audit_id in ids[:3]:
            assert client.get(f"/api/v1/audits/{audit_id}").status_code == 200
        for _ in range(2):
            missing = client.get("/api/v1/audits/00000000-0000-4000-8000-000000000000")
            assert missing.status_code == 404
        assert client.post("/api/v1/audits", json={"action": "nope"}).status_code == 422
        scraped.standin.script(Fault.error(500), Fault.error(503))
        tokens = 0
        for _ in range(2):
            response = client.post("/api/v1/openai/chat", json=CHAT)
            assert response.status_code == 200
            tokens += int(response.json()["usage"]["total_tokens"])
        streamed = client.post("/api/v1/openai/chat", json={**CHAT, "stream": True})
        assert streamed.status_code == 200
        end = [line for line in streamed.text.splitlines() if '"usage"' in line][-1]
        tokens += int(json.loads(end.removeprefix("data: "))["usage"]["total_tokens"])
    return tokens


def test_counts_by_route_and_status_tokens_and_retries(scraped: Scraped) -> None:
    tokens = send_the_mix(scraped)
    prometheus = scraped.prometheus
    # Each job is scraped on its own schedule: wait for a scrape of every one after the mix.
    prometheus.wait_until('sum(llm_upstream_calls_total{job="llm"})', 3)
    prometheus.wait_until('sum(http_requests_total{job="gateway", route=~"/api/v1/.*"})', 14)
    prometheus.wait_until('sum(http_requests_total{job="audits", route=~"/api/v1/.*"})', 11)

    audits = prometheus.by(
        'sum by (route, method, status) (http_requests_total{job="audits"})',
        "route",
        "method",
        "status",
    )
    assert audits[("/api/v1/audits", "POST", "201")] == 5
    assert audits[("/api/v1/audits", "POST", "422")] == 1
    assert audits[("/api/v1/audits/{audit_id}", "GET", "200")] == 3
    assert audits[("/api/v1/audits/{audit_id}", "GET", "404")] == 2
    gateway = prometheus.by(
        'sum by (route, status) (http_requests_total{job="gateway"})', "route", "status"
    )
    assert gateway[("/api/v1/audits/{path}", "201")] == 5
    assert gateway[("/api/v1/audits/{path}", "200")] == 3
    assert gateway[("/api/v1/openai/{path}", "200")] == 3
    upstream = prometheus.by(
        "sum by (upstream, outcome) (gateway_upstream_requests_total)", "upstream", "outcome"
    )
    assert upstream[("audits", "2xx")] == 8
    assert upstream[("audits", "4xx")] == 3
    assert upstream[("llm", "2xx")] == 3

    assert prometheus.scalar("sum(llm_tokens_total)") == tokens
    assert prometheus.scalar("sum(llm_upstream_retries_total)") == 2
    attempts = prometheus.by("sum by (status) (llm_upstream_attempts_total)", "status")
    assert attempts == {("500",): 1, ("503",): 1, ("200",): 3}
    assert prometheus.scalar("sum(llm_time_to_first_chunk_seconds_count)") == 1
    assert prometheus.scalar("sum(audits_db_pool_wait_seconds_count)") > 0


async def _flood(gateway: str) -> None:
    """FLOOD requests to random paths (unknown, and under both prefixes) with random queries."""
    shapes = ("/{token}", "/api/v1/{token}/x", "/api/v1/audits/{token}", "/api/v1/openai/{token}")
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=gateway, limits=limits, timeout=30) as client:

        async def worker(count: int) -> None:
            for n in range(count):
                token = secrets.token_hex(6)
                path = shapes[n % len(shapes)].format(token=token)
                response = await client.get(path, params={secrets.token_hex(3): token})
                assert response.status_code in {404, 422, 405}, (path, response.status_code)

        await asyncio.gather(*(worker(FLOOD // 8) for _ in range(8)))


def label_values(prometheus: Prometheus, label: str) -> set[str]:
    query = f"count by ({label}) ({{__name__=~'http_.*|gateway_.*|llm_.*|audits_.*', {label}!=''}})"
    return {key[0] for key in prometheus.by(query, label)}


# 10,000 requests through real processes: quick alone, slower on a loaded machine.
@pytest.mark.timeout(600)
def test_random_paths_and_queries_add_no_label_values(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    before = prometheus.scalar('sum(http_requests_total{job="gateway"})')
    asyncio.run(_flood(scraped.gateway))
    prometheus.wait_until('sum(http_requests_total{job="gateway"})', before + FLOOD)
    prometheus.wait_for_scrapes()

    assert label_values(prometheus, "route") <= {
        "unmatched",
        "/metrics",
        "/health",
        "/health/ready",
        "/api/v1/audits",
        "/api/v1/audits/{audit_id}",
        "/api/v1/audits/{path}",
        "/api/v1/openai/{path}",
        "/api/v1/openai/chat",
        "chat",  # the llm's kind of upstream call, a `route` label too
    }
    for label in ("route", "method", "status", "outcome", "model", "upstream"):
        values = label_values(prometheus, label)
        assert not [value for value in values if re.search(r"[0-9a-f]{12}", value)], label
        assert len(values) < 40, (label, values)
    series = prometheus.scalar("count({__name__=~'http_.*|gateway_.*|llm_.*|audits_.*'})")
    assert series < 600


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    templates = {"$job": ".*", "$__rate_interval": "1m"}
    queries = []
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in templates.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


def test_every_dashboard_query_runs_on_metrics_the_services_expose(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    prometheus.wait_until('count(up{job=~"gateway|audits|llm"} == 1)', 3)
    exposed = prometheus.metric_names()
    for query in dashboard_queries():
        names = set(re.findall(r"\b(?:http|gateway|llm|audits)_[a-z0-9_]+\b", query))
        assert names, query
        assert names <= exposed, (query, names - exposed)
        prometheus.query(query)


def test_the_gateways_metrics_are_not_on_its_public_port(scraped: Scraped) -> None:
    response = httpx.get(f"{scraped.gateway}/metrics")
    assert response.status_code == 404
    assert "http_requests_total" not in response.text
