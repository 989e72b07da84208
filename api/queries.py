"""The API's SQL: history of trades, quotes and bars, instruments, last prices.

Every function takes an open connection; values reach PostgreSQL only as
bound parameters (``%(name)s``), and the pieces of SQL that vary (the
table, the row order with its range and cursor conditions) are fixed
fragments and identifiers composed with :mod:`psycopg2.sql`.

Trades and quotes are read in one of two orders: a time range by event
time, from the ``(symbol, ts, ...)`` index; an entry-ID range in stream
order, from the primary key ``(symbol, entry_id, ts)``, the time bounded
by the append-time bounds of :mod:`pricepipe.events` so only the daily
partitions the entries can be in are read.

Rows are encoded by PostgreSQL itself, as JSON text or as CSV through
``COPY ... TO STDOUT``, so a page of 100,000 trades is not turned into
100,000 Python dicts and back. The JSON of a row is exactly
:func:`pricepipe.codec.event_to_dict` of its event (the tests compare
them): ``ts`` is ISO-8601 UTC with microseconds and ``Z``, ``ts_us`` exact
epoch microseconds, every key present (``null`` when absent), and ``id``
the Redis entry ID the row was persisted from
(:func:`pricepipe.codec.unpack_entry_id`, with the codec's own bit split
passed in as parameters), ``null`` for a backfilled row, which never was
in a stream (its synthetic entry ID is negative).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from pricepipe import codec
from pricepipe.clock import us_to_datetime
from pricepipe.events import US_PER_MINUTE
from pricepipe.historysql import ISO_PATTERN, bars_query, epoch_us
from pricepipe.keys import Channel

from .params import Cursor, IdRange, TimeRange

#: What a history request reads: a time range in event-time order, or an
#: entry-ID range in stream order.
Span = TimeRange | IdRange



_ID_PARAMS = {"seq_bits": codec.SEQ_BITS, "seq_mask": (1 << codec.SEQ_BITS) - 1}


@dataclass(frozen=True, slots=True)
class EventTable:
    """How the rows of one history table are selected and encoded.

    ``values`` are the select-list expressions between ``ts_us`` and
    ``source``, ``json`` the matching part of the JSON object (reading the
    select list as ``t``), ``csv_columns`` the CSV header: the JSON keys, in
    order.
    """

    channel: Channel
    values: str
    json: str
    csv_columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.channel)


#: Numbers are PostgreSQL's shortest exact text (extra_float_digits >= 1,
#: the default since PostgreSQL 12): valid JSON for the finite values the
#: tables' checks allow. ``side`` is 'buy' or 'sell' (a check), so it is
#: quoted as is; text that no check constrains goes through to_json.
TRADES = EventTable(
    Channel.TRADES,
    values="price, size, side, trade_id",
    json="""',"price":' || t.price
           || ',"size":' || coalesce(t.size::text, 'null')
           || ',"side":' || coalesce('"' || t.side || '"', 'null')
           || ',"trade_id":' || coalesce(to_json(t.trade_id)::text, 'null')""",
    csv_columns=("symbol", "ts", "ts_us", "price", "size", "side", "trade_id", "source",
                 "recv_ts_us", "id"),
)

QUOTES = EventTable(
    Channel.QUOTES,
    values="bid, bid_size, ask, ask_size",
    json="""',"bid":' || coalesce(t.bid::text, 'null')
           || ',"bid_size":' || coalesce(t.bid_size::text, 'null')
           || ',"ask":' || coalesce(t.ask::text, 'null')
           || ',"ask_size":' || coalesce(t.ask_size::text, 'null')""",
    csv_columns=("symbol", "ts", "ts_us", "bid", "bid_size", "ask", "ask_size", "source",
                 "recv_ts_us", "id"),
)

EVENT_TABLES = {table.channel: table for table in (TRADES, QUOTES)}

# A row as the API serves it, from the table's columns.
_FORMATTED = f"""
    symbol,
    to_char(ts AT TIME ZONE 'UTC', {ISO_PATTERN}) AS ts,
    {epoch_us("ts")} AS ts_us,
    {{values}}, source,
    {epoch_us("recv_ts")} AS recv_ts_us,
    CASE WHEN entry_id >= 0 THEN (entry_id >> %(seq_bits)s)::text || '-'
         || (entry_id & %(seq_mask)s)::text END AS id,
    entry_id
