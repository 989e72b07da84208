"""History as pandas DataFrames, for research: trades, quotes and bars of
one or several symbols, read straight from PostgreSQL or over the HTTP API,
the same frame either way.

    from pricepipe.subscriber.client import trades_frame
    df = trades_frame("http://127.0.0.1:8000", ["AAPL", "MSFT"], "2026-01-05", "2026-01-06")
    df.loc[df.symbol == "AAPL", "price"].resample("1min").ohlc()

``source`` is a psycopg2 connection (the caller's; a read-only role is
enough), an :class:`HttpHistory` or the API's base URL. ``start``
(inclusive) and ``end`` (exclusive, default now) are aware datetimes, dates
(midnight UTC), ISO-8601 text (no offset means UTC) or epoch digits as the
API reads them, or integers of epoch microseconds.

The frame (:func:`trades_frame`, :func:`quotes_frame`, :func:`bars_frame`):

* indexed by event time, a UTC ``DatetimeIndex`` of microseconds named
  ``ts`` (bars: ``bucket``, the start of the bar), sorted by time, then, at
  one instant, by symbol in the order given and each symbol's rows in
  stream order (its entry IDs; the API's time order);
* a ``symbol`` column, categorical with the symbols asked for as its
  categories (in that order), also those without rows;
* trades: ``price``, ``size`` (float64, NaN where the source gives no
  size), ``side`` (categorical ``buy``/``sell``, NaN when unknown),
  ``trade_id`` (text), ``source`` (categorical), ``recv_ts`` (UTC, NaT when
  absent) and ``id``, the stream entry ID ``"<ms>-<seq>"`` (missing for a
  backfilled trade); quotes: ``bid``, ``bid_size``, ``ask``, ``ask_size``
  (float64, NaN for a missing side), ``source``, ``recv_ts``, ``id``; bars
  (as ``/v1/bars``): ``open``, ``high``, ``low``, ``close``, ``volume``,
  ``vwap`` (float64; NaN when no trade had a size), ``trades`` (int64);
* every column present with its dtype even when no row is: an empty range
  is an empty frame of the same shape.

Values are exact: times in whole microseconds, floats as stored. Both
sources build the same Arrow table (one fixed schema per kind) and turn it
into the frame by one function, so their frames are equal.

Reading: from PostgreSQL one ``COPY`` per symbol (its rows stream as they are
produced, as from a server-side cursor; parsed by pyarrow's CSV reader a
block at a time, not row by row in Python), in the connection's current
transaction; over HTTP one Parquet download per symbol
(``/v1/{trades,quotes,bars}/{symbol}?format=parquet``), subject to the API's
caps (a range longer than ``PRICEPIPE_API_MAX_RANGE_DAYS``, or more bars
than ``PRICEPIPE_API_MAX_BARS``, is refused: :exc:`requests.HTTPError`
carrying the API's message).

Needs pandas and pyarrow (``pip install 'pricepipe[research]'``), imported
when a frame is first asked for: importing this module needs neither, and
calling it without them raises :exc:`ImportError` naming the extra.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from psycopg2 import sql

from pricepipe import codec
from pricepipe.clock import datetime_to_us, format_us, now_us, parse_time_us, us_to_datetime
from pricepipe.events import US_PER_MINUTE
from pricepipe.historysql import INTERVALS_US, bars_query, epoch_us

from .core import symbol_list

if TYPE_CHECKING:
    import pandas as pd
    import requests

#: A time as ``start`` and ``end`` take it.
TimeLike = datetime | date | str | int


#: CSV bytes from PostgreSQL parsed per block (a block is then an Arrow table).
BLOCK_BYTES = 8 << 20

_RESEARCH_HINT = ("DataFrames need pandas and pyarrow: pip install 'pricepipe[research]'")


def _research() -> SimpleNamespace:
    """pandas and the pyarrow modules, imported on first use."""
    try:
        import pandas
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError(f"{_RESEARCH_HINT} ({exc})") from exc
    return SimpleNamespace(pd=pandas, pa=pyarrow, pc=pyarrow.compute, csv=pyarrow.csv,
                           pq=pyarrow.parquet)


# --- what a frame holds --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Column:
    """A column of a frame: its ``name`` (also in the API's Parquet), the
    SQL's CSV column it is read from, and its kind: ``time`` (epoch µs in
    the CSV, ``timestamp[us, UTC]``), ``float``, ``int`` or ``text``."""

    name: str
    source: str
    kind: str


@dataclass(frozen=True, slots=True)
class _Kind:
    """One kind of frame: its index column, the others, which are categorical."""

    path: str
    columns: tuple[_Column, ...]
    categories: dict[str, tuple[str, ...] | None]

    @property
    def index(self) -> str:
        return self.columns[0].name

    @property
    def sources(self) -> list[str]:
        return [c.source for c in self.columns]


def _time(name: str, source: str) -> _Column:
    return _Column(name, source, "time")


def _floats(*names: str) -> tuple[_Column, ...]:
    return tuple(_Column(n, n, "float") for n in names)


_TRADES = _Kind("trades", (
    _time("ts", "ts_us"), *_floats("price", "size"), _Column("side", "side", "text"),
    _Column("trade_id", "trade_id", "text"), _Column("source", "source", "text"),
    _time("recv_ts", "recv_ts_us"), _Column("id", "id", "text"),
), {"side": ("buy", "sell"), "source": None})

_QUOTES = _Kind("quotes", (
    _time("ts", "ts_us"), *_floats("bid", "bid_size", "ask", "ask_size"),
    _Column("source", "source", "text"), _time("recv_ts", "recv_ts_us"),
    _Column("id", "id", "text"),
), {"source": None})

_BARS = _Kind("bars", (
    _time("bucket", "bucket_us"), *_floats("open", "high", "low", "close", "volume", "vwap"),
    _Column("trades", "trades", "int"),
), {})


def _arrow_type(mod: SimpleNamespace, kind: str) -> Any:
    pa = mod.pa
    return {"time": pa.timestamp("us", tz="UTC"), "float": pa.float64(), "int": pa.int64(),
            "text": pa.string()}[kind]


def _schema(mod: SimpleNamespace, kind: _Kind) -> Any:
    pa = mod.pa
    return pa.schema([("symbol", pa.string()),
                      *((c.name, _arrow_type(mod, c.kind)) for c in kind.columns)])


# --- parameters ----------------------------------------------------------------------------


def time_us(value: TimeLike, name: str = "time") -> int:
    """Epoch microseconds of ``value``: an aware datetime (a naive one is
    refused, as everywhere in pricepipe), a date (its midnight UTC), text
    (:func:`pricepipe.clock.parse_time_us`) or an int of microseconds."""
    if isinstance(value, datetime):
        return datetime_to_us(value)
    if isinstance(value, date):
        return datetime_to_us(datetime(value.year, value.month, value.day, tzinfo=UTC))
    if isinstance(value, str):
        try:
            return parse_time_us(value)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"{name}: cannot read {value[:40]!r} as a time") from exc
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"{name}: want a datetime, date, ISO-8601 text or epoch µs, "
                    f"not {type(value).__name__}")


def _span(start: TimeLike, end: TimeLike | None) -> tuple[int, int]:
    start_us = time_us(start, "start")
    end_us = now_us() if end is None else time_us(end, "end")
    if start_us >= end_us:
        raise ValueError("start must be before end")
    return start_us, end_us


def _symbols(symbols: str | Iterable[str]) -> list[str]:
    """``"AAPL"``, ``"AAPL,MSFT"`` or a list: validated, duplicates dropped."""
    if isinstance(symbols, str):
        symbols = [s.strip() for s in symbols.split(",") if s.strip()]
    return symbol_list(symbols)


def _interval_us(interval: str) -> int:
    try:
        return INTERVALS_US[interval]
    except KeyError:
        raise ValueError(f"interval: {interval!r} is not one of "
                         f"{', '.join(INTERVALS_US)}") from None


# --- over HTTP -----------------------------------------------------------------------------


class HttpHistory:
    """The HTTP API's history (``base_url``, e.g. ``http://127.0.0.1:8000``),
    as Parquet downloads; ``api_key`` is sent as ``X-API-Key``. A
    ``requests.Session`` of its own unless one is given; safe to share
    between calls, not between threads (as the session)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 session: requests.Session | None = None) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self._headers = {"X-API-Key": api_key} if api_key else {}

    def __repr__(self) -> str:  # never the key
        return f"HttpHistory({self.base_url!r})"

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()

    def __enter__(self) -> HttpHistory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def table(self, path: str, symbol: str, query: dict[str, str]) -> Any:
        """The Arrow table of ``/v1/{path}/{symbol}?format=parquet&...``.

        The download streams to memory (Parquet needs its footer, at the
        end, before any row can be read); a status other than 200 raises
        :exc:`requests.HTTPError` with the API's error message."""
        import requests

        mod = _research()
        url = f"{self.base_url}/v1/{path}/{quote(symbol, safe='')}"
        with self.session.get(url, params={**query, "format": "parquet"},
                              headers=self._headers, stream=True,
                              timeout=self.timeout_s) as response:
            if response.status_code != 200:
                raise requests.HTTPError(
                    f"{response.status_code} from {url}: {_error_text(response)}",
                    response=response)
            body = io.BytesIO()
            for chunk in response.iter_content(chunk_size=1 << 20):
                body.write(chunk)
        body.seek(0)
        return mod.pq.read_table(body)


