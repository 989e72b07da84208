"""The Redis side of persisting: one consumer of the persist group, on the
trades and quotes streams of every registered symbol.

Every multi-key command (``XREADGROUP`` over several streams, ``MULTI`` over
a stream and its dead-letter stream) stays inside one shard, so it works on
Redis Cluster (see :mod:`pricepipe.keys`).

Delivery, in Redis terms: an entry read with ``>`` becomes pending for this
consumer; it leaves the pending list only by ``XACK``, which the worker sends
after the PostgreSQL commit. An entry pending for a consumer that died is
read back by the same consumer name (``XREADGROUP ... 0``) or claimed by
another after an idle threshold (``XAUTOCLAIM``). Both count a delivery.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import redis

from pricepipe import streams
from pricepipe.backpressure import is_oom_error
from pricepipe.clock import now_ms
from pricepipe.connections import raw_replies
from pricepipe.keys import PERSIST_GROUP, PERSISTED, Keys

from . import deadletter
from .batch import Batch, Reject, decode_entries, decode_reply

log = logging.getLogger(__name__)


class GroupConsumer:
    """Reads, claims, acknowledges and dead-letters for consumer ``name``."""

    def __init__(self, r: Any, keys: Keys, name: str, *, group: str = PERSIST_GROUP) -> None:
        self.r = r
        self.keys = keys
        self.name = name
        self.group = group
        #: Persisted stream keys (trades and quotes) by shard, from the registry.
        self.streams: dict[int, list[str]] = {}
        #: The registered symbols (see :meth:`refresh`).
        self.symbols: list[str] = []
        # Entries reach workers.batch as the server sends them: no dict per entry.
        self._reader = raw_replies(r, "XREADGROUP")
        self._forget_script: Any = None

    # Discovery

    def refresh(self) -> dict[int, list[str]]:
        """Re-read the symbol registry. Returns the persisted streams (every
        registered symbol's trades and quotes) by shard."""
        symbols = streams.known_symbols(self.r, self.keys)
        self.streams = {
            shard: [self.keys.stream(s, channel) for s in sorted(group) for channel in PERSISTED]
            for shard, group in sorted(self.keys.by_shard(symbols).items())
        }
        self.symbols = symbols
        return self.streams

    def all_streams(self) -> list[str]:
        return [s for group in self.streams.values() for s in group]

    def count_per_stream(self, shard: int, batch_size: int) -> int:
        """``COUNT`` for one ``XREADGROUP`` over a shard: it applies to each
        stream, so split the batch between them (at least 16 each)."""
        n = len(self.streams.get(shard, ())) or 1
        return max(16, math.ceil(batch_size / n))

    # Reading

    def read_new(self, shard: int, *, count: int, block_ms: int | None = None) -> Batch:
        """Entries never delivered to anyone, from the shard's streams."""
        names = self.streams.get(shard)
        if not names:
            return Batch()
        try:
            reply = self._reader.xreadgroup(self.group, self.name, dict.fromkeys(names, ">"),
                                            count=count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream (or its group) vanished, e.g. deleted by hand: put the
            # groups back ("0": from the start, so nothing added since is missed).
            try:
                for name in names:
                    streams.ensure_group(self.r, name, self.group)
            except redis.ResponseError as create_exc:
                if not is_oom_error(create_exc):
                    raise
                # XGROUP CREATE may grow memory: a full Redis refuses it. Nothing
                # can be appended there either; the next read tries again.
                log.warning("cannot recreate the persist groups of shard %d while redis is "
                            "full: %s", shard, create_exc)
            return Batch()
        return decode_reply(self.keys, reply)

    def read_own_pending(self, shard: int, cursors: dict[str, str], *, count: int) -> Batch:
        """Entries already delivered to this consumer name and not acknowledged
        (this name's previous life crashed), after ``cursors`` (stream -> ID).

        Advances ``cursors`` and drops the streams that have nothing more.
        """
        if not cursors:
            return Batch()
        try:
            reply = self.r.xreadgroup(self.group, self.name, dict(cursors), count=count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            cursors.clear()
            return Batch()
        batch = Batch()
        seen = set()
        for stream, entries in streams.reply_streams(reply):
            key = stream.decode() if isinstance(stream, bytes) else stream
            if entries:
                seen.add(key)
                last = entries[-1][0]
                cursors[key] = last.decode() if isinstance(last, bytes) else last
                decode_entries(self.keys, key, entries, batch)
        for key in list(cursors):
            if key not in seen:
                del cursors[key]
        return batch

    def claim_idle(self, stream: str, *, min_idle_ms: int, count: int,
                   start_id: str = "0-0") -> tuple[Batch, str]:
        """Claim entries pending for other consumers for at least ``min_idle_ms``.

        Returns the batch and the cursor for the next call ("0-0": done).
        Entries deleted while pending are dropped from the pending list by
        Redis itself (7.0+) and are not returned.
        """
        try:
            reply = self.r.xautoclaim(stream, self.group, self.name, min_idle_ms,
                                      start_id=start_id, count=count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return Batch(), "0-0"
        cursor, entries = reply[0], reply[1]
        batch = decode_entries(self.keys, stream, entries)
        cursor_text = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        return batch, cursor_text

    def delivery_counts(self, ids_by_stream: dict[str, list[str]]) -> dict[tuple[str, str], int]:
        """How often each pending entry has been delivered (``XPENDING`` range)."""
        out: dict[tuple[str, str], int] = {}
        pipe = self.r.pipeline(transaction=False)
        order = []
        for stream, ids in ids_by_stream.items():
            if not ids:
                continue
            pipe.xpending_range(stream, self.group, min=min(ids, key=_id_key),
                                max=max(ids, key=_id_key), count=len(ids) + 16)
            order.append((stream, set(ids)))
        for (stream, wanted), rows in zip(order, pipe.execute(), strict=True):
            for row in rows:
                entry_id = row["message_id"]
                entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if entry_id in wanted:
                    out[(stream, entry_id)] = int(row["times_delivered"])
        return out

    # Finishing

    def ack(self, ids_by_stream: dict[str, list[str]]) -> int:
        """``XACK`` the entries (one pipelined round trip). Idempotent."""
        if not ids_by_stream:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for stream, ids in ids_by_stream.items():
            if ids:
                pipe.xack(stream, self.group, *ids)
        return sum(int(n) for n in pipe.execute())

    def dead_letter(self, rejects: Sequence[Reject], deliveries: dict[tuple[str, str], int]
                    ) -> tuple[int, list[Reject], BaseException | None]:
        """Move rejects to their shard's dead-letter stream and acknowledge them.

        Per entry, the ``XADD`` to the dead letters and the ``XACK`` run in one
        ``MULTI``, so an entry is never acknowledged without being kept.

        Returns how many were dead-lettered, and the rejects a full Redis
        refused (``OOM``: that ``MULTI`` applied nothing) with the refusal:
        those entries stay pending, unacknowledged, and are delivered again
        (claimed after the idle threshold, or read back at a restart).
        Raises connection errors (a retry is safe: a letter whose reply was
        lost may be kept twice, the ``XACK`` is idempotent) and other refusals.
        """
        n = 0
        failed_ms = now_ms()
        for i, reject in enumerate(rejects):
            symbol_shard = self._shard_of_stream(reject.stream)
            pipe = self.r.pipeline(transaction=True)
            pipe.xadd(self.keys.dead_letters(symbol_shard), deadletter.encode(
                reject.stream, reject.entry_id, reject.fields, reason=reject.reason,
                deliveries=deliveries.get((reject.stream, reject.entry_id), 0),
                failed_ms=failed_ms, consumer=self.name))
            pipe.xack(reject.stream, self.group, reject.entry_id)
            try:
                pipe.execute()
            except redis.ResponseError as exc:
                if not is_oom_error(exc):
                    raise
                # Every later one would be refused too: keep them all pending.
                return n, list(rejects[i:]), exc
            log.warning("dead-lettered %s %s: %s", reject.stream, reject.entry_id, reject.reason)
            n += 1
        return n, [], None

    def forget_idle_consumers(self, stream: str, *, idle_ms: int) -> list[str]:
        """Delete consumers of the group (not this one) that hold no pending
        entry and have been idle for ``idle_ms``: workers gone for good under
        a name that will not come back (the host-pid default).

        Check and delete run in one Lua script, atomically: a consumer that
        holds entries is never deleted (that would drop them from the
        pending list, and they would never be delivered again).
        """
        if self._forget_script is None:
            self._forget_script = self.r.register_script(_FORGET_IDLE_LUA)
        try:
            gone = self._forget_script(keys=[stream], args=[self.group, self.name, idle_ms])
        except redis.ResponseError:
            return []
        return [g.decode() if isinstance(g, bytes) else str(g) for g in gone]

    def _shard_of_stream(self, stream: str) -> int:
        return self.keys.shard(self.keys.symbol_of(stream))

    def heartbeat(self, ttl_s: int, value: bytes | str) -> None:
        self.r.set(self.keys.heartbeat("persist", self.name), value, ex=ttl_s)


_FORGET_IDLE_LUA = """
local gone = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local info = {}
    for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
    if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
            and tonumber(info['idle']) >= tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
        table.insert(gone, info['name'])
    end
end
return gone
"""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