"""

# ORDER BY names the table's columns: a bare `ts` would be the to_char text
# of the select list (output names win in ORDER BY), which no index serves,
# so every row of the range was formatted and sorted for a page of 1,000.
# (WHERE sees only the table's columns.)
_SELECT = f"""
    SELECT {_FORMATTED}
      FROM {{table}}
     WHERE symbol = %(symbol)s {{range}} {{bounds}}
     ORDER BY {{order}}
     {{limit}}
"""

# The same rows selected, ordered and cut by an inner query and formatted
# by the outer one, for the JSON pages: their sort then holds the narrow
# stored rows instead of the formatted ones. PostgreSQL CPU of a day of
# trades (86,400 rows, COPY of the JSON rows, parallel workers counted)
# 401 -> 363 ms, of quotes 311 -> 283 ms. Not for CSV: there the planner
# then prefers a parallel sequential scan and a full sort, which cost more
# CPU (205 -> 230 ms) than the index scan it uses on _SELECT. The outer
# scan of a subquery keeps its order, as every query here that wraps one
# relies on.
_SELECT_NARROW = f"""
    SELECT {_FORMATTED}
      FROM (SELECT symbol, ts, {{values}}, source, recv_ts, entry_id
              FROM {{table}}
             WHERE symbol = %(symbol)s {{range}} {{bounds}}
             ORDER BY {{order}}
             {{limit}}) AS stored
"""


@dataclass(frozen=True, slots=True)
class _Order:
    """The SQL of one row order: the range condition, the ORDER BY (``{t}``
    is the table) and the keyset bounds after a cursor and around the split
    key of a split page (see event_page). The keys are row comparisons in
    the index's column order, so they are index conditions."""

    range: sql.SQL
    order_by: str
    after: sql.SQL
    before_split: sql.SQL
    from_split: sql.SQL

    def order(self, table: EventTable) -> sql.Composed:
        return sql.SQL(self.order_by).format(t=sql.Identifier(table.name))


# Event-time order, from the (symbol, ts, ...) index.
_TIME_ORDER = _Order(
    range=sql.SQL("AND ts >= %(start)s AND ts < %(end)s"),
    order_by="{t}.ts, {t}.entry_id",
    after=sql.SQL("AND (ts, entry_id) > (%(after_ts)s, %(after_entry)s)"),
    before_split=sql.SQL("AND (ts, entry_id) < (%(split_ts)s, %(split_entry)s)"),
    from_split=sql.SQL("AND (ts, entry_id) >= (%(split_ts)s, %(split_entry)s)"),
)

# Stream order, from the primary key (symbol, entry_id, ts). The ts bounds
# select no row the IDs do not (IdRange.event_times) but name the daily
# partitions the entries can be in, so PostgreSQL reads only those (plan-time
# pruning: the values reach the server inlined, by mogrify, for COPY).
# Negative (backfilled) entry IDs are below every after_id.
_STREAM_ORDER = _Order(
    range=sql.SQL("AND entry_id > %(after_id)s AND entry_id < %(until_id)s"
                  " AND ts >= %(start)s AND ts < %(end)s"),
    order_by="{t}.entry_id, {t}.ts",
    after=sql.SQL("AND (entry_id, ts) > (%(after_entry)s, %(after_ts)s)"),
    before_split=sql.SQL("AND (entry_id, ts) < (%(split_entry)s, %(split_ts)s)"),
    from_split=sql.SQL("AND (entry_id, ts) >= (%(split_entry)s, %(split_ts)s)"),
)


def _order_of(span: Span) -> _Order:
    return _STREAM_ORDER if isinstance(span, IdRange) else _TIME_ORDER


