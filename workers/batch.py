"""A batch of stream entries on its way to PostgreSQL. Pure: no I/O.

:func:`decode_entries` splits what ``XREADGROUP`` / ``XAUTOCLAIM`` returned
into rows ready for ``COPY`` and :class:`Reject` s (entries that can never be
persisted: missing fields, unreadable numbers, out-of-bounds values, a symbol
that is not its stream's). One bad entry never fails the rest of its batch.

A row is the tuple ``(symbol, ts_us, price, size, source, recv_ts_us,
entry_id)`` where ``entry_id`` is :func:`pricepipe.codec.pack_entry_id` of
the stream entry ID: together with ``(symbol, ts)`` it is the primary key of
``ticks``, so writing the same entry twice cannot add a second row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pricepipe import codec
from pricepipe.keys import Keys

#: ``(symbol, ts_us, price, size, source, recv_ts_us, entry_id)``
TickRow = tuple[str, int, float, float | None, str, int | None, int]

US_PER_DAY = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Reject:
    """An entry that cannot be persisted, with the reason why (lower-case text)."""

    stream: str
    entry_id: str
    fields: Mapping[bytes, bytes]
    reason: str


@dataclass(slots=True)
class Batch:
    """Rows to write, rejects to dead-letter, and every entry ID to acknowledge."""

    rows: list[TickRow] = field(default_factory=list)
    #: The stream entry ID (text) of each row, same order as :attr:`rows`.
    row_ids: list[tuple[str, str]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    #: Entries deleted from the stream while pending (nothing left to persist).
    vanished: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejects) + len(self.vanished)

    def extend(self, other: Batch) -> None:
        self.rows.extend(other.rows)
        self.row_ids.extend(other.row_ids)
        self.rejects.extend(other.rejects)
        self.vanished.extend(other.vanished)

    def ack_ids(self) -> dict[str, list[str]]:
        """Every entry of the batch by stream: rows, rejects and vanished ones."""
        out: dict[str, list[str]] = {}
        for stream, entry_id in self.row_ids:
            out.setdefault(stream, []).append(entry_id)
        for reject in self.rejects:
            out.setdefault(reject.stream, []).append(reject.entry_id)
        for stream, entry_id in self.vanished:
            out.setdefault(stream, []).append(entry_id)
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entries(
    keys: Keys,
    stream: bytes | str,
    entries: Iterable[tuple[bytes | str, Mapping[bytes, bytes] | None]],
    batch: Batch | None = None,
) -> Batch:
    """Decode one stream's entries into ``batch`` (a new one if None).

    Entries with no fields (deleted from the stream while pending; Redis
    returns them as nil) are listed in :attr:`Batch.vanished`.
    """
    out = Batch() if batch is None else batch
    stream_key = _text(stream)
    expected = keys.symbol_of(stream_key)
    rows, row_ids = out.rows, out.row_ids
    decode, pack = codec.decode_fields, codec.pack_entry_id
    for raw_id, fields in entries:
        entry_id = _text(raw_id)
        if not fields:
            out.vanished.append((stream_key, entry_id))
            continue
        try:
            tick = decode(fields)
            packed = pack(entry_id)
        except ValueError as exc:  # DecodeError and InvalidTickError both are
            out.rejects.append(Reject(stream_key, entry_id, dict(fields), str(exc)))
            continue
        if tick.symbol != expected:
            out.rejects.append(Reject(
                stream_key, entry_id, dict(fields),
                f"symbol {tick.symbol!r} does not belong in the stream of {expected!r}"))
            continue
        rows.append((tick.symbol, tick.ts_us, tick.price, tick.size, tick.source,
                     tick.recv_ts_us, packed))
        row_ids.append((stream_key, entry_id))
    return out


def decode_reply(keys: Keys, reply: Sequence[tuple[bytes | str, Sequence]] | None,
                 batch: Batch | None = None) -> Batch:
    """Decode an ``XREADGROUP`` reply (``[[stream, [(id, fields), ...]], ...]``)."""
    out = Batch() if batch is None else batch
    for stream, entries in reply or ():
        decode_entries(keys, stream, entries, out)
    return out


def copy_text(rows: Iterable[TickRow]) -> str:
    """Rows in PostgreSQL ``COPY ... FROM STDIN`` text format.

    No escaping is needed: symbols and sources match
    :data:`pricepipe.tick.SYMBOL_RE` / ``SOURCE_RE`` (no tab, newline or
    backslash), and numbers are written by ``repr``/``str``. ``\\N`` is NULL.
    """
    null = "\\N"
    lines: list[str] = []
    append = lines.append
    for symbol, ts_us, price, size, source, recv_ts_us, entry_id in rows:
        size_text = null if size is None else repr(size)
        recv_text = null if recv_ts_us is None else recv_ts_us
        append(f"{symbol}\t{ts_us}\t{price!r}\t{size_text}\t{source}\t{recv_text}\t{entry_id}\n")
    return "".join(lines)


def days_of(rows: Iterable[TickRow]) -> set[int]:
    """Distinct UTC days (days since the epoch) the rows' event times fall on."""
    return {row[1] // US_PER_DAY for row in rows}
