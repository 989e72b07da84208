"""Every Redis key and consumer-group name pricepipe uses, in one place.

Layout (``pp`` is the configurable prefix, ``N`` the shard of a symbol)::

    pp:{sN}:ticks:<SYMBOL>   stream, one per symbol, entries per codec.encode_fields
    pp:{sN}:symbols          set, registry of the symbols of shard N
    pp:{sN}:dlq              stream, dead letters of shard N (entries that could not be persisted)
    pp:hb:<role>:<name>      string with TTL, a process's heartbeat
    pp:rq                    prefix of rq queues (see :meth:`Keys.rq_queue`)
    pp:ratelimit             prefix of the HTTP API's rate-limit counters (the ``limits`` library)

Redis Cluster: the ``{sN}`` hash tag puts every key of a shard in one hash
slot, so a multi-key command (``XREADGROUP`` over several streams, a
``MULTI`` over a stream and its registry) is only ever issued on the keys of
one shard. Code that touches several keys must group them with
:meth:`Keys.by_shard` first.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

#: Consumer group of the persist workers, created on every tick stream.
PERSIST_GROUP = "persist"


def shard_of(symbol: str, shards: int) -> int:
    """Stable shard of a symbol: CRC-32 of its name modulo ``shards``."""
    return zlib.crc32(symbol.encode()) % shards


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment (prefix and shard count)."""

    prefix: str = "pp"
    shards: int = 8

    def shard(self, symbol: str) -> int:
        return shard_of(symbol, self.shards)

    def tag(self, shard: int) -> str:
        return f"{{s{shard}}}"

    def stream(self, symbol: str) -> str:
        return f"{self.prefix}:{self.tag(self.shard(symbol))}:ticks:{symbol}"

    def symbol_of(self, stream_key: bytes | str) -> str:
        """Inverse of :meth:`stream`."""
        text = stream_key.decode() if isinstance(stream_key, bytes) else stream_key
        return text.rsplit(":ticks:", 1)[1]

    def symbols(self, shard: int) -> str:
        return f"{self.prefix}:{self.tag(shard)}:symbols"

    def dead_letters(self, shard: int) -> str:
        return f"{self.prefix}:{self.tag(shard)}:dlq"

    def heartbeat(self, role: str, name: str) -> str:
        return f"{self.prefix}:hb:{role}:{name}"

    def heartbeat_pattern(self, role: str = "*") -> str:
        return f"{self.prefix}:hb:{role}:*"

    def all_pattern(self) -> str:
        """``SCAN`` pattern of every key above (not rq's, which rq names)."""
        return f"{self.prefix}:*"

    def rq_queue(self, name: str) -> str:
        """Name of an rq queue (rq adds its own ``rq:queue:`` key prefix)."""
        return f"{self.prefix}-{name}"

    def rate_limits(self) -> str:
        """Key prefix handed to the ``limits`` library; it appends its own
        suffixes (and braces, so each counter stays in one cluster slot)."""
        return f"{self.prefix}:ratelimit"

    def all_shards(self) -> range:
        return range(self.shards)

    def by_shard(self, symbols: Iterable[str]) -> dict[int, list[str]]:
        """Group symbols by shard, so that multi-key commands stay in one slot."""
        groups: dict[int, list[str]] = defaultdict(list)
        for symbol in symbols:
            groups[self.shard(symbol)].append(symbol)
        return dict(groups)