# The key of the row `offset` rows into a page: an index-only scan.
_SPLIT_KEY = sql.SQL("""
    SELECT ts, entry_id FROM {table}
     WHERE symbol = %(symbol)s {range} {bounds}
     ORDER BY {order}
    OFFSET %(offset)s LIMIT 1
""")

# The entry ID of the `offset`-th row at one instant after the cursor: the
# key of a page's last row when the row's JSON has no ID to give it.
_KEY_AT = sql.SQL("""
    SELECT entry_id FROM {table}
     WHERE symbol = %(symbol)s AND ts = %(at_ts)s {bounds}
     ORDER BY entry_id
    OFFSET %(offset)s LIMIT 1
""")

#: A JSON page of at least this many rows is read as two halves at once, on
#: two connections, when a second one is free: PostgreSQL builds the JSON
#: row by row on one core per query, about 2 µs a row.
SPLIT_PAGE_ROWS = 20_000

# The JSON object of a row, by concatenation: about twice as fast as
# json_build_object. The symbol is the one asked for (validated), so its
# part of the object is a bound constant.
_JSON = """
    SELECT %(json_head)s || t.ts || '","ts_us":' || t.ts_us
           || {values}
           || ',"source":' || to_json(t.source)::text
           || ',"recv_ts_us":' || coalesce(t.recv_ts_us::text, 'null')
           || ',"id":' || coalesce('"' || t.id || '"', 'null') || '}}'
      FROM ({select}) AS t
"""

_CSV = sql.SQL("SELECT {columns} FROM ({select}) AS t")

# Bars of any width by the rule of pricepipe.historysql (shared with the
# client library's DataFrames), formatted and ordered for the API.
_BARS = f"""
    SELECT to_char(bucket AT TIME ZONE 'UTC', {ISO_PATTERN}) AS bucket,
           {epoch_us("bucket")} AS bucket_us,
           open, high, low, close, volume,
           CASE WHEN volume > 0 THEN notional / volume END AS vwap,
           trade_count AS trades
      FROM ({{bars}}) AS bars
     ORDER BY bars.bucket
"""

BAR_CSV_COLUMNS = ("bucket", "bucket_us", "open", "high", "low", "close", "volume", "vwap",
                   "trades")

_BAR_JSON = sql.SQL("""
    SELECT '{{"bucket":"' || b.bucket || '","bucket_us":' || b.bucket_us
           || ',"open":' || b.open || ',"high":' || b.high || ',"low":' || b.low
           || ',"close":' || b.close || ',"volume":' || b.volume
           || ',"vwap":' || coalesce(b.vwap::text, 'null')
           || ',"trades":' || b.trades || '}}'
      FROM ({minutes}) AS b
""")

_BAR_CSV = sql.SQL("SELECT * FROM ({minutes}) AS b")


