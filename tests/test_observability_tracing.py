"""Traces across real processes: gateway → audits → SQL and gateway → llm → OpenAI, exported
over OTLP/HTTP to a receiver here; an incoming `traceparent` continued; log lines joined."""

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.openai_standin import Fault, OpenAIStandin
from devstack.postgres import EmbeddedPostgres
from devstack.processes import ServiceProcess
from devstack.run import migrate
from tests.e2e_stack import STANDIN_API_KEY, gateway_env, llm_env, start_logged, wait_ready
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3  # OTLP span kinds
RECORD = {"action": "create", "actor": "tracer", "resource_type": "document", "resource_id": "d-1"}


@dataclass
class TracedStack:
    gateway: str
    receiver: OTLPReceiver
    standin: OpenAIStandin
    logs: Path

    def log_lines(self, service: str, request_id: str) -> list[dict[str, object]]:
        """The request's lines, once its access line is written (after the response)."""
        deadline = time.monotonic() + 10
        while True:
            lines = (self.logs / f"{service}.log").read_text().splitlines()
            parsed = [json.loads(line) for line in lines if line.startswith("{")]
            mine = [line for line in parsed if line.get("request_id") == request_id]
            if any(line["message"] == "request" for line in mine) or time.monotonic() > deadline:
                return mine
            time.sleep(0.05)


@pytest.fixture(scope="module")
def traced(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TracedStack]:
    logs = tmp_path_factory.mktemp("traced-logs")
    database_url = postgres.create_database("traced")
    migrate(database_url)
    started: list[ServiceProcess] = []
    with OTLPReceiver() as receiver, OpenAIStandin(api_key=STANDIN_API_KEY) as standin:
        tracing = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        try:
            audits_env = {"DATABASE_URL": database_url, **tracing}
            audits = start_logged("audits", audits_env, logs / "audits.log")
            started.append(audits)
            llm = start_logged("llm", {**llm_env(standin), **tracing}, logs / "llm.log")
            started.append(llm)
            gateway = start_logged(
                "gateway", gateway_env(audits.url, llm.url, **tracing), logs / "gateway.log"
            )
            started.append(gateway)
            wait_ready(gateway.url)
            yield TracedStack(gateway.url, receiver, standin, logs)
        finally:
            for service in reversed(started):
                service.stop()


def by_name(spans: list[ReceivedSpan], service: str, name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.service == service and span.name == name]


def only(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = by_name(spans, service, name)
    assert len(found) == 1, (service, name, spans)
    return found[0]


def sql_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [span for span in spans if span.service == "audits" and "db.system" in span.attributes]


def assert_one_tree(spans: list[ReceivedSpan], root_parent: str) -> None:
    """Every span's parent is in the trace, but the root's, which is `root_parent`."""
    ids = {span.span_id for span in spans}
    roots = [span for span in spans if span.parent_id not in ids]
    assert [root.parent_id for root in roots] == [root_parent], roots


def test_an_audits_request_is_one_trace_down_to_sql_continuing_the_clients(
    traced: TracedStack,
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    response = httpx.post(
        f"{traced.gateway}/api/v1/audits",
        json=RECORD,
        headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
    )
    assert response.status_code == 201

    spans = traced.receiver.wait_for(
        trace_id,
        lambda spans: (
            bool(by_name(spans, "gateway", "POST /api/v1/audits/{path}")) and bool(sql_spans(spans))
        ),
    )
    gateway = only(spans, "gateway", "POST /api/v1/audits/{path}")
    proxy = only(spans, "gateway", "proxy audits")
    audits = only(spans, "audits", "POST /api/v1/audits")
    assert (gateway.kind, gateway.parent_id) == (SERVER, client_span)
    assert gateway.attributes["http.route"] == "/api/v1/audits/{path}"
    assert (proxy.kind, proxy.parent_id) == (CLIENT, gateway.span_id)
    assert proxy.attributes["http.response.status_code"] == 201
    assert (audits.kind, audits.parent_id) == (SERVER, proxy.span_id)
    assert audits.attributes["http.route"] == "/api/v1/audits"
    assert any("INSERT" in span.name for span in sql_spans(spans))
    assert_one_tree(spans, client_span)

    request_id = response.headers["x-request-id"]
    for service in ("gateway", "audits"):
        lines = traced.log_lines(service, request_id)
        assert lines, service
        assert {line["trace_id"] for line in lines} == {trace_id}
        span_ids = {span.span_id for span in spans if span.service == service}
        assert {line["span_id"] for line in lines} <= span_ids


def test_a_request_without_traceparent_starts_its_own_trace(traced: TracedStack) -> None:
    # Without the count, the page's own query is the request's one statement.
    params = {"limit": "1", "include_total": "false"}
    response = httpx.get(f"{traced.gateway}/api/v1/audits", params=params)
    assert response.status_code == 200
    [line] = [
        line
        for line in traced.log_lines("gateway", response.headers["x-request-id"])
        if line["message"] == "request"
    ]
    trace_id = str(line["trace_id"])
    spans = traced.receiver.wait_for(
        trace_id,
        lambda spans: (
            bool(by_name(spans, "audits", "GET /api/v1/audits"))
            and bool(by_name(spans, "gateway", "GET /api/v1/audits/{path}"))
            and bool(sql_spans(spans))
        ),
    )
    assert only(spans, "gateway", "GET /api/v1/audits/{path}").parent_id == ""
    [page] = sql_spans(spans)
    assert (page.kind, page.name.split()[0]) == (CLIENT, "SELECT")
    assert "FROM audit_record" in str(page.attributes["db.statement"])
    assert_one_tree(spans, "")


def test_an_llm_call_traces_its_attempts_and_stream_to_the_upstream(traced: TracedStack) -> None:
    traced.standin.reset()
    traced.standin.script(Fault.error(500))
    trace_id = secrets.token_hex(16)
    body = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True}
    with httpx.stream(
        "POST",
        f"{traced.gateway}/api/v1/openai/chat",
        json=body,
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    ) as response:
        assert response.status_code == 200
        assert "[DONE]" in response.read().decode()

    spans = traced.receiver.wait_for(
        trace_id,
        lambda spans: (
            bool(by_name(spans, "llm", "openai chat"))
            and bool(by_name(spans, "gateway", "POST /api/v1/openai/{path}"))
        ),
    )
    proxy = only(spans, "gateway", "proxy llm")
    only(spans, "gateway", "proxy stream")
    server = only(spans, "llm", "POST /api/v1/openai/chat")
    call = only(spans, "llm", "openai chat")
    attempts = by_name(spans, "llm", "openai attempt")
    stream = only(spans, "llm", "openai stream")
    assert server.parent_id == proxy.span_id
    assert call.parent_id == server.span_id
    assert [a.parent_id for a in attempts] == [call.span_id] * 2
    assert sorted(a.attributes["llm.upstream_status"] for a in attempts) == ["200", "500"]
    assert stream.parent_id == call.span_id
    assert call.attributes["llm.attempts"] == 2
    assert call.attributes["gen_ai.usage.completion_tokens"] > 0
    sent = [c.headers["traceparent"] for c in traced.standin.calls]
    assert sent == [f"00-{trace_id}-{a.span_id}-01" for a in attempts]