def _error_text(response: Any) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _http_table(mod: SimpleNamespace, history: HttpHistory, kind: _Kind, symbol: str,
                query: dict[str, str]) -> Any:
    """The download as :func:`_schema` (the columns by name, so a server
    adding one changes nothing here)."""
    table = history.table(kind.path, symbol, query)
    schema = _schema(mod, kind)
    return mod.pa.Table.from_arrays(
        [table.column(field.name).cast(field.type) for field in schema], schema=schema)


# --- from PostgreSQL -----------------------------------------------------------------------



_ID = "CASE WHEN entry_id >= 0 THEN (entry_id >> %(seq_bits)s)::text || '-' || " \
      "(entry_id & %(seq_mask)s)::text END"

# The API's time order: (ts, entry_id), from the (symbol, ts, ...) index.
_EVENTS_SQL = {
    "trades": f"""
        SELECT {epoch_us("ts")} AS ts_us, price, size, side, trade_id, source,
               {epoch_us("recv_ts")} AS recv_ts_us, {_ID} AS id
          FROM trades
         WHERE symbol = %(symbol)s AND ts >= %(start)s AND ts < %(end)s
         ORDER BY ts, entry_id""",
    "quotes": f"""
        SELECT {epoch_us("ts")} AS ts_us, bid, bid_size, ask, ask_size, source,
               {epoch_us("recv_ts")} AS recv_ts_us, {_ID} AS id
          FROM quotes
         WHERE symbol = %(symbol)s AND ts >= %(start)s AND ts < %(end)s
         ORDER BY ts, entry_id""",
}

