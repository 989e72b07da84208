"""The API's SQL: history of ticks and bars, instruments, last prices.

Every function takes an open connection; values reach PostgreSQL only as
bound parameters (``%(name)s``), and the few pieces of SQL that vary (an
optional cursor condition) are fixed fragments composed with
:mod:`psycopg2.sql`.

Rows are encoded by PostgreSQL itself, as JSON text or as CSV through
``COPY ... TO STDOUT``, so a page of 100,000 ticks is not turned into
100,000 Python dicts and back. The encoding matches
:func:`pricepipe.codec.tick_to_dict` (the tests compare them):
``ts`` is ISO-8601 UTC with microseconds and ``Z``, ``ts_us`` exact epoch
microseconds, ``id`` the Redis entry ID (:func:`pricepipe.codec.unpack_entry_id`,
using the codec's own bit split passed in as parameters), and
``recv_ts_us`` is always present (``null`` when unknown).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from queue import Empty, Full, Queue
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from pricepipe import codec
from pricepipe.clock import us_to_datetime

from .params import Cursor, TimeRange

#: ``to_char`` pattern of :func:`pricepipe.clock.format_us`.
_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""


def _epoch_us(column: str) -> str:
    """Epoch microseconds of a timestamptz column, exact, in float8.

    ``date_part('epoch', ts)`` is ``(µs since 2000 - offset) / 1e6`` in float8:
    one rounding of at most half an ulp, 2.4e-7 s below 2^32 s (year 2106).
    Times 1e6 adds at most half an ulp of the product, 0.25 µs; the sum stays
    under 0.5 µs, so ``round`` recovers the exact integer for every time a
    tick may carry (before 2100). Twice as fast as ``extract(epoch ...)``,
    which is ``numeric`` since PostgreSQL 14.
    """
    return f"round(date_part('epoch', {column}) * 1000000)::bigint"


_ID_PARAMS = {"seq_bits": codec.SEQ_BITS, "seq_mask": (1 << codec.SEQ_BITS) - 1}

# ORDER BY names the table's columns: a bare `ts` would be the to_char text
# of the select list (output names win in ORDER BY), which no index serves,
# so every row of the range was formatted and sorted for a page of 1,000.
_TICK_SELECT = sql.SQL(f"""
    SELECT symbol,
           to_char(ts AT TIME ZONE 'UTC', {_ISO}) AS ts,
           {_epoch_us("ts")} AS ts_us,
           price, size, source,
           {_epoch_us("recv_ts")} AS recv_ts_us,
           (entry_id >> %(seq_bits)s)::text || '-' || (entry_id & %(seq_mask)s)::text AS id,
           entry_id
      FROM ticks
     WHERE symbol = %(symbol)s AND ts >= %(start)s AND ts < %(end)s {{bounds}}
     ORDER BY ticks.ts, ticks.entry_id
     {{limit}}
""")

# Bounds on (ts, entry_id), the order of the primary key: after a cursor,
# and the two halves of a split page (see tick_page).
_AFTER = sql.SQL("AND (ts, entry_id) > (%(after_ts)s, %(after_entry)s)")
_BEFORE_SPLIT = sql.SQL("AND (ts, entry_id) < (%(split_ts)s, %(split_entry)s)")
_FROM_SPLIT = sql.SQL("AND (ts, entry_id) >= (%(split_ts)s, %(split_entry)s)")

# The key of the row `offset` rows into a page: an index-only scan.
_SPLIT_KEY = sql.SQL("""
    SELECT ts, entry_id FROM ticks
     WHERE symbol = %(symbol)s AND ts >= %(start)s AND ts < %(end)s {bounds}
     ORDER BY ticks.ts, ticks.entry_id
    OFFSET %(offset)s LIMIT 1
""")

#: A JSON page of at least this many ticks is read as two halves at once, on
#: two connections, when a second one is free: PostgreSQL builds the JSON
#: row by row on one core per query, about 2 µs a tick.
SPLIT_PAGE_ROWS = 20_000

# The JSON object of a tick, by concatenation: about twice as fast as
# json_build_object. The symbol is the one asked for (validated), so its
# part of the object is a bound constant; `source` goes through to_json;
# numbers are PostgreSQL's shortest exact text (extra_float_digits >= 1,
# the default since PostgreSQL 12), which is valid JSON for finite values.
_TICK_JSON = sql.SQL("""
    SELECT %(json_head)s || t.ts
           || '","ts_us":' || t.ts_us || ',"price":' || t.price
           || ',"size":' || coalesce(t.size::text, 'null')
           || ',"source":' || to_json(t.source)::text
           || ',"recv_ts_us":' || coalesce(t.recv_ts_us::text, 'null')
           || ',"id":"' || t.id || '"}}'
      FROM ({select}) AS t
