"""Parsing and checking of the API's request parameters. Pure functions, no I/O.

Every function raises :exc:`~pricepipe.exceptions.InvalidParameterError`
(a ``ValueError``) naming the parameter and saying what is wrong; the app
turns it into a 422 with a JSON body. Nothing here touches SQL: values
leave this module as typed Python values that the queries bind as
parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pricepipe import codec
from pricepipe.clock import US_PER_S, parse_time_us
from pricepipe.events import MAX_TS_US, MIN_TS_US, SYMBOL_RE, id_range_span_us
from pricepipe.exceptions import DecodeError, InvalidParameterError
from pricepipe.historysql import INTERVALS_US

US_PER_DAY = 86_400 * US_PER_S


#: ``<ts_us>_<entry_id>``; the entry ID is negative for backfilled rows.
_CURSOR_RE = re.compile(r"(\d{1,19})_(-?\d{1,19})")
#: ``<ms>-<seq>_<ts_us>``: the entry ID first, as the rows are ordered.
_STREAM_CURSOR_RE = re.compile(r"([0-9]{1,19}-[0-9]{1,20})_([0-9]{1,19})")
#: A Redis stream entry ID, both parts given (Redis reads ``<ms>`` alone as
#: ``<ms>-0`` or ``<ms>-<max>`` depending on the command: ambiguous here).
_ENTRY_ID_RE = re.compile(r"([0-9]{1,19})-([0-9]{1,20})")


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Half-open ``[start_us, end_us)`` in epoch microseconds, UTC."""

    start_us: int
    end_us: int


@dataclass(frozen=True, slots=True)
class IdRange:
    """The stream entries with ``after < entry_id < until`` (packed entry
    IDs, :func:`pricepipe.codec.pack_entry_id`; both exclusive), read in
    stream order. Never holds a backfilled row: those have negative IDs."""

    after: int
    until: int

    @property
    def after_ms(self) -> int:
        return self.after >> codec.SEQ_BITS

    @property
    def until_ms(self) -> int:
        return self.until >> codec.SEQ_BITS

    def event_times(self, cursor: Cursor | None = None) -> TimeRange:
        """Half-open event times every entry of the range (after ``cursor``,
        when given) lies in: :func:`pricepipe.events.id_range_span_us`."""
        low_ms = self.after_ms if cursor is None else max(self.after_ms,
                                                          cursor.entry_id >> codec.SEQ_BITS)
        return TimeRange(*id_range_span_us(low_ms, self.until_ms))


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last row of a page: its ``(ts_us, entry_id)``.

    ``entry_id`` is the packed stream entry ID
    (:func:`pricepipe.codec.pack_entry_id`), or the negative synthetic one
    of a backfilled row. A time-range page continues after ``(ts_us,
    entry_id)`` in that order, the event-time order; an ID-range page
    (``stream_order``) after ``(entry_id, ts_us)``, the primary key's order
    (the time breaks ties only if two rows share an ID, which a Redis that
    lost its data and reused IDs can cause). Each kind encodes differently,
    so one is never taken for the other.
    """

    ts_us: int
    entry_id: int
    stream_order: bool = False

    def encode(self) -> str:
        if self.stream_order:
            return f"{codec.unpack_entry_id(self.entry_id)}_{self.ts_us}"
        return f"{self.ts_us}_{self.entry_id}"


def parse_symbol(text: str, param: str = "symbol") -> str:
    """A symbol, upper-cased for convenience, checked against
    :data:`~pricepipe.events.SYMBOL_RE`."""
    symbol = text.strip().upper()
    if SYMBOL_RE.fullmatch(symbol) is None:
        raise InvalidParameterError(
            f"{param}: invalid symbol {text[:40]!r}: want 1-32 of A-Z 0-9 . _ : -", param=param
        )
    return symbol


def parse_symbols(text: str, *, most: int, param: str = "symbols") -> list[str]:
    """Comma-separated symbols, duplicates removed, order kept; 1 .. ``most`` of them."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise InvalidParameterError(f"{param}: give at least one symbol", param=param)
    symbols = list(dict.fromkeys(parse_symbol(p, param) for p in parts))
    if len(symbols) > most:
        raise InvalidParameterError(
            f"{param}: at most {most} symbols per request, not {len(symbols)}", param=param
        )
    return symbols


