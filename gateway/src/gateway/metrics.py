"""The gateway's own metrics: upstream exchanges by outcome and their durations, retries and
rate-limited requests; and the listener they are served on, apart from the public one."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from loguru import logger
from prometheus_client import Counter, Histogram, start_http_server

from servicekit.metrics import DURATION_BUCKETS

UPSTREAM_RESPONSES = Counter(
    "gateway_upstream_requests_total",
    "Requests forwarded to an upstream, by upstream and outcome: the response's status class "
    "(2xx … 5xx), `timeout` or `unavailable`.",
    ["upstream", "outcome"],
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time from sending a request upstream to the upstream's response head, by upstream.",
    ["upstream"],
    buckets=DURATION_BUCKETS,
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries_total",
    "Idempotent requests sent again after a connection error, by upstream.",
    ["upstream"],
)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused with 429 by the gateway's per-client limit, by upstream.",
    ["upstream"],
)

_OUTCOMES = ("1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "unavailable")


class UpstreamMetrics:
    """One upstream's series, bound once, so a request records without a label lookup."""

    def __init__(self, upstream: str) -> None:
        self._outcomes = {
            outcome: UPSTREAM_RESPONSES.labels(upstream, outcome) for outcome in _OUTCOMES
        }
        self._duration = UPSTREAM_DURATION.labels(upstream)
        self._retries = UPSTREAM_RETRIES.labels(upstream)
        self._rate_limited = RATE_LIMITED.labels(upstream)

    def response(self, status: int, seconds: float) -> None:
        self._outcomes[f"{min(max(status // 100, 1), 5)}xx"].inc()
        self._duration.observe(seconds)

    def failure(self, timed_out: bool, seconds: float) -> None:
        self._outcomes["timeout" if timed_out else "unavailable"].inc()
        self._duration.observe(seconds)

    def retry(self) -> None:
        self._retries.inc()

    def rate_limited(self) -> None:
        self._rate_limited.inc()


@contextmanager
def metrics_listener(host: str, port: int) -> Iterator[None]:
    """`/metrics` on `host:port`, served from a thread of its own while the block runs."""
    server: WSGIServer
    thread: threading.Thread
    server, thread = start_http_server(port, addr=host)
    logger.info("metrics listener started", host=host, port=server.server_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
