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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pricepipe import codec
from pricepipe.codec import F_PRICE, F_RECV_TS, F_SIZE, F_SOURCE, F_SYMBOL, F_TICK, F_TS
from pricepipe.keys import Keys
from pricepipe.tick import MAX_TS_US, MIN_TS_US, SOURCE_RE, validate_symbol

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


#: A stream entry's fields as redis-py parses them (a dict) or as the server
#: sends them (a flat ``[name, value, name, value, ...]`` list).
RawFields = Mapping[bytes, bytes] | Sequence[bytes] | None


def as_field_map(fields: RawFields) -> dict[bytes, bytes]:
    if not fields:
        return {}
    if isinstance(fields, Mapping):
        return dict(fields)
    it = iter(fields)
    return dict(zip(it, it, strict=False))


class _Validator:
    """The hot path of decoding, for one stream: accepts exactly the entries
    :func:`pricepipe.codec.decode_fields` turns into a valid tick of this
    stream's symbol, using the same parsers (``int``/``float`` on the raw
    bytes) and the same bounds as :class:`pricepipe.tick.Tick`, but without
    building a ``Tick`` per entry. Anything it does not accept is handed to
    the codec, which either agrees or says why the entry is bad.
    """

    __slots__ = ("symbol", "symbol_b", "sources")

    def __init__(self, symbol: str) -> None:
        try:
            self.symbol: str | None = validate_symbol(symbol)
        except ValueError:
            self.symbol = None  # every entry takes the slow path and is rejected
        self.symbol_b = symbol.encode()
        self.sources: dict[bytes, str] = {}

    def row(self, fields: Mapping[bytes, bytes], packed: int) -> TickRow | None:
        """The row of a field map, either format (see :mod:`pricepipe.codec`)."""
        value = fields.get(F_TICK)
        if value is not None:
            return self.row_of_value(value, packed)
        if self.symbol is None or fields.get(F_SYMBOL) != self.symbol_b:
            return None
        try:
            ts_us = int(fields[F_TS])
            price = float(fields[F_PRICE])
            source_b = fields[F_SOURCE]
            size_b = fields.get(F_SIZE)
            recv_b = fields.get(F_RECV_TS)
            size = None if size_b is None else float(size_b)
            recv_ts_us = None if recv_b is None else int(recv_b)
        except (KeyError, ValueError, TypeError):
            return None
        return self._checked(self.symbol, ts_us, price, size, source_b, recv_ts_us, packed)

    def row_of_value(self, value: bytes, packed: int) -> TickRow | None:
        """The row of an :data:`~pricepipe.codec.F_TICK` value (the usual case)."""
        symbol = self.symbol
        if symbol is None or type(value) is not bytes:
            return None
        parts = value.split(b" ")
        if len(parts) != 6 or parts[0] != self.symbol_b:
            return None
        _, ts_b, price_b, size_b, source_b, recv_b = parts
        try:
            ts_us = int(ts_b)
            price = float(price_b)
            size = float(size_b) if size_b else None
            recv_ts_us = int(recv_b) if recv_b else None
        except ValueError:
            return None
        return self._checked(symbol, ts_us, price, size, source_b, recv_ts_us, packed)

    def _checked(self, symbol: str, ts_us: int, price: float, size: float | None, source_b: bytes,
                 recv_ts_us: int | None, packed: int) -> TickRow | None:
        if not (MIN_TS_US <= ts_us < MAX_TS_US and 0.0 < price < math.inf):
            return None
        if size is not None and not 0.0 <= size < math.inf:
            return None
        if recv_ts_us is not None and not MIN_TS_US <= recv_ts_us < MAX_TS_US:
            return None
        source = self.sources.get(source_b)
        if source is None:
            try:
                text = source_b.decode()
            except (UnicodeDecodeError, AttributeError):
                return None
            if SOURCE_RE.fullmatch(text) is None:
                return None
            source = self.sources[source_b] = text
        return (symbol, ts_us, price, size, source, recv_ts_us, packed)


