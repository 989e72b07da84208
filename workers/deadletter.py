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

:func:`encode` / :func:`decode` are pure; :func:`list_dead_letters` and
:func:`replay` do the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pricepipe.exceptions import DecodeError
from pricepipe.keys import Keys

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


def replay(r: Any, keys: Keys, letters: Iterable[DeadLetter]) -> list[tuple[str, str]]:
    """Append each letter's original fields to its stream again (a new entry
    ID) and delete it from the dead letters, atomically per letter (``MULTI``:
    both keys share the shard's hash slot), so a crash never leaves a letter
    both replayed and still queued for replay.

    Returns ``(stream, new_entry_id)`` per letter. A letter that fails again
    comes back to the dead letters with its new reason.
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
