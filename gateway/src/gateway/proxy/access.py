"""Access control of the proxied routes (`AUTH_MODE=api_key`): who is calling, may they, and
how much is left of their budget. Nothing reaches an upstream before `AccessControl.admit`
said yes.

Counters are fixed one-minute windows of the `limits` library, in this process's memory or,
with `REDIS_URL`, in Redis (an atomic increment-and-expire script), so every replica shares
one budget per key. If Redis fails, requests are let through and a warning logged: losing a
limit for a moment is better than losing the platform.
"""

import math
import time
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Protocol

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.errors import StorageError
from loguru import logger
from redis.asyncio import ConnectionPool

from gateway.keys import KeyEntry, KeyStore, Scope
from gateway.proxy.headers import RequestHeaders
from servicekit import Forbidden, RateLimited, ServiceError, Unauthorized

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Query parameters a key could be sent in by mistake: such a request is refused, so a key
# never travels in a URL that proxies and browsers keep in their logs and history.
_KEY_QUERY_PARAMETERS = frozenset({b"api_key", b"apikey", b"key", b"access_token"})
_CHALLENGE = 'Bearer realm="api"'
# What a browser client on another origin may read of an answer when access control is on.
ACCESS_CONTROL_HEADERS = (
    "WWW-Authenticate",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)


def required_scope(upstream: str, method: str) -> Scope:
    if upstream == "llm":
        return Scope.LLM
    if method in _READ_METHODS:
        return Scope.AUDITS_READ
    return Scope.AUDITS_WRITE if method == "POST" else Scope.AUDITS_ADMIN


@dataclass(frozen=True, slots=True)
class Quota:
    """One limit's state, as the `RateLimit-*` headers tell it."""

    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted request: whose it is, the tightest of its limits, and whether the tokens
    its response reports are to be counted."""

    key: KeyEntry
    quota: Quota | None
    counts_tokens: bool


@cache
def _per_minute(amount: int, namespace: str) -> RateLimitItem:
    return RateLimitItemPerMinute(amount, namespace=namespace)


@lru_cache(maxsize=65_536)
def _window_key(item: RateLimitItem, name: str) -> str:
    return item.key_for(name)


class WindowStorage(Protocol):
    """What a fixed window needs of a storage: `limits`' storages have it."""

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...

    async def get(self, key: str) -> int: ...

    async def get_expiry(self, key: str) -> float: ...


class MemoryWindows:
    """One process's windows. `limits`' own memory storage starts a sweeping task on every
    increment, a cost each proxied request would pay; here expired windows are dropped when
    read, and all at once when there are many."""

    _SWEEP_AT = 100_000

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        expires, count = self._windows.get(key, (0.0, 0))
        if expires <= now:
            if len(self._windows) >= self._SWEEP_AT:
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
            expires, count = now + expiry, 0
        self._windows[key] = (expires, count + amount)
        return count + amount

    async def get(self, key: str) -> int:
        expires, count = self._windows.get(key, (0.0, 0))
        return count if expires > time.time() else 0

    async def get_expiry(self, key: str) -> float:
        expires, _ = self._windows.get(key, (0.0, 0))
        return max(expires, time.time())


