"""Per-client rate limits and optional API keys, counted in Redis by the
``limits`` library (the seed used flask-limiter, built on the same library).

The client is its address as the proxy-headers middleware resolved it
(``X-Forwarded-For`` believed only from ``PRICEPIPE_API_TRUSTED_PROXIES``),
or its API key when it sends a valid ``X-API-Key``; a wrong key counts
against its address, then is refused with 401. Refusals are 429 with
``Retry-After`` in whole seconds.

When Redis cannot count, requests are let through (fail open) and counted
in ``pricepipe_api_rate_limit_errors_total``: a Redis outage should not take
the history API down with it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import RedisClusterStorage, RedisStorage, Storage
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.exceptions import HTTPException
from starlette.requests import Request

from pricepipe.config import RedisSettings
from pricepipe.keys import Keys

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"


def redis_storage(settings: RedisSettings, keys: Keys, client: Any) -> Storage:
    """``limits`` storage on the deployment's Redis, keys under
    :meth:`~pricepipe.keys.Keys.rate_limits`. A single server shares the
    connection pool of ``client``; a cluster gets its own client."""
    url = settings.require_url()
    if settings.cluster:
        scheme, rest = url.split("://", 1)
        return RedisClusterStorage(f"{scheme}+cluster://{rest}", wrap_exceptions=True,
                                   key_prefix=keys.rate_limits())
    return RedisStorage(url, wrap_exceptions=True, key_prefix=keys.rate_limits(),
                        connection_pool=client.connection_pool)


def key_id(api_key: str) -> str:
    """What a key is counted under: a digest, so keys never appear in Redis."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class RateLimiter:
    """Checks one request; use :meth:`check` as a FastAPI dependency's body."""

    def __init__(
        self, storage: Storage | None, *, per_address: str | None, per_key: str | None,
        api_keys: tuple[str, ...] = (), key_required: bool = False,
        on_refused: Callable[[], None] = lambda: None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(storage) if storage else None
        self._per_address: list[RateLimitItem] = parse_many(per_address) if per_address else []
        self._per_key: list[RateLimitItem] = parse_many(per_key) if per_key else []
        self._keys = tuple(k.encode() for k in api_keys)
        self._key_required = key_required
        self._on_refused = on_refused
        self._on_error = on_error

    def _valid_key(self, presented: str) -> bool:
        candidate = presented.encode()
        # Compare against every key, in constant time for each.
        return any([hmac.compare_digest(candidate, k) for k in self._keys])

    @staticmethod
    def address_identity(request: Request) -> str:
        """What a request without a valid key is counted under: its address."""
        return f"ip:{request.client.host if request.client else 'unknown'}"

    def identity(self, request: Request) -> tuple[str, list[RateLimitItem]]:
        """``(who, limits)`` of a request; raises 401 for a bad or missing key."""
        presented = request.headers.get(API_KEY_HEADER)
        if presented is not None:
            if not self._keys or not self._valid_key(presented):
                raise HTTPException(401, "invalid API key")
            return f"key:{key_id(presented)}", self._per_key
        if self._key_required:
            raise HTTPException(401, f"this API needs an {API_KEY_HEADER} header")
        return self.address_identity(request), self._per_address

    def check(self, request: Request) -> None:
        """Count the request; raise :class:`HTTPException` 401 or 429.

        A request refused for its key (wrong or missing) counts against its
        address's limit first, like any request without a valid key: guessing
        keys is limited here too, not only by nginx, and once over the limit
        the answer is 429 whether or not the key was right.

        Blocking (one Redis round trip per limit): call it from a thread,
        as FastAPI does for a sync dependency.
        """
        try:
            who, items = self.identity(request)
        except HTTPException:
            self._count(self.address_identity(request), self._per_address)
            raise
        self._count(who, items)

    def _count(self, who: str, items: list[RateLimitItem]) -> None:
        """Hit every limit of ``who``; raise 429 at the first one exceeded."""
        if self._limiter is None:
            return
        for item in items:
            try:
                allowed = self._limiter.hit(item, who)
                if allowed:
                    continue
                reset_s = self._limiter.get_window_stats(item, who).reset_time
            except (StorageError, redis.RedisError, OSError) as exc:
                log.warning("rate limit not checked, redis failed: %s", exc)
                self._on_error()
                return
            self._on_refused()
            retry_after_s = max(1, math.ceil(reset_s - time.time()))
            raise HTTPException(
                429, f"rate limit exceeded: {item}; retry in {retry_after_s} s",
                headers={"Retry-After": str(retry_after_s)},
            )
