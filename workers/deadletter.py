"""Dead letters: stream entries that could not be persisted, kept with the reason.

A dead letter lives in its shard's dead-letter stream
(:meth:`pricepipe.keys.Keys.dead_letters`), the same hash slot as the trades
or quotes stream it came from, so moving an entry between the two is one
``MULTI``.
Its fields are the original entry's fields prefixed with ``f.`` plus:

``stream``, ``id``
    where the entry was (key and entry ID);
``reason``
    why it was refused (lower-case text);
``deliveries``
    how often the persist group had delivered it (0 when unknown);
``failed_ms``, ``consumer``
    when and by which worker it was dead-lettered.

:func:`encode`, :func:`decode` and :func:`plan_replay` are pure;
:func:`list_dead_letters`, :func:`persisted_letters` and :func:`replay` do
the I/O. Replaying never doubles a row (see :func:`plan_replay`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from pricepipe import codec
from pricepipe.events import Event
from pricepipe.exceptions import DecodeError
from pricepipe.keys import PERSISTED, Keys

from .batch import append_time_reason

FIELD_PREFIX = b"f."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as read back from its stream."""

    dlq_id: str
    shard: int
    stream: str
    entry_id: str
    reason: str
    deliveries: int
    failed_ms: int
    consumer: str
    fields: dict[bytes, bytes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dlq_id": self.dlq_id, "shard": self.shard, "stream": self.stream,
            "entry_id": self.entry_id, "reason": self.reason, "deliveries": self.deliveries,
            "failed_ms": self.failed_ms, "consumer": self.consumer,
            "fields": {k.decode(errors="replace"): v.decode(errors="replace")
                       for k, v in self.fields.items()},
        }


def encode(stream: str, entry_id: str, fields: Mapping[bytes, bytes], *, reason: str,
           deliveries: int, failed_ms: int, consumer: str) -> dict[bytes, bytes | str | int]:
    """Field map for the ``XADD`` to the dead-letter stream."""
    out: dict[bytes, bytes | str | int] = {
        b"stream": stream, b"id": entry_id, b"reason": reason[:2000],
        b"deliveries": deliveries, b"failed_ms": failed_ms, b"consumer": consumer,
    }
    for key, value in fields.items():
        out[FIELD_PREFIX + key] = value
    return out


def decode(dlq_id: bytes | str, shard: int, fields: Mapping[bytes, bytes]) -> DeadLetter:
    """Inverse of :func:`encode`. Raises :exc:`DecodeError`."""
    try:
        return DeadLetter(
            dlq_id=dlq_id.decode() if isinstance(dlq_id, bytes) else dlq_id,
            shard=shard,
            stream=fields[b"stream"].decode(),
            entry_id=fields[b"id"].decode(),
            reason=fields[b"reason"].decode(errors="replace"),
            deliveries=int(fields.get(b"deliveries", b"0")),
            failed_ms=int(fields.get(b"failed_ms", b"0")),
            consumer=fields.get(b"consumer", b"").decode(errors="replace"),
            fields={k[len(FIELD_PREFIX):]: v for k, v in fields.items()
                    if k.startswith(FIELD_PREFIX)},
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"unreadable dead letter {dlq_id!r}: {exc}") from exc


def list_dead_letters(r: Any, keys: Keys, *, limit: int | None = None) -> list[DeadLetter]:
    """Dead letters of every shard, oldest first per shard, at most ``limit`` in all."""
    out: list[DeadLetter] = []
    for shard in keys.all_shards():
        if limit is not None and len(out) >= limit:
            break
        count = None if limit is None else limit - len(out)
        for dlq_id, fields in r.xrange(keys.dead_letters(shard), count=count):
            out.append(decode(dlq_id, shard, fields))
    return out


def count(r: Any, keys: Keys) -> int:
    """How many dead letters there are, all shards together."""
    return sum(int(r.xlen(keys.dead_letters(shard))) for shard in keys.all_shards())


# --- replaying, idempotently -------------------------------------------------------------------
#
# A letter dead-lettered for "delivered N times" may have its row committed
# already: a worker committed it and died before its XACK, N times over.
# Replaying appends the fields under a NEW entry ID, which the primary key
# (symbol, entry_id, ts) cannot recognise: a second row, counted twice in its
# bar. So before replaying, PostgreSQL is asked for a row under the letter's
# ORIGINAL entry ID; letters that have one are done and are deleted instead.
# The replayed entry keeps the plain wire format (no "original ID" field that
# every reader would have to know), and rows keep the invariant that their
# entry_id is the stream entry they came from.
#
# A row committed after the check would have to come from a worker still
# holding the original entry after it was dead-lettered (claimed away from
# it); by the time anyone replays by hand, that commit has long happened.


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What :func:`plan_replay` decided for each letter."""

    #: Appended to their stream again.
    replay: list[DeadLetter]
    #: Their row is in PostgreSQL under the original entry ID: deleted.
    persisted: list[DeadLetter]
    #: Kept as they are, with why: a replay would be refused again now (the
    #: event time is too far from the append time it would get).
    kept: list[tuple[DeadLetter, str]]


#: Letters decode to events; those are looked up by their original entry ID.
_PERSISTED_SQL = """
    SELECT k.i FROM unnest(%(symbols)s::text[], %(entry_ids)s::bigint[], %(ts_us)s::bigint[])
         WITH ORDINALITY AS k(symbol, entry_id, ts_us, i)
    WHERE EXISTS (SELECT 1 FROM {table} t
                  WHERE t.symbol = k.symbol AND t.entry_id = k.entry_id
                    AND t.ts = timestamptz 'epoch' + k.ts_us * interval '1 microsecond')