# The bars of /v1/bars: the rule of pricepipe.historysql, which the API
# wraps too.
_BARS_SQL = f"""
    SELECT {epoch_us("bucket")} AS bucket_us, open, high, low, close, volume,
           CASE WHEN volume > 0 THEN notional / volume END AS vwap, trade_count AS trades
      FROM ({{bars}}) AS bars
     ORDER BY bars.bucket
"""

_COPY = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)")


def _row_end(buffer: bytearray) -> int:
    """Length of the complete CSV rows at the start of ``buffer``: up to the
    last newline outside quotes (inside a quoted field the count of quote
    characters before it is odd: PostgreSQL doubles a quote inside one)."""
    end = buffer.rfind(b"\n")
    while end >= 0 and buffer.count(b'"', 0, end) % 2:
        end = buffer.rfind(b"\n", 0, end)
    return end + 1


class _CsvTables:
    """``copy_expert`` sink parsing the rows into Arrow tables a block at a
    time, so the CSV text never piles up beside the tables."""

    def __init__(self, mod: SimpleNamespace, kind: _Kind, block_bytes: int) -> None:
        csv = mod.csv
        self._mod = mod
        self._block_bytes = block_bytes
        self._buffer = bytearray()
        self._read = csv.ReadOptions(column_names=kind.sources)
        self._parse = csv.ParseOptions(newlines_in_values=True)
        # Only an empty field is null (pyarrow's default would also take the
        # texts NULL, NaN, n/a...): COPY writes NULL unquoted, '' as "".
        self._convert = csv.ConvertOptions(
            column_types={c.source: mod.pa.int64() if c.kind == "time"
                          else _arrow_type(mod, c.kind) for c in kind.columns},
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False)
        self.tables: list[Any] = []

    def write(self, data: Any) -> int:
        self._buffer += data
        if len(self._buffer) >= self._block_bytes:
            self._flush(_row_end(self._buffer))
        return len(data)

    def finish(self) -> None:
        self._flush(len(self._buffer))

    def _flush(self, end: int) -> None:
        if end <= 0:
            return
        block = bytes(self._buffer[:end])
        del self._buffer[:end]
        self.tables.append(self._mod.csv.read_csv(
            io.BytesIO(block), read_options=self._read, parse_options=self._parse,
            convert_options=self._convert))


