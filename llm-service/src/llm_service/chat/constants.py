MAX_MESSAGES = 256
"""Messages per request."""
MAX_MESSAGE_CHARS = 256_000
"""Characters of text in one message."""
MAX_TOTAL_CHARS = 512_000
"""Characters of text in all messages of one request."""
MAX_EMBEDDING_INPUTS = 2048
"""Inputs of one embeddings request (OpenAI's own limit)."""
MAX_EMBEDDING_DIMENSIONS = 3072
"""`dimensions` of an embedding (OpenAI's largest model's)."""

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
INITIAL_RETRY_WAIT = 0.5
"""Seconds: the ceiling of the first full-jitter wait; it doubles per retry."""
MAX_RETRY_WAIT = 8.0

KEY_CHECK_TIMEOUT = 10.0
"""Seconds the start-up key check may take at most."""

MODELS_CACHE_TTL = 60.0
"""Seconds the upstream's model list is reused before it is asked again."""