""")

TICK_CSV_COLUMNS = ("symbol", "ts", "ts_us", "price", "size", "source", "recv_ts_us", "id")

_TICK_CSV = sql.SQL("SELECT {columns} FROM ({select}) AS t")

# One-minute bars: the stored rollups where the persist workers wrote them,
# computed from raw ticks before the first and after the last stored minute
# of the range (data persisted before rollups existed, or not yet rolled up).
# Inside that span a minute without a stored bar had no ticks: the workers
# write a tick and its bar in one transaction. The tick ranges are scalar
# subqueries so PostgreSQL prunes partitions and uses the primary key.
_MINUTES = f"""
    WITH stored AS (
        SELECT bucket, open, high, low, close, volume, tick_count,
               open_ts, open_entry, close_ts, close_entry
          FROM bars_1m
         WHERE symbol = %(symbol)s AND bucket >= %(start)s AND bucket < %(end)s
    ), covered AS (
        SELECT coalesce(min(bucket), %(end)s) AS first_bucket,
               coalesce(max(bucket) + interval '1 minute', %(end)s) AS after_bucket
          FROM stored
    ), raw AS (
        SELECT ts, entry_id, price, size FROM ticks
         WHERE symbol = %(symbol)s AND ts >= %(start)s
           AND ts < (SELECT first_bucket FROM covered)
        UNION ALL
        SELECT ts, entry_id, price, size FROM ticks
         WHERE symbol = %(symbol)s AND ts >= (SELECT after_bucket FROM covered)
           AND ts < %(end)s
    ), computed AS (
        SELECT date_trunc('minute', ts) AS bucket,
               (array_agg(price ORDER BY ts, entry_id))[1] AS open,
               max(price) AS high, min(price) AS low,
               (array_agg(price ORDER BY ts DESC, entry_id DESC))[1] AS close,
               coalesce(sum(size), 0) AS volume, count(*) AS tick_count,
               min(ts) AS open_ts, (array_agg(entry_id ORDER BY ts, entry_id))[1] AS open_entry,
               max(ts) AS close_ts,
               (array_agg(entry_id ORDER BY ts DESC, entry_id DESC))[1] AS close_entry
          FROM raw GROUP BY 1
    ), minutes AS (
        SELECT * FROM stored UNION ALL SELECT * FROM computed
    ), bars AS ({{regroup}})
    SELECT to_char(bucket AT TIME ZONE 'UTC', {_ISO}) AS bucket,
           {_epoch_us("bucket")} AS bucket_us,
           open, high, low, close, volume, tick_count
      FROM bars
     ORDER BY bars.bucket
