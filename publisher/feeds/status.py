"""Writing a feed's status events and state to Redis (the formats are the
core's, :mod:`pricepipe.feedstatus`; the keys :mod:`pricepipe.keys`'s).

A status event and the state after it go in one ``MULTI`` (both keys share
the ``{feeds}`` hash tag), so a reader never sees a state older than the
newest event. The status stream is capped (``MAXLEN ~``): it is a recent
history for dashboards, not a record kept forever.

Redis outages are waited out with capped, jittered backoff (until a stop);
a write Redis refuses (``OOM`` when full) is logged and skipped, so a full
Redis never stops the feed.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff

from pricepipe.feedstatus import FeedStatus, encode_status
from pricepipe.keys import Keys
from pricepipe.stop import StopRequest

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class StatusWriter:
    """Writes one feed's status; not thread-safe (one writer thread)."""

    def __init__(self, r: Any, keys: Keys, feed: str, *, stop: StopRequest,
                 maxlen: int = 10_000) -> None:
        self.r = r
        self.keys = keys
        self.feed = feed
        self.stop = stop
        self.maxlen = maxlen
        self._backoff = ExponentialWithJitterBackoff(cap=5.0, base=0.05)

    def write(self, status: FeedStatus | None, state: bytes) -> bool:
        """Append ``status`` (if any) and set the feed's ``state``; True if
        written. Retries through Redis outages until a stop."""
        failures = 0
        while True:
            try:
                pipe = self.r.pipeline(transaction=True)
                if status is not None:
                    field, value = encode_status(status)
                    pipe.xadd(self.keys.feed_status(), {field: value}, maxlen=self.maxlen,
                              approximate=True)
                pipe.hset(self.keys.feed_states(), self.feed, state)
                pipe.execute()
                return True
            except _CONNECTION_ERRORS as exc:
                failures += 1
                delay_s = self._backoff.compute(failures)
                log.warning("feed %s: status not written, redis unreachable (%s); retry in "
                            "%.2fs", self.feed, exc, delay_s)
                if self.stop.wait(delay_s):
                    return False
            except redis.ResponseError as exc:
                log.warning("feed %s: redis refused the status write (%s): %s", self.feed,
                            exc, status)
                return False
