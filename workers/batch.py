"""A batch of stream entries on its way to PostgreSQL. Pure: no I/O.

:func:`decode_entries` splits what ``XREADGROUP`` / ``XAUTOCLAIM`` returned
from the trades and quotes streams into rows ready for ``COPY`` and
:class:`Reject` s (entries that can never be persisted: a missing field,
unreadable numbers, out-of-bounds values, a crossed book). One bad entry
never fails the rest of its batch. :func:`reject_untimely` then rejects the
rows whose event time is too far from their entry's append time.

The wire format is parsed only by :mod:`pricepipe.codec`: each entry goes
through its fast path (:func:`~pricepipe.codec.trade_values`,
:func:`~pricepipe.codec.quote_values`), and whatever that does not accept
through the reference parser, which accepts it or says why not. The symbol
is the stream key's, validated once per stream.

Rows (``entry_id`` is :func:`pricepipe.codec.pack_entry_id` of the stream
entry ID: with ``(symbol, ts)`` it is the primary key, so writing the same
entry twice cannot add a second row)::

    TradeRow  (symbol, ts_us, price, size, side, trade_id, source, recv_ts_us, entry_id)
    QuoteRow  (symbol, ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us, entry_id)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pricepipe import codec, streams
from pricepipe.events import (
    MAX_EVENT_AGE_AT_APPEND_US,
    MAX_EVENT_LEAD_AT_APPEND_US,
    Quote,
    Side,
    Trade,
    validate_symbol,
)
from pricepipe.keys import Channel, Keys

#: ``(symbol, ts_us, price, size, side, trade_id, source, recv_ts_us, entry_id)``;
#: ``side`` is ``"buy"``, ``"sell"`` or None.
TradeRow = tuple[str, int, float, float | None, str | None, str | None, str, int | None, int]
#: ``(symbol, ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us, entry_id)``
QuoteRow = tuple[str, int, float | None, float | None, float | None, float | None, str,
                 int | None, int]
#: ``(stream key, entry ID)`` of a row, to acknowledge it.
EntryRef = tuple[str, str]

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

    trades: list[TradeRow] = field(default_factory=list)
    #: The stream entry of each trade row, same order as :attr:`trades`.
    trade_ids: list[EntryRef] = field(default_factory=list)
    quotes: list[QuoteRow] = field(default_factory=list)
    quote_ids: list[EntryRef] = field(default_factory=list)
    #: The COPY line of each trade row (:func:`trade_copy_line`), same order
    #: as :attr:`trades`: made while decoding, most straight from the entry's
    #: bytes (no float formatted back to text).
    trade_lines: list[bytes] = field(default_factory=list)
    quote_lines: list[bytes] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    #: Entries deleted from the stream while pending (nothing left to persist).
    vanished: list[EntryRef] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.trades) + len(self.quotes) + len(self.rejects) + len(self.vanished)

    @property
    def row_count(self) -> int:
        """Trade and quote rows (entries that decoded), together."""
        return len(self.trades) + len(self.quotes)

    def extend(self, other: Batch) -> None:
        self.trades.extend(other.trades)
        self.trade_ids.extend(other.trade_ids)
        self.trade_lines.extend(other.trade_lines)
        self.quotes.extend(other.quotes)
        self.quote_ids.extend(other.quote_ids)
        self.quote_lines.extend(other.quote_lines)
        self.rejects.extend(other.rejects)
        self.vanished.extend(other.vanished)

    def ack_ids(self) -> dict[str, list[str]]:
        """Every entry of the batch by stream: rows, rejects and vanished ones."""
        out = self.row_ack_ids()
        for reject in self.rejects:
            out.setdefault(reject.stream, []).append(reject.entry_id)
        return out

    def row_ack_ids(self) -> dict[str, list[str]]:
        """Entries to acknowledge once the rows are committed: the rows' and
        the vanished ones (rejects are acknowledged with their dead letter)."""
        out: dict[str, list[str]] = {}
        for refs in (self.trade_ids, self.quote_ids, self.vanished):
            for stream, entry_id in refs:
                out.setdefault(stream, []).append(entry_id)
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: A stream entry's fields as redis-py parses them (a dict) or as the server
#: sends them (a flat ``[name, value, name, value, ...]`` list); None when
#: the entry was deleted while pending.
RawFields = Mapping[bytes, bytes] | Sequence[bytes] | None


def as_field_map(fields: RawFields) -> dict[bytes, bytes]:
    if not fields:
        return {}
    if isinstance(fields, Mapping):
        return dict(fields)
    it = iter(fields)
    return dict(zip(it, it, strict=False))


def trade_row(trade: Trade, entry_id: int) -> TradeRow:
    side = None if trade.side is None else str(trade.side)
    return (trade.symbol, trade.ts_us, trade.price, trade.size, side, trade.trade_id,
            trade.source, trade.recv_ts_us, entry_id)


def quote_row(quote: Quote, entry_id: int) -> QuoteRow:
    return (quote.symbol, quote.ts_us, quote.bid, quote.bid_size, quote.ask, quote.ask_size,
            quote.source, quote.recv_ts_us, entry_id)


def trade_of(row: TradeRow) -> Trade:
    symbol, ts_us, price, size, side, trade_id, source, recv_ts_us, _ = row
    return Trade(symbol, ts_us, price, size, source, trade_id,
                 None if side is None else Side(side), recv_ts_us)


def quote_of(row: QuoteRow) -> Quote:
    symbol, ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us, _ = row
    return Quote(symbol, ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us)


def decode_entries(
    keys: Keys,
    stream: bytes | str,
    entries: Iterable[tuple[bytes | str, RawFields]] | Iterable[Sequence[Any]],
    batch: Batch | None = None,
) -> Batch:
    """Decode one stream's entries into ``batch`` (a new one if None).

    ``entries`` are ``(id, fields)`` pairs, fields parsed (dict) or raw (flat
    list). Entries with no fields (deleted from the stream while pending;
    Redis returns them as nil) are listed in :attr:`Batch.vanished`. Every
    entry of a stream that is not a persisted stream of a valid symbol is
    rejected.
    """
    out = Batch() if batch is None else batch
    stream_key = _text(stream)
    try:
        channel, symbol = keys.parse_stream(stream_key)
        validate_symbol(symbol)
        if channel not in (Channel.TRADES, Channel.QUOTES):
            raise ValueError(f"{channel} entries are not persisted")
    except ValueError as exc:
        for raw_id, raw_fields in entries:
            fields = as_field_map(raw_fields)
            if fields:
                out.rejects.append(Reject(stream_key, _text(raw_id), fields,
                                          f"not a persisted stream: {exc}"))
            else:
                out.vanished.append((stream_key, _text(raw_id)))
        return out
    rows: list[Any]
    fast: Any
    line_of: Any
    if channel is Channel.TRADES:
        rows, refs, lines = out.trades, out.trade_ids, out.trade_lines
        fast, plain, line_of = codec.trade_values, codec.plain_trade, trade_copy_line
    else:
        rows, refs, lines = out.quotes, out.quote_ids, out.quote_lines
        fast, plain, line_of = codec.quote_values, codec.plain_quote, quote_copy_line
    name = codec.FIELD_OF[channel]
    pack = codec.pack_entry_id
    prefix = symbol.encode() + b"\t"
    for raw_id, raw_fields in entries:
        entry_id = raw_id.decode() if type(raw_id) is bytes else str(raw_id)
        # The usual entry, one field, as the raw reader returns it (a flat
        # list) or as redis-py parses it (a dict: cluster clients, claims):
        # the codec's fast path, no event object. Anything it declines takes
        # the reference path below.
        if type(raw_fields) is list and len(raw_fields) == 2 and raw_fields[0] == name:
            value = raw_fields[1]
        elif type(raw_fields) is dict and len(raw_fields) == 1:
            value = raw_fields.get(name)
        else:
            value = None
        if value is not None:
            values = fast(value)
            if values is not None:
                try:
                    packed = pack(entry_id)
                except ValueError:
                    pass
                else:
                    row = (symbol, *values, packed)
                    rows.append(row)
                    refs.append((stream_key, entry_id))
                    # The entry's value is the COPY row but for its separators
                    # (same columns, same order; empty is NULL) when its
                    # numbers are plain decimals (see codec.plain_quote).
                    lines.append(prefix + value.replace(b" ", b"\t") + b"\t%d\n" % packed
                                 if plain(value) else line_of(row))
                    continue
        fields = as_field_map(raw_fields)
        if not fields:
            out.vanished.append((stream_key, entry_id))
            continue
        try:
            packed = pack(entry_id)
            event = codec.decode_entry(channel, symbol, fields)
        except ValueError as exc:  # DecodeError and InvalidEventError both are
            out.rejects.append(Reject(stream_key, entry_id, fields, str(exc)))
            continue
        if isinstance(event, Trade):
            trade = trade_row(event, packed)
            out.trades.append(trade)
            out.trade_lines.append(trade_copy_line(trade))
        elif isinstance(event, Quote):
            quote = quote_row(event, packed)
            out.quotes.append(quote)
            out.quote_lines.append(quote_copy_line(quote))
        else:  # the parser of a persisted channel returns its kind of event
            raise AssertionError(f"unexpected {type(event).__name__} in {stream_key}")
        refs.append((stream_key, entry_id))
    return out


def decode_reply(keys: Keys, reply: Any, batch: Batch | None = None) -> Batch:
    """Decode an ``XREADGROUP`` reply of either protocol, raw or parsed (see
    :func:`pricepipe.streams.reply_streams`)."""
    out = Batch() if batch is None else batch
    for stream, entries in streams.reply_streams(reply):
        decode_entries(keys, stream, entries, out)
    return out


# --- event time against append time ----------------------------------------------------------


def append_time_reason(ts_us: int, appended_ms: int) -> str | None:
    """Why an event at ``ts_us`` cannot be the content of an entry appended at
    ``appended_ms`` (its ID's milliseconds), or None when it can: the bounds
    of :mod:`pricepipe.events` (``MAX_EVENT_LEAD_AT_APPEND_US`` ahead,
    ``MAX_EVENT_AGE_AT_APPEND_US`` behind, both inclusive), which the HTTP
    history relies on to read a range of entry IDs from the time-partitioned
    tables. Pure."""
    appended_us = appended_ms * 1000
    if ts_us > appended_us + MAX_EVENT_LEAD_AT_APPEND_US:
        return (f"event time too far in the future: {(ts_us - appended_us) / 1e6:.6f} s after "
                f"its entry was appended (limit {MAX_EVENT_LEAD_AT_APPEND_US / 1e6:g} s)")
    if ts_us < appended_us - MAX_EVENT_AGE_AT_APPEND_US:
        return (f"event time too old: {(appended_us - ts_us) / US_PER_DAY:.2f} days before its "
                f"entry was appended (limit {MAX_EVENT_AGE_AT_APPEND_US / US_PER_DAY:g} days)")
    return None


def reject_untimely(batch: Batch) -> int:
    """Move the rows whose event time is out of bounds for their entry's
    append time (:func:`append_time_reason`) to :attr:`Batch.rejects`, with
    the reason; returns how many. Such an event would be a row no entry-ID
    range finds, in a partition no retention drops (a clock off by years).
    Pure."""
    moved = 0
    low, high = MAX_EVENT_AGE_AT_APPEND_US, MAX_EVENT_LEAD_AT_APPEND_US
    shift = codec.SEQ_BITS
    for kind in (Channel.TRADES, Channel.QUOTES):
        rows: list[Any] = batch.trades if kind is Channel.TRADES else batch.quotes
        refs = batch.trade_ids if kind is Channel.TRADES else batch.quote_ids
        lines = batch.trade_lines if kind is Channel.TRADES else batch.quote_lines
        bad = [i for i, row in enumerate(rows)
               if not (row[8] >> shift) * 1000 - low <= row[1] <= (row[8] >> shift) * 1000 + high]
        if not bad:
            continue
        for i in bad:
            row = rows[i]
            reason = append_time_reason(row[1], row[8] >> shift)
            assert reason is not None
            fields = trade_fields(row) if kind is Channel.TRADES else quote_fields(row)
            batch.rejects.append(Reject(refs[i][0], refs[i][1], fields, reason))
        drop = set(bad)
        kept = [i for i in range(len(rows)) if i not in drop]
        rows[:] = [rows[i] for i in kept]
        refs[:] = [refs[i] for i in kept]
        if lines:
            lines[:] = [lines[i] for i in kept]
        moved += len(bad)
    return moved


def trade_fields(row: TradeRow) -> dict[bytes, bytes]:
    """Stream fields of a row that was a valid trade (for its dead letter):
    the entry as the codec writes it, so a replay reads it back."""
    return {codec.F_TRADE: codec.encode_trade(trade_of(row)).encode()}


def quote_fields(row: QuoteRow) -> dict[bytes, bytes]:
    """As :func:`trade_fields`, for a quote."""
    return {codec.F_QUOTE: codec.encode_quote(quote_of(row)).encode()}


# --- COPY text -------------------------------------------------------------------------------
#
# PostgreSQL ``COPY ... FROM STDIN WITH (NULL '')`` text format (see
# :data:`COPY_OPTIONS_SQL`): an empty field is NULL. No escaping is needed:
# symbols, sources and trade ids match pricepipe.events.SYMBOL_RE /
# SOURCE_RE / TRADE_ID_RE (no tab, newline or backslash, never empty), sides
# are written as the wire's codes ``b``/``s`` (the staging table's insert
# spells them out), numbers are written by repr/str. So a trade or quote
# entry's value is its COPY row, spaces for tabs, once the symbol and the
# packed entry ID are put around it.

#: The options of every COPY of these lines.
COPY_OPTIONS_SQL = "WITH (NULL '')"

_SIDE_CODE = {"buy": "b", "sell": "s", None: ""}


def _opt(value: float | int | str | None) -> str:
    if value is None:
        return ""
    return repr(value) if type(value) is float else str(value)


def trade_copy_line(row: TradeRow) -> bytes:
    """One trade row as a line of COPY text."""
    symbol, ts_us, price, size, side, trade_id, source, recv_ts_us, entry_id = row
    return (f"{symbol}\t{ts_us}\t{price!r}\t{_opt(size)}\t{_SIDE_CODE[side]}\t"
            f"{trade_id or ''}\t{source}\t{_opt(recv_ts_us)}\t{entry_id}\n").encode()


def quote_copy_line(row: QuoteRow) -> bytes:
    """One quote row as a line of COPY text."""
    symbol, ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us, entry_id = row
    return (f"{symbol}\t{ts_us}\t{_opt(bid)}\t{_opt(bid_size)}\t{_opt(ask)}\t"
            f"{_opt(ask_size)}\t{source}\t{_opt(recv_ts_us)}\t{entry_id}\n").encode()


def trade_copy_text(rows: Iterable[TradeRow]) -> bytes:
    """Trade rows as COPY text (for rows that come without their lines)."""
    return b"".join([trade_copy_line(row) for row in rows])


def quote_copy_text(rows: Iterable[QuoteRow]) -> bytes:
    """Quote rows as COPY text."""
    return b"".join([quote_copy_line(row) for row in rows])


def days_of(rows: Iterable[TradeRow] | Iterable[QuoteRow]) -> set[int]:
    """Distinct UTC days (days since the epoch) the rows' event times fall on."""
    return {row[1] // US_PER_DAY for row in rows}