@dataclass(frozen=True, slots=True)
class JsonRows:
    """``count`` JSON objects encoded by PostgreSQL, each ending in a newline
    (COPY's row terminator; JSON text never contains a raw one)."""

    lines: bytearray
    count: int

    @property
    def joined_bytes(self) -> int:
        """Length of the objects joined by commas."""
        return max(len(self.lines) - 1, 0)

    def joined_chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The objects joined by commas, in pieces of at most ``chunk_bytes``.

        Each newline but the last becomes a comma, a piece at a time: small
        buffers stay in the CPU cache and are reused, where joining and
        replacing a whole day of trades (15 MB) in one go took 25 ms in the
        server, most of it faulting in fresh memory.
        """
        view = memoryview(self.lines)[:self.joined_bytes]
        for start in range(0, len(view), chunk_bytes):
            yield bytes(view[start:start + chunk_bytes]).replace(b"\n", b",")


@dataclass(frozen=True, slots=True)
class EventPage:
    """Up to ``limit`` rows and the cursor of the next page."""

    rows: JsonRows
    next_cursor: Cursor | None


# COPY with delimiter and quote characters that JSON text never contains raw
# (to_json escapes every control character): each row comes out verbatim.
_COPY_RAW = sql.SQL(
    "COPY ({}) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')")


class _Lines:
    """``copy_expert`` sink appending every row to one buffer as it arrives
    (psycopg2 writes each CopyData message, one per row, then frees it)."""

    __slots__ = ("lines", "write")

    def __init__(self) -> None:
        self.lines = bytearray()
        self.write = self.lines.extend


def _copy_rows(cur: Any, query: sql.Composable, params: dict[str, Any]) -> JsonRows:
    """The one-column rows of ``query``, each ending in a newline."""
    sink = _Lines()
    cur.copy_expert(_COPY_RAW.format(sql.SQL(cur.mogrify(query, params).decode())), sink)
    # psycopg2 reads the row count from COPY's command tag.
    count = cur.rowcount if cur.rowcount >= 0 else sink.lines.count(b"\n")
    return JsonRows(sink.lines, count)


def _json_head(symbol: str) -> str:
    """``{"symbol":"AAPL","ts":"``: the start of every row's object."""
    return '{"symbol":' + codec.encode_json(symbol).decode() + ',"ts":"'


def _event_params(symbol: str, span: Span, cursor: Cursor | None) -> dict[str, Any]:
    times = span.event_times(cursor) if isinstance(span, IdRange) else span
    params: dict[str, Any] = {
        "symbol": symbol,
        "start": us_to_datetime(times.start_us),
        "end": us_to_datetime(times.end_us),
        "json_head": _json_head(symbol),
        **_ID_PARAMS,
    }
    if isinstance(span, IdRange):
        params["after_id"] = span.after
        params["until_id"] = span.until
    if cursor is not None:
        params["after_ts"] = us_to_datetime(cursor.ts_us)
        params["after_entry"] = cursor.entry_id
    return params


def _select(table: EventTable, order: _Order, limit: int | None,
            *bounds: sql.Composable, narrow: bool = False) -> sql.Composed:
    """The rows, formatted: ``narrow`` for JSON pages (see _SELECT_NARROW)."""
    return sql.SQL(_SELECT_NARROW if narrow else _SELECT).format(
        values=sql.SQL(table.values),
        table=sql.Identifier(table.name),
        range=order.range,
        bounds=sql.SQL(" ").join(bounds),
        order=order.order(table),
        limit=sql.SQL("LIMIT {}").format(sql.Literal(int(limit))) if limit is not None
        else sql.SQL(""),
    )


def _after(order: _Order, cursor: Cursor | None) -> tuple[sql.Composable, ...]:
    return (order.after,) if cursor is not None else ()


def event_page_sql(conn: psycopg2.extensions.connection, table: EventTable, symbol: str,
                   span: Span, cursor: Cursor | None, limit: int) -> bytes:
    """The bound query of a JSON page read on one connection (what
    :func:`event_page` runs, e.g. to ``EXPLAIN`` it)."""
    order = _order_of(span)
    query = sql.SQL(_JSON).format(values=sql.SQL(table.json),
                                  select=_select(table, order, limit + 1,
                                                 *_after(order, cursor), narrow=True))
    with conn.cursor() as cur:
        return cur.mogrify(query, _event_params(symbol, span, cursor))


def event_page(conn: psycopg2.extensions.connection, table: EventTable, symbol: str,
               span: Span, cursor: Cursor | None, limit: int, *,
               spare: psycopg2.extensions.connection | None = None) -> EventPage:
    """Rows of ``table`` of ``symbol`` in ``span`` after ``cursor``;
    ``next_cursor`` is None on the last page.

    A :class:`~.params.TimeRange` is read oldest first, by ``(ts, entry
    id)``; an :class:`~.params.IdRange` in stream order, by ``(entry id,
    ts)``, from the primary key, and its cursors are ``stream_order`` ones.
    The caller checks that ``cursor`` is of the kind ``span`` needs
    (:func:`~.params.parse_cursor`).

    With a ``spare`` connection, a page of :data:`SPLIT_PAGE_ROWS` or more
    is read as two halves at once (split at the key of its middle row), one
    on each connection: the same rows, in about half the time when the
    database has a core to spare. The halves are two statements, each
    seeing the rows committed when it starts; a row committed in between
    may be missed, as it would be by one statement started a moment
    earlier. Either way each row returned is stored, in order, once.
    """
    order = _order_of(span)
    params = _event_params(symbol, span, cursor)
    if spare is None or limit < SPLIT_PAGE_ROWS:
        rows = _json_rows(conn, table, params,
                          _select(table, order, limit + 1, *_after(order, cursor),
                                  narrow=True))
    else:
        rows = _split_rows(conn, spare, table, order, params, _after(order, cursor), limit + 1)
    page, last = first_rows(rows, limit)
    if last is None:
        return EventPage(page, None)
    row = codec.decode_json(last)
    ts_us = int(row["ts_us"])
    stream_order = order is _STREAM_ORDER
    if row["id"] is not None:
        return EventPage(page, Cursor(ts_us, codec.pack_entry_id(row["id"]),
                                      stream_order=stream_order))
    # Only in time order: an ID range holds no backfilled row.
    return EventPage(page, _cursor_of_backfilled(conn, table, params, cursor, page, ts_us))


def _cursor_of_backfilled(conn: psycopg2.extensions.connection, table: EventTable,
                          params: dict[str, Any], cursor: Cursor | None, page: JsonRows,
                          ts_us: int) -> Cursor:
    """The cursor after ``page`` when its last row, at ``ts_us``, is a
    backfilled one (its JSON says ``"id":null``): the page ends with the
    first ``k`` rows at that instant after ``cursor``, so the row is the
    ``k``-th of them by entry ID.

    Only such pages pay this query. A row committed or deleted at that
    instant since the page was read can only make the next page repeat rows
    of that instant, never skip one.
    """
    lines = page.lines
    # Every row begins with the same head, then its 27-character ISO time.
    prefix_len = len(params["json_head"].encode()) + 27
    end = len(lines)
    begin = lines.rfind(b"\n", 0, end - 1) + 1
    prefix = bytes(lines[begin:begin + prefix_len])
    same = 0
    while end > 0:
        begin = lines.rfind(b"\n", 0, end - 1) + 1
        if lines[begin:begin + prefix_len] != prefix:
            break
        same += 1
        end = begin
    with conn.cursor() as cur:
        cur.execute(_KEY_AT.format(table=sql.Identifier(table.name),
                                   bounds=sql.SQL(" ").join(_after(_TIME_ORDER, cursor))),
                    {**params, "at_ts": us_to_datetime(ts_us), "offset": same - 1})
        found = cur.fetchone()
    if found is None:  # deleted meanwhile: resume before the instant
        return Cursor(ts_us - 1, (1 << 63) - 1)
    return Cursor(ts_us, int(found[0]))


def first_rows(rows: JsonRows, limit: int) -> tuple[JsonRows, bytes | None]:
    """The first ``limit`` of ``rows`` (cut in place) and, when there were
    more (one more, or a few if rows arrived between the halves of a split
    page), the last of those: it gives the page's cursor."""
    if rows.count <= limit:
        return rows, None
    lines = rows.lines
    end = len(lines)
    for _ in range(rows.count - limit):
        end = lines.rfind(b"\n", 0, end - 1) + 1
    last = bytes(lines[lines.rfind(b"\n", 0, end - 1) + 1:end])
    del lines[end:]
    return JsonRows(lines, limit), last


def _json_rows(conn: psycopg2.extensions.connection, table: EventTable,
               params: dict[str, Any], select: sql.Composed) -> JsonRows:
    query = sql.SQL(_JSON).format(values=sql.SQL(table.json), select=select)
    with conn.cursor() as cur:
        return _copy_rows(cur, query, params)


def _split_rows(conn: psycopg2.extensions.connection, spare: psycopg2.extensions.connection,
                table: EventTable, order: _Order, params: dict[str, Any],
                after: tuple[sql.Composable, ...], wanted: int) -> JsonRows:
    """The first ``wanted`` rows: those before the middle one on ``conn``,
    the rest on ``spare`` in a thread of its own, at the same time."""
    half = wanted // 2
    with conn.cursor() as cur:
        cur.execute(_SPLIT_KEY.format(table=sql.Identifier(table.name), range=order.range,
                                      bounds=sql.SQL(" ").join(after),
                                      order=order.order(table)),
                    {**params, "offset": half})
        middle = cur.fetchone()
    if middle is None:  # at most `half` rows in all: no need to split
        return _json_rows(conn, table, params,
                          _select(table, order, wanted, *after, narrow=True))
    params = {**params, "split_ts": middle[0], "split_entry": middle[1]}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-page") as executor:
        second = executor.submit(_json_rows, spare, table, params,
                                 _select(table, order, wanted - half, order.from_split,
                                         narrow=True))
        try:
            first = _json_rows(conn, table, params,
                               _select(table, order, None, *after, order.before_split,
                                       narrow=True))
        except BaseException:
            spare.cancel()  # the page has failed: do not wait for its second half
            raise
        rest = second.result()
    first.lines.extend(rest.lines)
    return JsonRows(first.lines, first.count + rest.count)


def event_csv_sql(conn: psycopg2.extensions.connection, table: EventTable, symbol: str,
                  span: Span, cursor: Cursor | None, limit: int | None, *,
                  columns: Sequence[str] | None = None) -> bytes:
    """The bound ``SELECT`` of a CSV download of ``table``, in the order of
    ``span``'s kind (see :func:`event_page`), for
    :class:`~pricepipe.api.copystream.CopyStream`: ``columns`` (default
    ``table.csv_columns``; a Parquet or Arrow download reads times as
    ``ts_us`` only, and PostgreSQL then leaves the unread ones uncomputed)."""
    order = _order_of(span)
    query = _CSV.format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns or table.csv_columns),
        select=_select(table, order, limit, *_after(order, cursor)),
    )
    with conn.cursor() as cur:
        return cur.mogrify(query, _event_params(symbol, span, cursor))


