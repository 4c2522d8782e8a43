"""The audits service's own metrics: its database connection pool."""

from prometheus_client import Counter, Gauge, Histogram

POOL_WAIT = Histogram(
    "audits_db_pool_wait_seconds",
    "Time a checkout waited for a connection of the pool.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
POOL_TIMEOUTS = Counter(
    "audits_db_pool_timeouts_total",
    "Checkouts that gave up after DB_POOL_TIMEOUT without a connection (answered 503).",
)
POOL_IN_USE = Gauge("audits_db_pool_connections_in_use", "Connections checked out of the pool.")
POOL_LIMIT = Gauge(
    "audits_db_pool_connections_limit",
    "Connections the pool may hold at most (DB_POOL_SIZE + DB_MAX_OVERFLOW).",
)
