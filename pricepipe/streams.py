"""Redis Streams operations shared by every role: a thin I/O layer over
:mod:`pricepipe.keys` and :mod:`pricepipe.codec`.

Functions take the connection explicitly; those that only write accept a
``pipeline`` so callers can group writes into one round trip.

Events are appended by a small Lua script, one call per shard per batch,
rather than by one pipelined ``XADD`` per event: redis-py spends ~3.5 us of
client CPU on each pipelined command (packing, then parsing and checking each
reply), the script call ~0.4 us per event, for ~0.25 us more in Redis
(measured on a 2-core VM). All keys of one call share the shard's hash tag,
so one call never spans two Redis Cluster slots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from . import codec
from .clock import now_ms
from .events import Event
from .keys import PERSIST_GROUP, PERSISTED, Channel, Keys


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
    """Add symbols to the registry and create the persist group of each of
    their persisted streams first (trades and quotes).

    Idempotent. The groups are created before the symbol becomes visible and
    before any event is appended, so the persist workers never miss an entry.
    """
    for shard, group in keys.by_shard(symbols).items():
        for symbol in group:
            for channel in PERSISTED:
                ensure_group(r, keys.stream(symbol, channel))
        r.sadd(keys.symbols(shard), *group)


def known_symbols(r: Any, keys: Keys) -> list[str]:
    """Every registered symbol, sorted."""
    out: set[str] = set()
    for shard in keys.all_shards():
        out.update(m.decode() for m in r.smembers(keys.symbols(shard)))
    return sorted(out)


#: ``XADD KEYS[i] * ARGV[2i-1] ARGV[2i]`` (field, value) for every i, in
#: order; returns the entry IDs. Atomic like any script; under ``maxmemory``
#: Redis refuses it as a whole (the OOM check applies to a script's first
#: write, and nothing is written before it), so a refused call stored none of
#: its events.
APPEND_SCRIPT = """
local ids = {}
for i = 1, #KEYS do
    ids[i] = redis.call('XADD', KEYS[i], '*', ARGV[2 * i - 1], ARGV[2 * i])
