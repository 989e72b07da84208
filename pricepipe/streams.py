"""Redis Streams operations shared by every role: a thin I/O layer over
:mod:`pricepipe.keys` and :mod:`pricepipe.codec`.

Functions take the connection explicitly; those that only write accept a
``pipeline`` so callers can group writes into one round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

from . import codec
from .clock import now_ms
from .keys import PERSIST_GROUP, Keys
from .tick import Tick


def ensure_group(r: Any, stream: str, group: str = PERSIST_GROUP, start_id: str = "0") -> bool:
    """Create consumer ``group`` on ``stream`` (and the stream), if missing.

    ``start_id="0"`` means the group sees every entry ever added, so a group
    created before the first ``XADD`` misses nothing. Returns True if created.
    """
    try:
        r.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


def register_symbols(r: Any, keys: Keys, symbols: Iterable[str]) -> None:
    """Add symbols to the registry and create their persist group first.

    Idempotent. The group is created before the symbol becomes visible and
    before any tick is appended, so the persist workers never miss an entry.
    """
    for shard, group in keys.by_shard(symbols).items():
        for symbol in group:
            ensure_group(r, keys.stream(symbol))
        r.sadd(keys.symbols(shard), *group)


def known_symbols(r: Any, keys: Keys) -> list[str]:
    """Every registered symbol, sorted."""
    out: set[str] = set()
    for shard in keys.all_shards():
        out.update(m.decode() for m in r.smembers(keys.symbols(shard)))
    return sorted(out)


def append_ticks(r: Any, keys: Keys, ticks: Sequence[Tick], *, pipeline: Any = None) -> list[Any]:
    """``XADD`` each tick to its symbol's stream in one pipelined round trip.

    With ``pipeline`` given, the commands are only queued on it (the caller
    executes) and an empty list is returned; otherwise returns the entry IDs.
    Streams are never trimmed here: see :func:`trim_persisted`.
    """
    pipe = pipeline if pipeline is not None else r.pipeline(transaction=False)
    stream = keys.stream
    encode = codec.encode_fields
    for tick in ticks:
        pipe.xadd(stream(tick.symbol), encode(tick))
    if pipeline is not None:
        return []
    return list(pipe.execute())


def last_tick(r: Any, keys: Keys, symbol: str) -> tuple[str, Tick] | None:
    """The newest entry of a symbol's stream as ``(entry_id, tick)``, or None."""
    rows = r.xrevrange(keys.stream(symbol), count=1)
    if not rows:
        return None
    entry_id, fields = rows[0]
    return entry_id.decode(), codec.decode_fields(fields)


def next_id(entry_id: str) -> str:
    """The smallest entry ID greater than ``entry_id``."""
    ms, seq = codec.parse_entry_id(entry_id)
    return f"{ms}-{seq + 1}"


def persisted_floor(r: Any, stream: str, group: str = PERSIST_GROUP) -> str | None:
    """Smallest entry ID the ``group`` may still need, or None if unknown.

    Every entry below it has been delivered *and* acknowledged: it is the
    oldest pending entry if any, else the one after the last delivered.
    None when the group does not exist (then nothing is safe to trim).
    """
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    for info in groups:
        name = info["name"]
        if (name.decode() if isinstance(name, bytes) else name) != group:
            continue
        if info["pending"]:
            summary = r.xpending(stream, group)
            low = summary["min"]
            if low is not None:
                return low.decode() if isinstance(low, bytes) else str(low)
            # Every pending entry was acknowledged between the two calls
            # (another worker): the last-delivered ID read above is older
            # than the current one, so the floor below it is still safe.
        last = info["last-delivered-id"]
        return next_id(last.decode() if isinstance(last, bytes) else str(last))
    return None


def trim_persisted(
    r: Any, stream: str, *, window_ms: int, group: str = PERSIST_GROUP
) -> int:
    """Trim ``stream`` to entries newer than ``window_ms``, but never past an
    entry ``group`` has not acknowledged.

    Uses ``XTRIM MINID`` (not ``MAXLEN``: before Redis 8.2 ``MAXLEN`` drops
    pending entries silently), approximate so Redis frees whole radix-tree
    nodes only. Returns the number of entries removed.
    """
    floor = persisted_floor(r, stream, group)
    if floor is None:
        return 0
    window_floor = f"{max(now_ms() - window_ms, 0)}-0"
    floor_key = codec.parse_entry_id(floor)
    minid = floor if floor_key <= codec.parse_entry_id(window_floor) else window_floor
    return int(r.xtrim(stream, minid=minid, approximate=True))


def delete_all(r: Any, keys: Keys) -> int:
    """Delete every key of ``keys``' prefix (benchmarks clean up with it).
    One ``DEL`` per key, so it works on Redis Cluster too. Returns the count."""
    deleted = 0
    for key in r.scan_iter(match=keys.all_pattern(), count=1000):
        deleted += int(r.delete(key))
    return deleted