#: A CSV download is read as two halves at once (see
#: :class:`~pricepipe.api.copystream.CopyStream`) when it has at least
#: ``SPLIT_CSV_ROWS`` rows and at most ``MAX_SPLIT_CSV_ROWS``: the second
#: half waits in the API's memory while the first is sent (at most 100,000
#: rows, about 13 MB of trades), so a longer download is one COPY.
SPLIT_CSV_ROWS = 20_000
MAX_SPLIT_CSV_ROWS = 200_000

# At most `most` rows of a range: an index-only count that stops there.
_COUNT_UPTO = sql.SQL("""
    SELECT count(*) FROM (SELECT 1 FROM {table}
                           WHERE symbol = %(symbol)s {range} {bounds}
                           LIMIT %(most)s) AS r
""")


def event_csv_halves(conn: psycopg2.extensions.connection, table: EventTable, symbol: str,
                     span: Span, cursor: Cursor | None,
                     limit: int | None) -> tuple[bytes, bytes] | None:
    """The bound ``SELECT`` of the first and of the second half of the rows
    :func:`event_csv_sql` selects, split at the key of the middle row, or
    None when there are fewer than :data:`SPLIT_CSV_ROWS` or more than
    :data:`MAX_SPLIT_CSV_ROWS`. The halves hold exactly that query's rows
    only when run in the snapshot this function ran in (one repeatable-read
    transaction, exported to the other connection)."""
    order = _order_of(span)
    params = _event_params(symbol, span, cursor)
    after = _after(order, cursor)
    most = MAX_SPLIT_CSV_ROWS if limit is None else min(limit, MAX_SPLIT_CSV_ROWS)
    table_id = sql.Identifier(table.name)
    with conn.cursor() as cur:
        cur.execute(_COUNT_UPTO.format(table=table_id, range=order.range,
                                       bounds=sql.SQL(" ").join(after)),
                    {**params, "most": most + 1})
        (rows,) = cur.fetchone()
        if limit is not None:
            rows = min(rows, limit)
        if not SPLIT_CSV_ROWS <= rows <= MAX_SPLIT_CSV_ROWS:
            return None
        half = rows // 2
        cur.execute(_SPLIT_KEY.format(table=table_id, range=order.range,
                                      bounds=sql.SQL(" ").join(after),
                                      order=order.order(table)),
                    {**params, "offset": half})
        middle = cur.fetchone()
        if middle is None:  # cannot be, in one snapshot; one COPY then
            return None
        params = {**params, "split_ts": middle[0], "split_entry": middle[1]}
        names = sql.SQL(", ").join(sql.Identifier(c) for c in table.csv_columns)
        first = _CSV.format(columns=names,
                            select=_select(table, order, None, *after, order.before_split))
        second = _CSV.format(columns=names,
                             select=_select(table, order, rows - half, order.from_split))
        return cur.mogrify(first, params), cur.mogrify(second, params)


