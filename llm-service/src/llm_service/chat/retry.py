"""The one retry policy for upstream calls: `backoff`, exponential waits with full jitter.

The SDK's own retries are off (`max_retries=0`), so this is the only place a call repeats.
"""

import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Generator
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar, cast

import backoff
import httpx2

from llm_service.chat.constants import INITIAL_RETRY_WAIT, MAX_RETRY_WAIT, RETRYABLE_STATUSES
from llm_service.chat.exceptions import MalformedUpstreamResponse, UpstreamStatusError

P = ParamSpec("P")
T = TypeVar("T")

UPSTREAM_FAILURES = (UpstreamStatusError, httpx2.TransportError, MalformedUpstreamResponse)
"""Everything an attempt raises when the upstream (not our code) failed."""


def is_retryable(exc: Exception) -> bool:
    if isinstance(exc, UpstreamStatusError):
        return exc.status in RETRYABLE_STATUSES
    return isinstance(exc, httpx2.TransportError)


def retry_after(exc: Exception | None) -> float | None:
    """Seconds the upstream asked us to wait (`retry-after-ms`, then `retry-after`)."""
    if not isinstance(exc, UpstreamStatusError):
        return None
    headers = exc.headers
    if milliseconds := headers.get("retry-after-ms"):
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def _waits(budget: float) -> Generator[float, Exception | None, None]:
    """Full-jitter exponential waits, at least what `Retry-After` asks, within `budget`.

    backoff primes the generator before the first attempt and then sends each failure.
    Returning gives up: the wait the upstream asks for does not fit in the time left.
    """
    started = time.monotonic()
    failure = yield 0.0
    ceiling = INITIAL_RETRY_WAIT
    while True:
        remaining = budget - (time.monotonic() - started)
        asked = retry_after(failure)
        if remaining <= 0 or (asked is not None and asked > remaining):
            return
        wait = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        if asked is not None:
            wait = max(wait, asked)
        ceiling = min(ceiling * 2, MAX_RETRY_WAIT)
        failure = yield min(wait, remaining)


def retry_policy(
    max_retries: int, max_time: float
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Retry on 408/409/429/5xx, connection errors and timeouts; never on other statuses."""
    decorator = backoff.on_exception(
        _waits,
        UPSTREAM_FAILURES,
        max_tries=max_retries + 1,
        max_time=max_time,
        jitter=None,
        giveup=lambda exc: not is_retryable(exc),
        logger=None,
        budget=max_time,
    )
    return cast("Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]", decorator)
