"""Whether a resume cursor can be served from a stream: the verdict on one
``(symbol, channel)`` cursor from what Redis says of its stream. Pure (the
session runs the reads, pipelined per shard, and applies the verdict).

Every removal from a stream is one of three kinds, and each leaves a trace:

* trimming by the persist workers (:func:`pricepipe.streams.trim_stream`),
  which records in the shard's trimmed hash the newest entry it removed
  (:func:`pricepipe.streams.trimmed_since`): a cursor older than that record
  missed entries, one at or after it missed none;
* ``XDEL``, which Redis 7 records in ``XINFO STREAM``'s
  ``max-deleted-entry-id``;
* Redis losing data (a restart from an older file, a failover to a replica
  that was behind), which the epoch shows, not the stream (checked before
  this verdict).

A stream trimmed by something that keeps no record (a manual ``XTRIM``, an
older pricepipe) falls back to the conservative rule: a cursor older than the
first entry still there may have missed trimmed entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import protocol as p


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def verdict(cursor: str, info: Mapping[str, Any] | None,
            trimmed: bytes | str | None) -> tuple[str | None, str | None]:
    """``(reason, first_id)`` for resuming after ``cursor``: reason None when
    every entry after the cursor is still in the stream, else ``trimmed`` or
    ``cursor_ahead``; ``first_id`` the oldest entry still there (or None).

    ``info`` is the stream's ``XINFO STREAM`` (None: no such key), ``trimmed``
    its field of the shard's trimmed record (None: never trimmed with a record).
    """
    key = p.id_key(cursor)
    record = None if trimmed is None else p.id_key(_text(trimmed))
    if info is None:
        # No stream: it never had entries here (trimming leaves an empty
        # stream, not none), so a client that saw any saw another Redis.
        if record is not None and record > key:
            return p.GAP_TRIMMED, None
        return (None if key == (0, 0) else p.GAP_CURSOR_AHEAD), None
    first = info.get("first-entry")
    first_id = _text(first[0]) if first else None
    last_generated = info.get("last-generated-id")
    if last_generated is not None and key > p.id_key(_text(last_generated)):
        return p.GAP_CURSOR_AHEAD, first_id
    max_deleted = info.get("max-deleted-entry-id")
    if max_deleted is not None and key < p.id_key(_text(max_deleted)):
        return p.GAP_TRIMMED, first_id
    if record is not None:
        # Exact: trimming removes from the front and recorded the newest entry
        # it removed; everything after the record is still there.
        return (p.GAP_TRIMMED if record > key else None), first_id
    added = info.get("entries-added")
    if added is not None and int(added) == int(info["length"]):
        return None, first_id  # nothing was ever removed
    if first_id is None:  # emptied: fine only if the client had seen the end
        caught_up = last_generated is not None and key >= p.id_key(_text(last_generated))
        return (None if caught_up else p.GAP_TRIMMED), None
    if key < p.id_key(first_id):
        return p.GAP_TRIMMED, first_id
    return None, first_id