def _bar_params(symbol: str, span: TimeRange, width_us: int) -> dict[str, Any]:
    # Whole minutes: a stored bar and the trades it summarises always agree.
    end_us = -(-span.end_us // US_PER_MINUTE) * US_PER_MINUTE
    return {
        "symbol": symbol,
        "start": us_to_datetime(span.start_us),
        "end": us_to_datetime(end_us),
        "width": timedelta(microseconds=width_us),
    }


def _bar_select(width_us: int) -> sql.Composed:
    return sql.SQL(_BARS).format(bars=sql.SQL(bars_query(width_us)))


def bars(conn: psycopg2.extensions.connection, symbol: str, span: TimeRange,
         width_us: int) -> JsonRows:
    """The OHLCV bars (with VWAP and trade count) of ``symbol`` of width
    ``width_us``, oldest first. ``span.start_us`` should be aligned to the width."""
    with conn.cursor() as cur:
        return _copy_rows(cur, _BAR_JSON.format(minutes=_bar_select(width_us)),
                          _bar_params(symbol, span, width_us))


def bar_csv_sql(conn: psycopg2.extensions.connection, symbol: str, span: TimeRange,
                width_us: int) -> bytes:
    """The bound ``SELECT`` of a CSV bar download, for
    :class:`~pricepipe.api.copystream.CopyStream`."""
    with conn.cursor() as cur:
        return cur.mogrify(_BAR_CSV.format(minutes=_bar_select(width_us)),
                           _bar_params(symbol, span, width_us))


def instruments(conn: psycopg2.extensions.connection) -> dict[str, dict[str, Any]]:
    """Metadata of every instrument, by symbol."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT symbol, name, logo_url, currency, exchange, week52_high, week52_low"
            "  FROM instruments ORDER BY symbol"
        )
        return {
            row[0]: {"name": row[1], "logo_url": row[2], "currency": row[3],
                     "exchange": row[4], "week52_high": row[5], "week52_low": row[6]}
            for row in cur.fetchall()
        }


def last_prices(conn: psycopg2.extensions.connection,
                symbols: list[str]) -> dict[str, tuple[int, float]]:
    """Newest stored ``(ts_us, price)`` of each symbol that has trades."""
    if not symbols:
        return {}
    with conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT s.symbol, {epoch_us("t.ts")}, t.price
              FROM unnest(%(symbols)s::text[]) AS s(symbol)
             CROSS JOIN LATERAL (
                   SELECT ts, price FROM trades WHERE trades.symbol = s.symbol
                    ORDER BY ts DESC, entry_id DESC LIMIT 1) AS t
            """,
            {"symbols": symbols},
        )
        return {row[0]: (int(row[1]), float(row[2])) for row in cur.fetchall()}


def ping(conn: psycopg2.extensions.connection) -> None:
    """A round trip; raises ``psycopg2.Error`` when the server is not there."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