end
return ids
"""
APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()


def append_events(r: Any, keys: Keys, events: Sequence[Event], *,
                  raise_on_error: bool = True) -> list[Any]:
    """``XADD`` each event to its symbol's stream of its kind, in one round trip.

    Returns one result per event, in order: its entry ID (bytes), or, with
    ``raise_on_error=False``, the exception that refused its shard's call
    (e.g. Redis's ``OOM``; that call stored none of its events). Events of
    one stream are appended in the order given. Streams are never trimmed
    here: see :func:`trim_stream`. Connection errors are raised: then any
    part of the batch may have been stored (the reply is what got lost).
    """
    if not events:
        return []
    batch_calls = getattr(events, "append_calls", None)
    if batch_calls is not None:
        # A columnar batch (the GBM publisher's) encodes itself, column-wise.
        indexed: list[AppendCall] = batch_calls(keys)
    else:
        indexed = append_calls(keys, events)
    replies = _run_append(r, [(keys_, args) for _, keys_, args in indexed])
    out: list[Any] = [None] * len(events)
    for (idx, _, _), reply in zip(indexed, replies, strict=True):
        if isinstance(reply, Exception):
            if raise_on_error:
                raise reply
            for i in idx:
                out[i] = reply
        else:
            for i, entry_id in zip(idx, reply, strict=True):
                out[i] = entry_id
    return out


#: One append script call: (indices of its events in the batch, their stream
#: keys, the ``field value`` arguments), all of one shard.
AppendCall = tuple[list[int], list[str], list[bytes | str]]


def append_calls(keys: Keys, events: Sequence[Event]) -> list[AppendCall]:
    """The append script's calls for ``events``, one per shard, in order."""
    groups: dict[int, list[int]] = {}
    shard = keys.shard
    for i, event in enumerate(events):
        groups.setdefault(shard(event.symbol), []).append(i)
    stream, channel_of, encode = keys.stream, codec.channel_of, codec.encode_event
    calls: list[AppendCall] = []
    for idx in groups.values():
        args: list[bytes | str] = []
        for i in idx:
            args.extend(encode(events[i]))
        calls.append((idx, [stream(events[i].symbol, channel_of(events[i])) for i in idx],
                      args))
    return calls


def _run_append(r: Any, calls: list[tuple[list[str], list[bytes | str]]]) -> list[Any]:
    """One ``EVALSHA`` of :data:`APPEND_SCRIPT` per call, pipelined; results
    or exceptions in order. A call refused with ``NOSCRIPT`` (a new or
    restarted Redis) ran nothing, so it is sent again after ``SCRIPT LOAD``."""
    if isinstance(r, redis.RedisCluster):
        # A cluster pipeline routes each command by its first key; calls go
        # one by one instead (each to its shard's node).
        return [_evalsha_loading(r, keys_, args) for keys_, args in calls]
    pipe = r.pipeline(transaction=False)
    for keys_, args in calls:
        pipe.evalsha(APPEND_SHA, len(keys_), *keys_, *args)
    replies = list(pipe.execute(raise_on_error=False))
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        r.script_load(APPEND_SCRIPT)
        pipe = r.pipeline(transaction=False)
        for i in missing:
            keys_, args = calls[i]
            pipe.evalsha(APPEND_SHA, len(keys_), *keys_, *args)
        for i, reply in zip(missing, pipe.execute(raise_on_error=False), strict=True):
            replies[i] = reply
    return replies


def _evalsha_loading(r: Any, keys_: list[str], args: list[bytes | str]) -> Any:
    try:
        try:
            return r.evalsha(APPEND_SHA, len(keys_), *keys_, *args)
        except NoScriptError:
            r.script_load(APPEND_SCRIPT)  # on every primary
            return r.evalsha(APPEND_SHA, len(keys_), *keys_, *args)
    except redis.ResponseError as exc:
        # A refusal (OOM, WRONGTYPE) is this call's result, as in a pipeline
        # with raise_on_error=False; connection errors propagate, as there,
        # so the caller retries the batch.
        return exc


def last_event(r: Any, keys: Keys, symbol: str, channel: Channel) -> tuple[str, Event] | None:
    """The newest entry of one of a symbol's streams as ``(entry_id, event)``,
    or None. Raises ``ValueError`` when that entry is unreadable."""
    rows = r.xrevrange(keys.stream(symbol, channel), count=1)
    if not rows:
        return None
    entry_id, fields = rows[0]
    return entry_id.decode(), codec.decode_entry(channel, symbol, fields)


def next_id(entry_id: str) -> str:
    """The smallest entry ID greater than ``entry_id``."""
    ms, seq = codec.parse_entry_id(entry_id)
    return f"{ms}-{seq + 1}"


def persisted_floor(r: Any, stream: str, group: str = PERSIST_GROUP) -> str | None:
    """Smallest entry ID the ``group`` may still need (see
    :func:`group_floors`), or None when the group or the stream does not
    exist. Every entry below it has been delivered *and* acknowledged."""
    return group_floors(r, stream).get(group)


def delete_all(r: Any, keys: Keys) -> int:
    """Delete every key of ``keys``' prefix (benchmarks clean up with it).
    One ``DEL`` per key, so it works on Redis Cluster too. Returns the count."""
    deleted = 0
    for key in r.scan_iter(match=keys.all_pattern(), count=1000):
        deleted += int(r.delete(key))
    return deleted


# --- reading replies -------------------------------------------------------------------------


def reply_streams(reply: Any) -> Iterable[tuple[Any, Any]]:
    """``(stream, entries)`` pairs of an ``XREAD`` / ``XREADGROUP`` reply, in
    either protocol: a list of pairs (RESP2) or a mapping (RESP3); nothing
    for an empty reply (None, or an empty list or map after a timeout).

    redis-py's own RESP3 parsing (any client but :func:`~pricepipe.connections.raw_replies`
    ones, e.g. a cluster client) wraps each stream's entries in one more list
    (``{stream: [[(id, fields), ...]]}``: its ``parse_xread_resp3``, 7.4); that list is
    unwrapped, so every shape gives ``(stream, [(id, fields), ...])``."""
    if not reply:
        return ()
    if isinstance(reply, Mapping):
        return ((stream, _unwrapped(entries)) for stream, entries in reply.items())
    return reply


def _unwrapped(entries: Any) -> Any:
    # An entry is (id, fields) with a bytes or str id; a wrapped list's only
    # element is a list of entries (or empty).
    if (len(entries) == 1 and isinstance(entries[0], list)
            and (not entries[0] or isinstance(entries[0][0], list | tuple))):
        return entries[0]
    return entries


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """Sort key of an entry ID: ``(ms, seq)`` (text order would put ``9-0``
    after ``10-0``). Raises :exc:`~pricepipe.exceptions.DecodeError`."""
    return codec.parse_entry_id(entry_id)


# --- trimming that every reader can trust -----------------------------------------------------

_LUA_CMP = """
local function key(id)
    local ms, seq = string.match(id, '(%d+)-(%d+)')
    return tonumber(ms), tonumber(seq)
end
local function newer(a, b)
    local am, as = key(a)
    local bm, bs = key(b)
    return am > bm or (am == bm and as > bs)
end
"""

#: ``XTRIM KEYS[1] MINID ARGV[1]`` (exact), recording in hash KEYS[2] (field
#: KEYS[1]) the newest entry it removed when that is newer than the one
#: recorded: a reader whose cursor is older than the record has missed
#: entries. For each consumer group ARGV[2k] whose floor the trim passes
#: (ARGV[2k+1]: the last entry it is known to have, exclusive), the range it
#: lost goes in hash KEYS[3] as "<after> <until>", merged with any earlier
#: one, for the group's readers to report. One script, so no trim is ever
#: left unrecorded. Exact rather than approximate trimming, so the record is
#: exact too. Under ``maxmemory`` XTRIM is allowed (it frees memory) and
#: makes the script dirty, so the writes that follow are allowed as well.
TRIM_SCRIPT = _LUA_CMP + """
local before = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if #before == 0 then return 0 end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if removed > 0 then
    local last = before[1][1]
    local old = redis.call('HGET', KEYS[2], KEYS[1])
    if not old or newer(last, old) then redis.call('HSET', KEYS[2], KEYS[1], last) end
    for i = 2, #ARGV - 1, 2 do
        local field = KEYS[1] .. '|' .. ARGV[i]
        local after, untl = ARGV[i + 1], ARGV[1]
        local prev = redis.call('HGET', KEYS[3], field)
        if prev then
            local pa, pu = string.match(prev, '(%S+) (%S+)')
            if newer(after, pa) then after = pa end
            if newer(pu, untl) then untl = pu end
        end
        redis.call('HSET', KEYS[3], field, after .. ' ' .. untl)
    end
end
return removed
"""

#: Take and delete the fields ARGV of hash KEYS[1]: a group gap is reported
#: by exactly one reader of the group, however many read at once.
TAKE_SCRIPT = """
local out = {}
for i = 1, #ARGV do
    local value = redis.call('HGET', KEYS[1], ARGV[i])
    if value then
        redis.call('HDEL', KEYS[1], ARGV[i])
        out[#out + 1] = ARGV[i]
        out[#out + 1] = value
    end
end
return out
"""


def prev_id(entry_id: str) -> str:
    """The largest entry ID smaller than ``entry_id`` that pricepipe can
    store (``0-0`` has none: itself).

    Below ``<ms>-0`` that is ``<ms-1>-SEQ_MAX`` (:data:`pricepipe.codec.SEQ_MAX`),
    not Redis's ``<ms-1>-18446744073709551615``: no stream holds two million
    entries in one millisecond, and a gap bound must pack like an entry ID
    (the history tables, ``after_id`` of the HTTP API)."""
    ms, seq = codec.parse_entry_id(entry_id)
    if seq:
        return f"{ms}-{min(seq - 1, codec.SEQ_MAX)}"
    return f"{ms - 1}-{codec.SEQ_MAX}" if ms else "0-0"


def group_floors(r: Any, stream: str) -> dict[str, str]:
    """Per consumer group of ``stream``, the smallest entry ID it may still
    need: its oldest pending entry, else the one after its last delivered.
    Every entry below a group's floor was delivered to it *and* acknowledged.
    Empty when the stream does not exist."""
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:
        return {}
    out: dict[str, str] = {}
    for info in groups:
        name = info["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        last = info["last-delivered-id"]
        floor = next_id(last.decode() if isinstance(last, bytes) else str(last))
        if info["pending"]:
            low = r.xpending(stream, name)["min"]
            if low is not None:
                floor = low.decode() if isinstance(low, bytes) else str(low)
            # None: every pending entry was acknowledged between the two
            # calls; the last-delivered ID read before is older than the
            # current one, so the floor after it is still safe.
        out[name] = floor
    return out


def trim_floor(floors: Mapping[str, str], *, now_ms_: int, window_ms: int,
               max_age_ms: int | None, persisted: bool) -> str | None:
    """The ``MINID`` to trim a stream to, or None to leave it alone. Pure.

    Entries newer than ``window_ms`` stay (live readers resume from them).
    No entry a group still needs goes, up to the hard cap ``max_age_ms``:
    a strategy group stopped for longer loses what is older, and learns it
    from the trimmed record (:func:`trimmed_since`). The persist group is
    exempt from the cap: what it has not written to PostgreSQL stays
    (publishers apply backpressure when Redis fills instead). A persisted
    stream without its persist group is left alone (nothing is known to be
    safe to remove).
    """
    window = max(now_ms_ - window_ms, 0)
    floor = (window, 0)
    if persisted:
        if PERSIST_GROUP not in floors:
            return None
        floor = min(floor, codec.parse_entry_id(floors[PERSIST_GROUP]))
    others = [codec.parse_entry_id(f) for name, f in floors.items() if name != PERSIST_GROUP]
    if others:
        strategies = min(others)
        if max_age_ms is not None:
            strategies = max(strategies, (max(now_ms_ - max_age_ms, 0), 0))
        floor = min(floor, strategies)
    return f"{floor[0]}-{floor[1]}"


def trim_stream(r: Any, keys: Keys, stream: str, *, window_ms: int,
                max_age_ms: int | None, persisted: bool) -> int:
    """Trim ``stream`` as :func:`trim_floor` decides, recording what went in
    the shard's trimmed record and, for every consumer group the hard cap
    passes, the range it lost; returns how many entries were removed."""
    floors = group_floors(r, stream)
    minid = trim_floor(floors, now_ms_=now_ms(), window_ms=window_ms,
                       max_age_ms=max_age_ms, persisted=persisted)
    if minid is None:
        return 0
    cut = codec.parse_entry_id(minid)
    passed: list[str] = []
    for group, floor in floors.items():
        if codec.parse_entry_id(floor) < cut:
            passed += [group, prev_id(floor)]
    shard = keys.shard(keys.symbol_of(stream))
    return int(run_script(r, TRIM_SCRIPT,
                           [stream, keys.trimmed(shard), keys.group_gaps(shard)],
                           [minid, *passed]))


def group_gap_field(stream: str, group: str) -> str:
    """The field of ``keys.group_gaps(shard)`` holding ``group``'s gap in ``stream``."""
    return f"{stream}|{group}"


def parse_group_gaps(reply: Sequence[Any]) -> dict[str, tuple[str, str]]:
    """The reply of :data:`TAKE_SCRIPT` over group-gap fields: per stream,
    ``(after, until)``: its entries with ``after < id < until`` never reached
    the group. Pure."""
    out: dict[str, tuple[str, str]] = {}
    for field, value in zip(reply[::2], reply[1::2], strict=True):
        field_text = field.decode() if isinstance(field, bytes) else str(field)
        value_text = value.decode() if isinstance(value, bytes) else str(value)
        after, _, until = value_text.partition(" ")
        out[field_text.rsplit("|", 1)[0]] = (after, until)
    return out


def trimmed_since(r: Any, keys: Keys, stream: str, cursor: str) -> str | None:
    """The newest entry trimming removed from ``stream`` when it is after
    ``cursor`` (a reader there has missed entries up to and including it),
    else None."""
    shard = keys.shard(keys.symbol_of(stream))
    last = r.hget(keys.trimmed(shard), stream)
    if last is None:
        return None
    text = last.decode() if isinstance(last, bytes) else str(last)
    return text if codec.parse_entry_id(text) > codec.parse_entry_id(cursor) else None


_SCRIPT_SHAS: dict[str, str] = {}


def _sha(script: str) -> str:
    sha = _SCRIPT_SHAS.get(script)
    if sha is None:
        sha = _SCRIPT_SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


def run_script(r: Any, script: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
    """``EVALSHA`` of ``script``, loading it after ``NOSCRIPT`` (a new or
    restarted Redis; on a cluster, ``script_load`` loads it on every primary)."""
    sha = _sha(script)
    try:
        return r.evalsha(sha, len(keys_), *keys_, *args)
    except NoScriptError:
        r.script_load(script)
        return r.evalsha(sha, len(keys_), *keys_, *args)


async def async_run_script(r: Any, script: str, keys_: Sequence[str],
                           args: Sequence[Any]) -> Any:
    """:func:`run_script` with a ``redis.asyncio`` client."""
    sha = _sha(script)
    try:
        return await r.evalsha(sha, len(keys_), *keys_, *args)
    except NoScriptError:
        await r.script_load(script)
        return await r.evalsha(sha, len(keys_), *keys_, *args)


# --- epochs ----------------------------------------------------------------------------------


def epoch_of(info: Mapping[str, Any]) -> str:
    """The epoch of a Redis server from its ``INFO server``: a prefix of its
    ``run_id``, which is new for every process. A running Redis never loses
    acknowledged entries by itself (pricepipe runs it with ``noeviction``);
    a restart may have (the last second of an ``appendfsync everysec`` AOF,
    or a restore of an older file), and so may a failover to a replica that
    was behind. Both give the serving process a new run ID, so a cursor from
    another epoch may have a gap after it that no stream can show. The
    epoch is conservative: a clean restart changes it too."""
    return str(info["run_id"])[:16]


def epoch(r: Any, key: str) -> str:
    """The epoch of the server holding ``key`` (on a cluster: its primary)."""
    info: Any
    if isinstance(r, redis.RedisCluster):
        info = r.info("server", target_nodes=r.get_node_from_key(key))
    else:
        info = r.info("server")
    return epoch_of(info)


async def async_epoch(r: Any, key: str) -> str:
    """:func:`epoch` with a ``redis.asyncio`` client."""
    import redis.asyncio

    if isinstance(r, redis.asyncio.RedisCluster):
        node = r.get_node_from_key(key)
        return epoch_of(await r.info("server", target_nodes=node))
    return epoch_of(await r.info("server"))
