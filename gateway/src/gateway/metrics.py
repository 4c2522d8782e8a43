"""The gateway's own metrics: upstream exchanges by outcome and their durations, retries,
rate-limited and access-refused requests, admitted requests by key id; and the listener they
are served on, apart from the public one."""

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

AUTH_REJECTED = Counter(
    "gateway_auth_rejected_total",
    "Requests refused by access control, by upstream and code (`unauthorized`: no valid key, "
    "`forbidden`: the key lacks the scope).",
    ["upstream", "code"],
)
CLIENT_REQUESTS = Counter(
    "gateway_client_requests_total",
    "Requests admitted by access control, by upstream and the key's id (never the key).",
    ["upstream", "client_id"],
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
        self._upstream = upstream
        # By key id, bound on a key's first request: as many as the keys file has had.
        self._clients: dict[str, Counter] = {}

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

    def refused(self, status: int, code: str) -> None:
        """Access control refused the request: a limit (429), or no key or scope for it."""
        if status == 429:
            self._rate_limited.inc()
        else:
            AUTH_REJECTED.labels(self._upstream, code).inc()

    def admitted(self, client_id: str) -> None:
        series = self._clients.get(client_id)
        if series is None:
            series = self._clients[client_id] = CLIENT_REQUESTS.labels(self._upstream, client_id)
        series.inc()


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