def _pg_table(mod: SimpleNamespace, conn: Any, kind: _Kind, symbol: str, query: str,
              params: dict[str, Any]) -> Any:
    pa = mod.pa
    sink = _CsvTables(mod, kind, BLOCK_BYTES)
    with conn.cursor() as cur:
        bound = cur.mogrify(query, {**params, "symbol": symbol,
                                    "seq_bits": codec.SEQ_BITS,
                                    "seq_mask": (1 << codec.SEQ_BITS) - 1})
        cur.copy_expert(_COPY.format(sql.SQL(bound.decode())), sink)
    sink.finish()
    schema = _schema(mod, kind)
    if not sink.tables:
        return schema.empty_table()
    rows = pa.concat_tables(sink.tables)
    arrays = [pa.repeat(pa.scalar(symbol, pa.string()), rows.num_rows)]
    for column, field in zip(kind.columns, list(schema)[1:], strict=True):
        arrays.append(rows.column(column.source).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# --- the frame -----------------------------------------------------------------------------


def _frame(mod: SimpleNamespace, kind: _Kind, symbols: Sequence[str],
           tables: Sequence[Any]) -> pd.DataFrame:
    """The frame of the per-symbol tables (each in its symbol's order, the
    tables in ``symbols``' order): the one conversion both sources share."""
    pd, pa, pc = mod.pd, mod.pa, mod.pc
    table = pa.concat_tables(tables) if tables else _schema(mod, kind).empty_table()
    # sort_indices is stable: ties keep symbol order, then each symbol's order.
    table = table.take(pc.sort_indices(table, sort_keys=[(kind.index, "ascending")]))
    frame = table.to_pandas()
    frame["symbol"] = pd.Categorical(frame["symbol"], categories=list(symbols))
    for name, fixed in kind.categories.items():
        values = frame[name]
        categories = list(fixed) if fixed is not None else sorted(values.dropna().unique())
        frame[name] = pd.Categorical(values, categories=categories)
    frame = frame.set_index(kind.index)
    return frame


def _load(source: Any, kind: _Kind, symbols: str | Iterable[str], start_us: int, end_us: int,
          *, width_us: int | None = None, interval: str | None = None) -> pd.DataFrame:
    mod = _research()
    wanted = _symbols(symbols)
    if isinstance(source, str):
        with HttpHistory(source) as history:
            return _load(history, kind, wanted, start_us, end_us, width_us=width_us,
                         interval=interval)
    tables = []
    if isinstance(source, HttpHistory):
        query = {"start": format_us(start_us), "end": format_us(end_us)}
        if interval is not None:
            query["interval"] = interval
        for symbol in wanted:
            tables.append(_http_table(mod, source, kind, symbol, query))
    elif hasattr(source, "cursor"):
        params: dict[str, Any] = {"start": us_to_datetime(start_us),
                                  "end": us_to_datetime(end_us)}
        if kind is _BARS:
            assert width_us is not None
            query_text = _BARS_SQL.format(bars=bars_query(width_us))
        else:
            query_text = _EVENTS_SQL[kind.path]
        if width_us is not None:
            # As /v1/bars: whole minutes, so a stored bar and its trades agree.
            params["end"] = us_to_datetime(-(-end_us // US_PER_MINUTE) * US_PER_MINUTE)
            params["width"] = timedelta(microseconds=width_us)
        for symbol in wanted:
            tables.append(_pg_table(mod, source, kind, symbol, query_text, params))
    else:
        raise TypeError("source: want a psycopg2 connection, an HttpHistory or the API's "
                        f"base URL, not {type(source).__name__}")
    return _frame(mod, kind, wanted, tables)


def trades_frame(source: Any, symbols: str | Iterable[str], start: TimeLike,
                 end: TimeLike | None = None) -> pd.DataFrame:
    """The trades of ``symbols`` with ``start <= ts < end`` (see the module
    docstring for the frame)."""
    return _load(source, _TRADES, symbols, *_span(start, end))


def quotes_frame(source: Any, symbols: str | Iterable[str], start: TimeLike,
                 end: TimeLike | None = None) -> pd.DataFrame:
    """The quotes (top of book) of ``symbols`` with ``start <= ts < end``."""
    return _load(source, _QUOTES, symbols, *_span(start, end))


def bars_frame(source: Any, symbols: str | Iterable[str], start: TimeLike,
               end: TimeLike | None = None, *, interval: str = "1m") -> pd.DataFrame:
    """The OHLCV bars of ``symbols`` of width ``interval`` (``1m``, ``5m``,
    ``15m``, ``1h``, ``1d``; aligned to UTC midnight), as ``/v1/bars``
    serves them: ``start`` rounded down to the interval, bars without a
    trade left out."""
    width_us = _interval_us(interval)
    start_us, end_us = _span(start, end)
    start_us -= start_us % width_us
    return _load(source, _BARS, symbols, start_us, end_us, width_us=width_us,
                 interval=interval)


__all__ = ["INTERVALS_US", "HttpHistory", "bars_frame", "quotes_frame", "time_us",
           "trades_frame"]
