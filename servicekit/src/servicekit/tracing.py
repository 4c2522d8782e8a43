"""OpenTelemetry traces, configured by the SDK's standard `OTEL_*` environment variables.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then
spans go to that OTLP/HTTP endpoint in batches, sampled by `OTEL_TRACES_SAMPLER` (every trace
by default, a parent's decision followed). Off, nothing here runs per request: FastAPI's own
instrumentation stays disabled and the code that makes spans asks `tracing_enabled()` first.

FastAPI makes each request's server span, continuing an incoming W3C `traceparent`, and names
it by route template; services add spans under it (the gateway's proxy exchange, SQL, OpenAI
calls) and send `traceparent` on with their own calls, so one client request is one trace.
"""

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from functools import cache
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# Tracing off: FastAPI's per-request check for configured providers would still run on
# every request (`make bench`, row `proxy`, CPU/request note).
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate"})


def tracing_requested() -> bool:
    """An OTLP endpoint is configured and the SDK is not disabled."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in _ENDPOINTS)


class _State:
    provider: TracerProvider | None = None


def tracing_enabled() -> bool:
    return _State.provider is not None


@cache
def _provider(service: str) -> TracerProvider:
    """The process's one provider, also the global one (instrumentations find it there)."""
    # Imported here: the exporter and protobuf cost every process's start-up, traced or not
    # (see `make bench`, row `cold-start`).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def configure_tracing(service: str) -> TelemetryConfig:
    """Tracing for this process when requested; the `FastAPI(telemetry=...)` to go with it:
    request spans only (no operation spans, metrics or logs of FastAPI's)."""
    if not tracing_requested():
        return NO_TELEMETRY
    _State.provider = _provider(service)
    return {
        "tracer_provider": _State.provider,
        "tracing": True,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
    }


def flush_traces_at_shutdown(app: FastAPI) -> None:
    """Once the lifespan has ended, export the spans still buffered."""
    lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def flushing(app: Any) -> AsyncIterator[Any]:
        try:
            async with lifespan(app) as state:
                yield state
        finally:
            if _State.provider is not None:
                _State.provider.force_flush()

    app.router.lifespan_context = flushing


def span(
    tracer: trace.Tracer,
    name: str,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, str | int] | None = None,
) -> AbstractContextManager[trace.Span | None]:
    """A child of the current span, current while the block runs; nothing when not tracing."""
    if _State.provider is None:
        return nullcontext()
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def trace_context() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for an outgoing request."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def trace_context_headers() -> list[tuple[bytes, bytes]]:
    """`trace_context()` as raw header pairs."""
    return [(name.encode(), value.encode()) for name, value in trace_context().items()]


def without_trace_context(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` without a trace context (the client's, replaced by the current span's)."""
    return [(name, value) for name, value in headers if name.lower() not in _CONTEXT_HEADERS]


def current_trace_ids() -> dict[str, str]:
    """`trace_id` and `span_id` of the current span, for a log line; none when not traced."""
    if _State.provider is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