"""

#: A replay is appended within this long after it is planned (the check of
#: the event time against the new entry ID's time allows for it), ms.
REPLAY_MARGIN_MS = 60_000


def event_of(keys: Keys, letter: DeadLetter) -> Event | None:
    """The trade or quote a letter holds, or None (it does not decode: then
    it never had a row)."""
    try:
        channel, symbol = keys.parse_stream(letter.stream)
        if channel not in PERSISTED:
            return None
        return codec.decode_entry(channel, symbol, letter.fields)
    except ValueError:
        return None


def persisted_letters(conn: Any, keys: Keys, letters: Sequence[DeadLetter]) -> set[str]:
    """``dlq_id`` of the letters whose row is in PostgreSQL under their
    original entry ID (and event time: the partition key). Read only."""
    by_table: dict[str, list[tuple[DeadLetter, Event]]] = {}
    for letter in letters:
        event = event_of(keys, letter)
        if event is None:
            continue
        try:
            codec.pack_entry_id(letter.entry_id)
        except ValueError:
            continue
        by_table.setdefault(str(codec.channel_of(event)), []).append((letter, event))
    found: set[str] = set()
    with conn.cursor() as cur:
        for table, items in sorted(by_table.items()):
            cur.execute(sql.SQL(_PERSISTED_SQL).format(table=sql.Identifier(table)), {
                "symbols": [event.symbol for _, event in items],
                "entry_ids": [codec.pack_entry_id(letter.entry_id) for letter, _ in items],
                "ts_us": [event.ts_us for _, event in items]})
            found.update(items[int(i) - 1][0].dlq_id for (i,) in cur.fetchall())
    conn.commit()
    return found


def plan_replay(keys: Keys, letters: Sequence[DeadLetter], persisted: set[str], *,
                now_ms: int) -> ReplayPlan:
    """Sort letters into replay / already persisted / kept. Pure.

    ``persisted`` is :func:`persisted_letters`' answer. A letter is kept when
    the persist workers would refuse it again for its time: its event would
    lie outside :func:`pricepipe.workers.batch.append_time_reason`'s bounds
    for an entry appended now (or up to :data:`REPLAY_MARGIN_MS` later).
    Letters that do not decode are replayed (a fixed decoder may take them)."""
    plan = ReplayPlan([], [], [])
    for letter in letters:
        if letter.dlq_id in persisted:
            plan.persisted.append(letter)
            continue
        event = event_of(keys, letter)
        if event is not None:
            reason = (append_time_reason(event.ts_us, now_ms)
                      or append_time_reason(event.ts_us, now_ms + REPLAY_MARGIN_MS))
            if reason is not None:
                plan.kept.append((letter, reason))
                continue
        plan.replay.append(letter)
    return plan


def replay(r: Any, keys: Keys, letters: Iterable[DeadLetter]) -> list[tuple[str, str]]:
    """Append each letter's original fields to its stream again (a new entry
    ID) and delete it from the dead letters, atomically per letter (``MULTI``:
    both keys share the shard's hash slot), so a crash never leaves a letter
    both replayed and still queued for replay.

    Returns ``(stream, new_entry_id)`` per letter. A letter that fails again
    comes back to the dead letters with its new reason. This alone may
    double a row: see :func:`plan_replay` (``pricepipe dlq replay`` plans first).
    """
    out = []
    for letter in letters:
        pipe = r.pipeline(transaction=True)
        pipe.xadd(letter.stream, letter.fields)
        pipe.xdel(keys.dead_letters(letter.shard), letter.dlq_id)
        new_id, _ = pipe.execute()
        out.append((letter.stream, new_id.decode() if isinstance(new_id, bytes) else new_id))
    return out


def delete(r: Any, keys: Keys, letters: Iterable[DeadLetter]) -> int:
    """Drop letters for good (after inspection). Returns how many were deleted."""
    return sum(int(r.xdel(keys.dead_letters(letter.shard), letter.dlq_id)) for letter in letters)