def decode_entries(
    keys: Keys,
    stream: bytes | str,
    entries: Iterable[tuple[bytes | str, RawFields]] | Iterable[Sequence[Any]],
    batch: Batch | None = None,
) -> Batch:
    """Decode one stream's entries into ``batch`` (a new one if None).

    ``entries`` are ``(id, fields)`` pairs, fields parsed (dict) or raw (flat
    list). Entries with no fields (deleted from the stream while pending;
    Redis returns them as nil) are listed in :attr:`Batch.vanished`.
    """
    out = Batch() if batch is None else batch
    stream_key = _text(stream)
    expected = keys.symbol_of(stream_key)
    validator = _Validator(expected)
    rows, row_ids = out.rows, out.row_ids
    fast = validator.row
    symbol, symbol_b, sources = validator.symbol, validator.symbol_b, validator.sources
    inf = math.inf
    for raw_id, raw_fields in entries:
        entry_id = raw_id.decode() if type(raw_id) is bytes else str(raw_id)
        if (symbol is not None and type(raw_fields) is list and len(raw_fields) == 2
                and raw_fields[0] == F_TICK and type(raw_fields[1]) is bytes):
            # Hot loop: the usual entry as the raw reader returns it, with
            # _pack and _Validator.row_of_value inlined (each call costs ~10 %
            # of the decoding at 100k entries per second). Same parsers, same
            # bounds; anything it does not accept takes the general path below.
            parts = raw_fields[1].split(b" ")
            if len(parts) == 6 and parts[0] == symbol_b:
                ms, sep, seq = entry_id.partition("-")
                try:
                    ms_i, seq_i = int(ms), int(seq)
                    ts_us, price = int(parts[1]), float(parts[2])
                    size = float(parts[3]) if parts[3] else None
                    recv_ts_us = int(parts[5]) if parts[5] else None
                except ValueError:
                    pass
                else:
                    source = sources.get(parts[4])  # filled by the general path
                    if (source is not None and sep and 0 <= ms_i < _MS_LIMIT
                            and 0 <= seq_i < _SEQ_LIMIT and MIN_TS_US <= ts_us < MAX_TS_US
                            and 0.0 < price < inf and (size is None or 0.0 <= size < inf)
                            and (recv_ts_us is None or MIN_TS_US <= recv_ts_us < MAX_TS_US)):
                        rows.append((symbol, ts_us, price, size, source, recv_ts_us,
                                     (ms_i << _SEQ_BITS) | seq_i))
                        row_ids.append((stream_key, entry_id))
                        continue
        packed = _pack(entry_id)
        if type(raw_fields) is list:
            it = iter(raw_fields)
            fields = dict(zip(it, it, strict=False))
        else:
            fields = as_field_map(raw_fields)
        if not fields:
            out.vanished.append((stream_key, entry_id))
            continue
        if packed is None:
            try:
                packed = codec.pack_entry_id(entry_id)
            except ValueError as exc:
                out.rejects.append(Reject(stream_key, entry_id, fields, str(exc)))
                continue
        row = fast(fields, packed)
        if row is None:
            row = _slow_row(stream_key, entry_id, fields, packed, expected, out)
            if row is None:
                continue
        rows.append(row)
        row_ids.append((stream_key, entry_id))
    return out


_SEQ_BITS = codec.SEQ_BITS
_SEQ_LIMIT = 1 << _SEQ_BITS
_MS_LIMIT = 1 << (63 - _SEQ_BITS)


def _pack(entry_id: str) -> int | None:
    """:func:`pricepipe.codec.pack_entry_id` for well-formed IDs (same ``int``
    parsing, same bounds); None sends the ID to the codec, which packs it or
    says what is wrong."""
    ms, sep, seq = entry_id.partition("-")
    if not sep:
        return None
    try:
        ms_i, seq_i = int(ms), int(seq)
    except ValueError:
        return None
    if not (0 <= ms_i < _MS_LIMIT and 0 <= seq_i < _SEQ_LIMIT):
        return None
    return (ms_i << _SEQ_BITS) | seq_i


def _slow_row(stream_key: str, entry_id: str, fields: dict[bytes, bytes], packed: int,
              expected: str, out: Batch) -> TickRow | None:
    """The codec's verdict on an entry the fast path did not accept."""
    try:
        tick = codec.decode_fields(fields)
    except ValueError as exc:  # DecodeError and InvalidTickError both are
        out.rejects.append(Reject(stream_key, entry_id, fields, str(exc)))
        return None
    if tick.symbol != expected:
        out.rejects.append(Reject(
            stream_key, entry_id, fields,
            f"symbol {tick.symbol!r} does not belong in the stream of {expected!r}"))
        return None
    return (tick.symbol, tick.ts_us, tick.price, tick.size, tick.source, tick.recv_ts_us,
            packed)


def decode_reply(keys: Keys, reply: Any, batch: Batch | None = None) -> Batch:
    """Decode an ``XREADGROUP`` reply: ``[[stream, [(id, fields), ...]], ...]``
    (RESP2, parsed or raw) or ``{stream: [...]}`` (RESP3)."""
    out = Batch() if batch is None else batch
    if not reply:
        return out
    pairs = reply.items() if isinstance(reply, Mapping) else reply
    for stream, entries in pairs:
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
