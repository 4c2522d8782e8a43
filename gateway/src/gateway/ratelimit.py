"""Per-client fixed-window rate limits: in memory, or shared by every replica through Redis."""

import math
import time
from dataclasses import dataclass
from typing import Protocol

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

WINDOW_SECONDS = 60

# INCR and the expiry in one atomic step, so a crash in between never leaves a key that
# limits a client forever; the window starts at a client's first request.
_HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int


class RateLimiter(Protocol):
    async def hit(self, key: str) -> Decision: ...

    async def aclose(self) -> None: ...


def _decide(limit: int, count: int, seconds_left: float) -> Decision:
    return Decision(
        allowed=count <= limit,
        limit=limit,
        remaining=max(limit - count, 0),
        retry_after=max(math.ceil(seconds_left), 1),
    )


class MemoryRateLimiter:
    """One process's counters; each gateway replica then limits on its own."""

    _SWEEP_AT = 100_000

    def __init__(self, limit: int, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._windows: dict[str, tuple[float, int]] = {}

    async def hit(self, key: str) -> Decision:
        now = time.monotonic()
        resets_at, count = self._windows.get(key, (0.0, 0))
        if resets_at <= now:
            if len(self._windows) >= self._SWEEP_AT:
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
            resets_at, count = now + self.window, 0
        count += 1
        self._windows[key] = (resets_at, count)
        return _decide(self.limit, count, resets_at - now)

    async def aclose(self) -> None:
        self._windows.clear()


class RedisRateLimiter:
    """Counters in Redis, shared by all replicas. If Redis fails, requests are let through:
    losing the limit for a moment is better than losing the LLM routes."""

    def __init__(self, url: str, limit: int, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window_ms = int(window * 1000)
        self._redis = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(_HIT_SCRIPT)

    async def hit(self, key: str) -> Decision:
        try:
            count, ttl_ms = await self._script(
                keys=[f"gateway:ratelimit:{key}"], args=[self.window_ms]
            )
        except (RedisError, OSError) as exc:
            logger.warning("rate limiter unavailable, request allowed", error=type(exc).__name__)
            return Decision(allowed=True, limit=self.limit, remaining=self.limit, retry_after=0)
        return _decide(self.limit, int(count), int(ttl_ms) / 1000)

    async def aclose(self) -> None:
        await self._redis.aclose()


class NoRateLimit:
    async def hit(self, key: str) -> Decision:
        return Decision(allowed=True, limit=0, remaining=0, retry_after=0)

    async def aclose(self) -> None:
        return None
