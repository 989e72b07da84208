"""Whether the history already holds every entry of an entry-ID range: the
``complete`` flag of an ID-range page.

An entry reaches PostgreSQL when a persist worker's transaction commits,
and only then is it acknowledged in the stream's consumer group; so every
entry below the group's persisted floor
(:func:`pricepipe.streams.persisted_floor`: the oldest pending entry, else
the one after the last delivered) is stored, or dead-lettered, which is
final too. A range ``after < id < until`` is complete once ``until`` is at
or below that floor. The floor is read before the rows are: rows committed
before the floor was read are visible to a query that starts afterwards.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from pricepipe import codec, streams
from pricepipe.keys import Channel, Keys

log = logging.getLogger(__name__)


def covers(floor: str | None, until_id: str) -> bool | None:
    """True when every entry below ``until_id`` is below ``floor`` (so is
    persisted); None when the floor is unknown. IDs compare as numbers."""
    if floor is None:
        return None
    return codec.parse_entry_id(until_id) <= codec.parse_entry_id(floor)


def range_complete(r: Any, keys: Keys, symbol: str, channel: Channel,
                   until_id: str) -> bool | None:
    """Whether the history of ``symbol``'s ``channel`` stream holds every
    entry below ``until_id`` that it ever will.

    None when that cannot be told: the stream has no persist group (not
    registered, or gone), or Redis does not answer. Never raises for
    those: the history is served from PostgreSQL whatever Redis does.
    """
    try:
        floor = streams.persisted_floor(r, keys.stream(symbol, channel))
    except (redis.RedisError, OSError) as exc:
        log.warning("persisted floor of %s %s unknown: %s", symbol, channel, exc)
        return None
    return covers(floor, until_id)