class Counters:
    """Fixed one-minute windows, failing open when their storage fails.

    The fixed-window strategy is "increment, then compare with the limit"; the storage's
    `incr` (atomic with its expiry: a Lua script in Redis) returns the count, which with the
    window's expiry is all the `RateLimit-*` headers need: two storage calls per hit."""

    def __init__(self, redis_url: str | None) -> None:
        self._pool: ConnectionPool | None = None
        self._storage: WindowStorage
        if redis_url is None:
            self._storage = MemoryWindows()
        else:
            self._pool = ConnectionPool.from_url(
                redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            self._storage = RedisStorage(
                f"async+{redis_url}",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix="gateway:limits",
                # The library passes it on to redis-py, which takes a pool here.
                connection_pool=self._pool,  # type: ignore[arg-type]
            )

    async def hit(self, item: RateLimitItem, name: str, cost: int = 1) -> Quota | None:
        """Counts `cost` and returns what is left (below 0: over the limit); None when the
        storage failed."""
        key = _window_key(item, name)
        try:
            count = await self._storage.incr(key, item.get_expiry(), amount=cost)
            reset = await self._storage.get_expiry(key)
        except StorageError as exc:
            logger.warning("rate limit storage unavailable, request allowed", error=str(exc))
            return None
        return Quota(item.amount, item.amount - count, _seconds_until(reset))

    async def peek(self, item: RateLimitItem, name: str) -> Quota | None:
        key = _window_key(item, name)
        try:
            count = await self._storage.get(key)
            reset = await self._storage.get_expiry(key)
        except StorageError as exc:
            logger.warning("rate limit storage unavailable, request allowed", error=str(exc))
            return None
        return Quota(item.amount, max(item.amount - count, 0), _seconds_until(reset))

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def _seconds_until(reset_time: float) -> int:
    return max(math.ceil(reset_time - time.time()), 0)


def _refused(detail: str, quota: Quota) -> RateLimited:
    return RateLimited(
        detail,
        headers={
            "Retry-After": str(max(quota.reset, 1)),
            **Quota(quota.limit, 0, quota.reset).headers(),
        },
    )


def _tighter(first: Quota | None, second: Quota | None) -> Quota | None:
    if first is None or second is None:
        return first or second
    return first if first.remaining * second.limit <= second.remaining * first.limit else second


class AccessControl:
    def __init__(self, keys: KeyStore, counters: Counters, failures_per_minute: int) -> None:
        self.keys = keys
        self.counters = counters
        self.failures_per_minute = failures_per_minute

    async def admit(
        self, headers: RequestHeaders, upstream: str, method: str, query: bytes
    ) -> Grant:
        """The caller's grant, or the `ServiceError` that refuses the request."""
        if _names_a_key(query):
            raise await self._failed(headers, "API keys are not accepted in the query string.")
        presented = headers.presented_key()
        if presented is None:
            raise await self._failed(headers, "An API key is required.", error=None)
        key = self.keys.find(presented)
        if key is None:
            raise await self._failed(headers, "The API key is not valid.")
        scope = required_scope(upstream, method)
        if scope not in key.scopes:
            challenge = f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'
            raise Forbidden(
                f"The key {key.id!r} lacks the scope {scope}.",
                headers={"WWW-Authenticate": challenge},
            )
        return await self._within_limits(key, upstream == "llm")

    async def _within_limits(self, key: KeyEntry, llm: bool) -> Grant:
        quota = None
        if key.requests_per_minute is not None:
            item = _per_minute(key.requests_per_minute, "requests")
            quota = await self.counters.hit(item, key.id)
            if quota is not None and quota.remaining < 0:
                raise _refused(f"More than {item.amount} requests per minute.", quota)
        counts_tokens = llm and key.tokens_per_minute is not None
        if counts_tokens and key.tokens_per_minute is not None:
            tokens = await self.counters.peek(_per_minute(key.tokens_per_minute, "tokens"), key.id)
            if tokens is not None and tokens.remaining <= 0:
                raise _refused(f"The budget of {tokens.limit} tokens per minute is spent.", tokens)
            quota = _tighter(quota, tokens)
        return Grant(key, quota, counts_tokens)

    async def spend_tokens(self, key: KeyEntry, tokens: int) -> None:
        """Counts what an admitted response used; it may take the key past its budget (the
        response is never cut short), and then the key's next request waits."""
        if key.tokens_per_minute is not None and tokens > 0:
            await self.counters.hit(_per_minute(key.tokens_per_minute, "tokens"), key.id, tokens)

    async def _failed(
        self, headers: RequestHeaders, detail: str, error: str | None = "invalid_token"
    ) -> ServiceError:
        """The 401 for a failed check, or a 429 once the client IP failed too often."""
        if self.failures_per_minute:
            item = _per_minute(self.failures_per_minute, "auth-failures")
            quota = await self.counters.hit(item, headers.client_ip())
            if quota is not None and quota.remaining < 0:
                logger.warning("repeated failed key checks", client_ip=headers.client_ip())
                return RateLimited(
                    f"More than {item.amount} failed key checks per minute from this address.",
                    headers={"Retry-After": str(max(quota.reset, 1))},
                )
        challenge = _CHALLENGE if error is None else f'{_CHALLENGE}, error="{error}"'
        return Unauthorized(detail, headers={"WWW-Authenticate": challenge})


def _names_a_key(query: bytes) -> bool:
    if not query:
        return False
    return any(
        pair.partition(b"=")[0].lower() in _KEY_QUERY_PARAMETERS for pair in query.split(b"&")
    )