"""

# Wider bars regroup the minutes: open of the earliest, close of the latest.
_REGROUP = """
        SELECT date_bin(%(width)s, bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
               (array_agg(open ORDER BY open_ts, open_entry))[1] AS open,
               max(high) AS high, min(low) AS low,
               (array_agg(close ORDER BY close_ts DESC, close_entry DESC))[1] AS close,
               sum(volume) AS volume, sum(tick_count)::bigint AS tick_count
          FROM minutes GROUP BY 1
"""

_AS_IS = "SELECT bucket, open, high, low, close, volume, tick_count FROM minutes"

BAR_CSV_COLUMNS = ("bucket", "bucket_us", "open", "high", "low", "close", "volume", "tick_count")

_BAR_JSON = sql.SQL("""
    SELECT '{{"bucket":"' || b.bucket || '","bucket_us":' || b.bucket_us
           || ',"open":' || b.open || ',"high":' || b.high || ',"low":' || b.low
           || ',"close":' || b.close || ',"volume":' || b.volume
           || ',"tick_count":' || b.tick_count || '}}'
      FROM ({minutes}) AS b
""")

_BAR_CSV = sql.SQL("SELECT * FROM ({minutes}) AS b")

_MINUTE_US = 60_000_000


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
        replacing a whole day of ticks (15 MB) in one go took 25 ms in the
        server, most of it faulting in fresh memory.
        """
        view = memoryview(self.lines)[:self.joined_bytes]
        for start in range(0, len(view), chunk_bytes):
            yield bytes(view[start:start + chunk_bytes]).replace(b"\n", b",")


@dataclass(frozen=True, slots=True)
class TickPage:
    """Up to ``limit`` ticks and the cursor of the next page."""

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


def _tick_params(symbol: str, span: TimeRange, cursor: Cursor | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "symbol": symbol,
        "start": us_to_datetime(span.start_us),
        "end": us_to_datetime(span.end_us),
        **_ID_PARAMS,
    }
    # '{"symbol":"AAPL","ts":"' for _TICK_JSON.
    params["json_head"] = '{"symbol":' + codec.encode_json(symbol).decode() + ',"ts":"'
    if cursor is not None:
        params["after_ts"] = us_to_datetime(cursor.ts_us)
        params["after_entry"] = cursor.entry_id
    return params


def _tick_select(limit: int | None, *bounds: sql.Composable) -> sql.Composed:
    return _TICK_SELECT.format(
        bounds=sql.SQL(" ").join(bounds),
        limit=sql.SQL("LIMIT {}").format(sql.Literal(int(limit))) if limit is not None
        else sql.SQL(""),
    )


def _after(cursor: Cursor | None) -> tuple[sql.Composable, ...]:
    return (_AFTER,) if cursor is not None else ()


def tick_page(conn: psycopg2.extensions.connection, symbol: str, span: TimeRange,
              cursor: Cursor | None, limit: int, *,
              spare: psycopg2.extensions.connection | None = None) -> TickPage:
    """Ticks of ``symbol`` in ``span`` after ``cursor``, oldest first, by
    ``(ts, entry id)``; ``next_cursor`` is None on the last page.

    With a ``spare`` connection, a page of :data:`SPLIT_PAGE_ROWS` or more
    is read as two halves at once (split at the key of its middle row), one
    on each connection: the same rows, in about half the time when the
    database has a core to spare. The halves are two statements, each
    seeing the ticks committed when it starts; a tick committed in between
    may be missed, as it would be by one statement started a moment
    earlier. Either way each tick returned is stored, in order, once.
    """
    params = _tick_params(symbol, span, cursor)
    if spare is None or limit < SPLIT_PAGE_ROWS:
        rows = _tick_rows(conn, params, _tick_select(limit + 1, *_after(cursor)))
    else:
        rows = _split_tick_rows(conn, spare, params, _after(cursor), limit + 1)
    page, last = first_rows(rows, limit)
    if last is None:
        return TickPage(page, None)
    tick = codec.decode_json(last)
    return TickPage(page, Cursor(int(tick["ts_us"]), codec.pack_entry_id(tick["id"])))


def first_rows(rows: JsonRows, limit: int) -> tuple[JsonRows, bytes | None]:
    """The first ``limit`` of ``rows`` (cut in place) and, when there were
    more (one more, or a few if ticks arrived between the halves of a split
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


def _tick_rows(conn: psycopg2.extensions.connection, params: dict[str, Any],
               select: sql.Composed) -> JsonRows:
    with conn.cursor() as cur:
        return _copy_rows(cur, _TICK_JSON.format(select=select), params)


def _split_tick_rows(conn: psycopg2.extensions.connection,
                     spare: psycopg2.extensions.connection, params: dict[str, Any],
                     after: tuple[sql.Composable, ...], wanted: int) -> JsonRows:
    """The first ``wanted`` ticks: those before the middle one on ``conn``,
    the rest on ``spare`` in a thread of its own, at the same time."""
    half = wanted // 2
    with conn.cursor() as cur:
        cur.execute(_SPLIT_KEY.format(bounds=sql.SQL(" ").join(after)),
                    {**params, "offset": half})
        middle = cur.fetchone()
    if middle is None:  # at most `half` ticks in all: no need to split
        return _tick_rows(conn, params, _tick_select(wanted, *after))
    params = {**params, "split_ts": middle[0], "split_entry": middle[1]}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tick-page") as executor:
        second = executor.submit(_tick_rows, spare, params,
                                 _tick_select(wanted - half, _FROM_SPLIT))
        try:
            first = _tick_rows(conn, params, _tick_select(None, *after, _BEFORE_SPLIT))
        except BaseException:
            spare.cancel()  # the page has failed: do not wait for its second half
            raise
        rest = second.result()
    first.lines.extend(rest.lines)
    return JsonRows(first.lines, first.count + rest.count)


def tick_csv_sql(conn: psycopg2.extensions.connection, symbol: str, span: TimeRange,
                 cursor: Cursor | None, limit: int | None) -> bytes:
    """The bound ``SELECT`` of a CSV tick download, for :class:`CopyStream`."""
    query = _TICK_CSV.format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in TICK_CSV_COLUMNS),
        select=_tick_select(limit, *_after(cursor)),
    )
    with conn.cursor() as cur:
        return cur.mogrify(query, _tick_params(symbol, span, cursor))


def _bar_params(symbol: str, span: TimeRange, width_us: int) -> dict[str, Any]:
    # Whole minutes: a stored bar and the ticks it summarises always agree.
    end_us = -(-span.end_us // _MINUTE_US) * _MINUTE_US
    return {
        "symbol": symbol,
        "start": us_to_datetime(span.start_us),
        "end": us_to_datetime(end_us),
        "width": timedelta(microseconds=width_us),
    }


def _bar_select(width_us: int) -> sql.Composed:
    # {regroup} in _MINUTES: one-minute bars are the minutes themselves.
    regroup = _AS_IS if width_us == _MINUTE_US else _REGROUP
    return sql.SQL(_MINUTES).format(regroup=sql.SQL(regroup))


def bars(conn: psycopg2.extensions.connection, symbol: str, span: TimeRange,
         width_us: int) -> JsonRows:
    """The OHLCV bars of ``symbol`` of width ``width_us``, oldest first.
    ``span.start_us`` should be aligned to the width."""
    with conn.cursor() as cur:
        return _copy_rows(cur, _BAR_JSON.format(minutes=_bar_select(width_us)),
                          _bar_params(symbol, span, width_us))


def bar_csv_sql(conn: psycopg2.extensions.connection, symbol: str, span: TimeRange,
                width_us: int) -> bytes:
    """The bound ``SELECT`` of a CSV bar download, for :class:`CopyStream`."""
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
    """Newest stored ``(ts_us, price)`` of each symbol that has ticks."""
    if not symbols:
        return {}
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT s.symbol, (extract(epoch FROM t.ts) * 1000000)::bigint, t.price
              FROM unnest(%(symbols)s::text[]) AS s(symbol)
             CROSS JOIN LATERAL (
                   SELECT ts, price FROM ticks WHERE ticks.symbol = s.symbol
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


class _QueueWriter:
    """File-like sink for ``copy_expert`` that hands chunks to a bounded
    queue: the COPY waits while the client is slower than PostgreSQL, so at
    most ``depth`` chunks are ever in memory."""

    def __init__(self, out: Queue[bytes | BaseException | None], chunk_bytes: int,
                 stop: threading.Event) -> None:
        self._out = out
        self._chunk_bytes = chunk_bytes
        self._stop = stop
        self._buffer: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._buffer.append(bytes(data))
        self._size += len(data)
        if self._size >= self._chunk_bytes:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            chunk = b"".join(self._buffer)
            self._buffer, self._size = [], 0
            self.put(chunk)

    def put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._stop.is_set():
                # Raising inside write() makes psycopg2 abandon the COPY.
                raise _Abandoned("client went away")
            try:
                self._out.put(item, timeout=0.2)
                return
            except Full:
                continue


class _Abandoned(Exception):
    """The reader of a CSV stream stopped reading."""


class CopyStream:
    """CSV of a query, as chunks of about ``chunk_bytes``, via ``COPY ... TO STDOUT``.

    ``borrow()`` is a context manager lending a connection (the pool's) and
    ``select(conn)`` returns the bound query. Iterating starts the COPY in a
    thread of its own that waits while the consumer is slow (at most
    ``depth`` chunks are buffered), so memory stays bounded whatever the size
    of the result. :meth:`abort` (the client went away) stops the COPY and
    discards its connection; it is safe from any thread, at any time.

    Errors of the query are raised from the iterator; the first chunk (the
    header) is only yielded once rows arrived, so a query that fails at once
    raises before anything was sent.
    """

    def __init__(self, borrow: Callable[[], Any],
                 select: Callable[[psycopg2.extensions.connection], bytes], *,
                 header: tuple[str, ...], chunk_bytes: int, depth: int = 4) -> None:
        self._borrow = borrow
        self._select = select
        self._header = (",".join(header) + "\n").encode()
        self._chunks: Queue[bytes | BaseException | None] = Queue(maxsize=depth)
        self._stop = threading.Event()
        self._writer = _QueueWriter(self._chunks, chunk_bytes, self._stop)
        self._thread = threading.Thread(target=self._produce, name="csv-copy", daemon=True)

    def abort(self) -> None:
        self._stop.set()

    def _produce(self) -> None:
        writer = self._writer
        try:
            with self._borrow() as conn:
                query = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(
                    sql.SQL(self._select(conn).decode()))
                with conn.cursor() as cur:
                    cur.copy_expert(query, writer)
                writer.flush()
            writer.put(None)
        except _Abandoned:
            pass  # the connection left the pool closed: the block raised
        except BaseException as exc:  # handed to the consumer, raised there
            try:
                writer.put(exc)
            except _Abandoned:
                pass

    def __iter__(self) -> Iterator[bytes]:
        self._thread.start()
        try:
            first = True
            while not self._stop.is_set():
                try:
                    item = self._chunks.get(timeout=0.2)
                except Empty:
                    if not self._thread.is_alive() and self._chunks.empty():
                        raise RuntimeError("csv producer ended without finishing") from None
                    continue
                if isinstance(item, BaseException):
                    raise item
                if first:
                    first = False
                    yield self._header
                if item is None:
                    return
                yield item
        finally:
            self._stop.set()
