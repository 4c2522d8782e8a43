"""The LLM service's own metrics: upstream calls and their attempts, tokens, time to first
chunk. `route` is the kind of call (`chat`, `wire`, `responses`, `embeddings`, `models`),
`model` one of the allowlist's: both bounded whatever clients send."""

from prometheus_client import Counter, Histogram

from servicekit.metrics import DURATION_BUCKETS

CALLS = Counter(
    "llm_upstream_calls_total",
    "Upstream calls (all their attempts), by route, model and outcome (`ok` or the error code).",
    ["route", "model", "outcome"],
)
CALL_DURATION = Histogram(
    "llm_upstream_call_duration_seconds",
    "Time from a call's first attempt to its end (a stream's last chunk), by route and model.",
    ["route", "model"],
    buckets=DURATION_BUCKETS,
)
ATTEMPTS = Counter(
    "llm_upstream_attempts_total",
    "Upstream attempts, by route, model and the upstream's answer: its HTTP status, "
    "`timeout` or `connection_error`.",
    ["route", "model", "status"],
)
RETRIES = Counter(
    "llm_upstream_retries_total",
    "Attempts after a call's first one, by route and model.",
    ["route", "model"],
)
TOKENS = Counter(
    "llm_tokens_total",
    "Tokens the upstream reported using, by model and kind (`prompt`, `completion`).",
    ["model", "kind"],
)
TIME_TO_FIRST_CHUNK = Histogram(
    "llm_time_to_first_chunk_seconds",
    "Time from a streaming call's first attempt to the upstream's first bytes, retries included.",
    ["route", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