def parse_time(text: str, param: str) -> int:
    """ISO-8601 (no offset means UTC) or epoch s/ms/us digits -> epoch microseconds."""
    try:
        ts_us = parse_time_us(text)
    except (ValueError, OverflowError) as exc:
        raise InvalidParameterError(
            f"{param}: cannot read {text[:40]!r} as a time: give ISO-8601 "
            "(2026-01-02T03:04:05Z) or epoch seconds, milliseconds or microseconds",
            param=param,
        ) from exc
    if not MIN_TS_US <= ts_us <= MAX_TS_US:
        raise InvalidParameterError(
            f"{param}: {text[:40]!r} is outside 2000-01-01 .. 2100-01-01", param=param
        )
    return ts_us


def parse_range(
    start: str | None, end: str | None, *, now_us: int, default_span_us: int, max_span_us: int
) -> TimeRange:
    """``[start, end)``; ``end`` defaults to now, ``start`` to ``end - default_span_us``.

    Raises unless ``start < end`` and the span is at most ``max_span_us``.
    """
    end_us = parse_time(end, "end") if end is not None else now_us
    start_us = (parse_time(start, "start") if start is not None
                else max(end_us - default_span_us, MIN_TS_US))
    if start_us >= end_us:
        raise InvalidParameterError("start must be before end", param="start")
    if end_us - start_us > max_span_us:
        raise InvalidParameterError(
            f"time range too long: at most {_span_text(max_span_us)} per request", param="end"
        )
    return TimeRange(start_us, end_us)


def parse_cursor(text: str | None, *, stream_order: bool = False) -> Cursor | None:
    """A ``next_cursor`` value as returned by a previous page, or None.

    ``stream_order``: the request is an entry-ID range, so the cursor must
    come from such a page (and a time-range request's from a time-range page).
    """
    if text is None or text == "":
        return None
    if _STREAM_CURSOR_RE.fullmatch(text) is not None:
        if not stream_order:
            raise InvalidParameterError(
                "cursor: this cursor continues an after_id/until_id range: "
                "pass it with the same after_id and until_id", param="cursor")
        entry, ts = text.split("_")
        try:
            entry_id = codec.pack_entry_id(entry)
        except DecodeError:
            raise InvalidParameterError("cursor: out of range", param="cursor") from None
        ts_us = int(ts)
        if not MIN_TS_US <= ts_us <= MAX_TS_US:
            raise InvalidParameterError("cursor: out of range", param="cursor")
        return Cursor(ts_us, entry_id, stream_order=True)
    match = _CURSOR_RE.fullmatch(text)
    if match is None:
        raise InvalidParameterError(
            "cursor: not a cursor returned by this API (want <ts_us>_<entry>)", param="cursor"
        )
    if stream_order:
        raise InvalidParameterError(
            "cursor: this cursor continues a start/end time range, not an "
            "after_id/until_id range", param="cursor")
    ts_us, entry_id = int(match[1]), int(match[2])
    if not MIN_TS_US <= ts_us <= MAX_TS_US or not -(1 << 63) <= entry_id < 1 << 63:
        raise InvalidParameterError("cursor: out of range", param="cursor")
    return Cursor(ts_us, entry_id)


def parse_entry_id(text: str, param: str) -> int:
    """A stream entry ID ``<ms>-<seq>`` (e.g. ``1767571200120-0``) -> its
    packed form (:func:`pricepipe.codec.pack_entry_id`, order preserving)."""
    if _ENTRY_ID_RE.fullmatch(text) is None:
        raise InvalidParameterError(
            f"{param}: {text[:40]!r} is not a stream entry ID: want <ms>-<seq>, "
            "both decimal digits, e.g. 1767571200120-0", param=param)
    try:
        return codec.pack_entry_id(text)
    except DecodeError:
        raise InvalidParameterError(
            f"{param}: {text[:40]!r} is beyond any stored entry ID: at most "
            f"{(1 << (63 - codec.SEQ_BITS)) - 1} ms and {(1 << codec.SEQ_BITS) - 1} seq",
            param=param) from None


