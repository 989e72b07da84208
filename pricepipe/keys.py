"""Every Redis key and consumer-group name pricepipe uses, in one place.

Layout (``pp`` is the configurable prefix, ``N`` the shard of a symbol)::

    pp:{sN}:trades:<SYMBOL>  stream of the symbol's trades (codec: field ``t``)
    pp:{sN}:quotes:<SYMBOL>  stream of the symbol's quotes (codec: field ``q``)
    pp:{sN}:bars.1m:<SYMBOL> stream of its one-minute bars as they change (field ``b``),
                             written by the persist workers after each commit
    pp:{sN}:barstate:<SYMBOL> hash, per recent minute the trade count last published on
                             the bars stream and whether it was final (a script keeps
                             updates from several workers in order)
    pp:{sN}:trimmed          hash, per stream of shard N the newest entry ID trimming has
                             removed (a reader behind it has missed entries)
    pp:{sN}:groupgaps        hash, "<stream>|<group>" -> "<after> <until>": entries of the
                             stream a consumer group never got (trimmed past it by the
                             hard cap), until one of its readers reports them
    pp:{sN}:symbols          set, registry of the symbols of shard N
    pp:{sN}:dlq              stream, dead letters of shard N (entries that could not be persisted)
    pp:hb:<role>:<name>      string with TTL, a process's heartbeat
    pp:{feeds}:status        stream, the status events of every upstream feed (one field
                             ``s``: JSON, see :mod:`pricepipe.feedstatus`), capped in length
    pp:{feeds}:state         hash, feed name -> its current state (JSON, see
                             :mod:`pricepipe.feedstatus`): connection, last message, counts
    pp:sources               hash, symbol -> the source it was first published from (see
                             :mod:`pricepipe.sources`): a publisher of another source is
                             refused unless forced
    pp:rq                    prefix of rq queues (see :meth:`Keys.rq_queue`)
    pp:ratelimit             prefix of the HTTP API's rate-limit counters (the ``limits`` library)

A symbol's streams share its shard's tag, so a strategy that wants only
quotes reads only the quotes stream and never decodes a trade.

The two feed keys share the ``{feeds}`` hash tag, so a feed writes a status
event and its new state in one ``MULTI``, on Redis Cluster too.

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
from enum import StrEnum

#: Consumer group of the persist workers, created on every persisted stream.
PERSIST_GROUP = "persist"


class Channel(StrEnum):
    """The streams of a symbol, named as the websocket protocol names them."""

    TRADES = "trades"
    QUOTES = "quotes"
    BARS_1M = "bars.1m"


#: Streams the persist workers write to PostgreSQL (bars are derived there).
PERSISTED = (Channel.TRADES, Channel.QUOTES)


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

    def stream(self, symbol: str, channel: Channel) -> str:
        return f"{self.prefix}:{self.tag(self.shard(symbol))}:{channel}:{symbol}"

    def trades(self, symbol: str) -> str:
        return self.stream(symbol, Channel.TRADES)

    def quotes(self, symbol: str) -> str:
        return self.stream(symbol, Channel.QUOTES)

    def bars(self, symbol: str) -> str:
        return self.stream(symbol, Channel.BARS_1M)

    def bar_state(self, symbol: str) -> str:
        return f"{self.prefix}:{self.tag(self.shard(symbol))}:barstate:{symbol}"

    def parse_stream(self, stream_key: bytes | str) -> tuple[Channel, str]:
        """Inverse of :meth:`stream`: ``(channel, symbol)``. Raises ``ValueError``
        for a key that is not a stream of this layout."""
        text = stream_key.decode() if isinstance(stream_key, bytes) else stream_key
        prefix, _tag, channel, symbol = text.split(":", 3)
        if prefix != self.prefix:
            raise ValueError(f"{text!r} is not under the prefix {self.prefix!r}")
        return Channel(channel), symbol

    def symbol_of(self, stream_key: bytes | str) -> str:
        """The symbol of a stream key (see :meth:`parse_stream`)."""
        return self.parse_stream(stream_key)[1]

    def symbols(self, shard: int) -> str:
        return f"{self.prefix}:{self.tag(shard)}:symbols"

    def trimmed(self, shard: int) -> str:
        return f"{self.prefix}:{self.tag(shard)}:trimmed"

    def group_gaps(self, shard: int) -> str:
        return f"{self.prefix}:{self.tag(shard)}:groupgaps"

    def dead_letters(self, shard: int) -> str:
        return f"{self.prefix}:{self.tag(shard)}:dlq"

    def heartbeat(self, role: str, name: str) -> str:
        return f"{self.prefix}:hb:{role}:{name}"

    def heartbeat_pattern(self, role: str = "*") -> str:
        return f"{self.prefix}:hb:{role}:*"

    def feed_status(self) -> str:
        """Stream of every feed's status events."""
        return f"{self.prefix}:{{feeds}}:status"

    def feed_states(self) -> str:
        """Hash: feed name -> its current state."""
        return f"{self.prefix}:{{feeds}}:state"

    def sources(self) -> str:
        """Hash: symbol -> the source it was first published from."""
        return f"{self.prefix}:sources"

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