def parse_id_range(after_id: str | None, until_id: str | None, *,
                   max_span_us: int) -> IdRange | None:
    """The entries strictly between ``after_id`` and ``until_id`` (both
    required together; None when neither is given).

    Raises unless ``after_id < until_id`` (compared numerically, ms then
    seq) and their milliseconds are at most ``max_span_us`` apart, the cap
    of a time range.
    """
    if after_id is None and until_id is None:
        return None
    if after_id is None or until_id is None:
        missing = "after_id" if after_id is None else "until_id"
        raise InvalidParameterError(
            f"{missing}: give after_id and until_id together (the range between them, "
            "both exclusive)", param=missing)
    rng = IdRange(parse_entry_id(after_id, "after_id"), parse_entry_id(until_id, "until_id"))
    if rng.after >= rng.until:
        raise InvalidParameterError(
            "after_id must be before until_id (entry IDs compare as numbers: ms, then seq)",
            param="after_id")
    if (rng.until_ms - rng.after_ms) * 1000 > max_span_us:
        raise InvalidParameterError(
            f"entry ID range too long: at most {_span_text(max_span_us)} between the "
            "IDs' milliseconds per request", param="until_id")
    return rng


def parse_interval(text: str) -> int:
    """A bar width name (``1m``, ``5m``, ``15m``, ``1h``, ``1d``) -> microseconds."""
    try:
        return INTERVALS_US[text]
    except KeyError:
        raise InvalidParameterError(
            f"interval: {text[:16]!r} is not one of {', '.join(INTERVALS_US)}", param="interval"
        ) from None


def align_down(ts_us: int, width_us: int) -> int:
    """Start of the epoch-aligned bucket of width ``width_us`` holding ``ts_us``."""
    return ts_us - ts_us % width_us


def check_bar_count(span: TimeRange, width_us: int, most: int) -> None:
    """Refuse a bar query that could return more than ``most`` bars."""
    count = -(-(span.end_us - span.start_us) // width_us)
    if count > most:
        raise InvalidParameterError(
            f"time range too long for this interval: {count} bars, at most {most}; "
            "narrow the range or pick a wider interval",
            param="end",
        )


#: The media type of each format of the history routes (``format=`` names
#: the key; ``Accept`` the value).
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
#: The formats encoded by pyarrow, an optional dependency of the server.
BINARY_FORMATS = ("parquet", "arrow")


def response_format(format_param: str | None, accept: str | None, *,
                    offered: tuple[str, ...] = tuple(MEDIA_TYPES)) -> str:
    """The format of a history response: ``format`` when given (any of
    :data:`MEDIA_TYPES`: whether the server can make it is the caller's
    question), else the one of ``offered`` the ``Accept`` header gives a
    higher quality than JSON, the best first (ties: the order of
    ``offered``), else JSON."""
    if format_param is not None:
        if format_param not in MEDIA_TYPES:
            raise InvalidParameterError(
                f"format: {format_param[:16]!r} is not one of {', '.join(MEDIA_TYPES)}",
                param="format")
        return format_param
    if not accept:
        return "json"
    best, best_quality = "json", _accept_quality(accept, MEDIA_TYPES["json"])
    for name in offered:
        quality = _accept_quality(accept, MEDIA_TYPES[name])
        if quality > best_quality:
            best, best_quality = name, quality
    return best


def wants_csv(format_param: str | None, accept: str | None) -> bool:
    """CSV when ``format=csv``, or when ``format`` is absent and the client
    prefers ``text/csv`` over JSON in its ``Accept`` header."""
    return response_format(format_param, accept, offered=("json", "csv")) == "csv"


def _accept_quality(accept: str, media_type: str) -> float:
    """Quality the ``Accept`` header gives ``media_type`` exactly (RFC 9110 12.5.1);
    wildcards give nothing, so JSON stays the default."""
    best = 0.0
    for item in accept.split(","):
        kind, *params = (p.strip() for p in item.split(";"))
        if kind.lower() != media_type:
            continue
        quality = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best = max(best, quality)
    return best


def _span_text(span_us: int) -> str:
    if span_us % US_PER_DAY == 0:
        return f"{span_us // US_PER_DAY} days"
    return f"{span_us / US_PER_S:g} s"
