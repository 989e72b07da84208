"""The HTTP endpoints: ``/v1/...`` (trade and quote history, bars, the
latest quotes, symbols, simulation) and the operator's ``/healthz`` and
``/metrics``.

Handlers are plain ``def``: FastAPI runs them in its thread pool, where the
blocking psycopg2 and redis-py calls belong. Parameters are parsed by
:mod:`pricepipe.api.params` (or FastAPI's own checks, whose bounds come from
:class:`~pricepipe.api.settings.ApiSettings` so ``/docs`` shows the real caps) and
reach SQL only through :mod:`pricepipe.api.queries`.
"""

# No ``from __future__ import annotations``: FastAPI reads the parameter
# annotations at run time, and they refer to the local ``settings``.
import contextlib
import functools
import importlib
import itertools
import logging
import secrets
from collections.abc import Sequence
from types import ModuleType
from typing import Annotated, Any, Literal

import psycopg2
import redis
from fastapi import APIRouter, Depends, Header, Path, Query
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from pricepipe import codec, streams
from pricepipe.clock import format_us, now_us
from pricepipe.events import Trade
from pricepipe.exceptions import InvalidParameterError, PricepipeError
from pricepipe.keys import Channel

from . import coverage, latest, params, queries
from .copystream import CopyStream
from .errors import ERROR_RESPONSES, ErrorBody
from .metrics import Metrics
from .responses import BinaryResponse, CsvResponse, JsonArrayResponse, JsonResponse
from .services import Services, get_services
from .settings import ApiSettings

log = logging.getLogger(__name__)

SYMBOL_PATH = Path(description="Instrument symbol, e.g. AAPL (case-insensitive)",
                   max_length=64)
TIME_HELP = ("ISO-8601 (2026-01-02T03:04:05Z; no offset means UTC) "
             "or epoch seconds, milliseconds or microseconds")
FormatParam = Annotated[
    Literal["json", "csv", "parquet", "arrow"] | None,
    Query(alias="format", description=(
        "json (default), csv, parquet or arrow (an Arrow IPC stream); the `Accept` header "
        "also works (`text/csv`, `application/vnd.apache.parquet`, "
        "`application/vnd.apache.arrow.stream`)")),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]
ServicesDep = Annotated[Services, Depends(get_services)]


# --- documented response shapes (the handlers build the JSON themselves) ---------------------


class TradeOut(BaseModel):
    """A trade as the websocket sends it (`pricepipe.codec.event_to_dict`);
    `id` is null for a backfilled trade, which never was in a stream."""

    symbol: str
    ts: str
    ts_us: int
    price: float
    size: float | None
    side: Literal["buy", "sell"] | None
    trade_id: str | None
    source: str
    recv_ts_us: int | None
    id: str | None


class QuoteOut(BaseModel):
    """A top of book as the websocket sends it (`pricepipe.codec.event_to_dict`);
    one side may be null."""

    symbol: str
    ts: str
    ts_us: int
    bid: float | None
    bid_size: float | None
    ask: float | None
    ask_size: float | None
    source: str
    recv_ts_us: int | None
    id: str | None


class TradePageOut(BaseModel):
    """A page of a time range (`start`, `end` set, the IDs null) or of an
    entry-ID range (`after_id`, `until_id` set, the times null). `complete`
    (ID ranges only, else null): true when every entry of the range had been
    persisted before the page was read, false when some may still be on
    their way (ask again), null when Redis could not tell."""

    symbol: str
    start: str | None
    end: str | None
    after_id: str | None
    until_id: str | None
    complete: bool | None
    count: int
    next_cursor: str | None
    trades: list[TradeOut]


class QuotePageOut(BaseModel):
    """A page of quotes, as `TradePageOut`."""

    symbol: str
    start: str | None
    end: str | None
    after_id: str | None
    until_id: str | None
    complete: bool | None
    count: int
    next_cursor: str | None
    quotes: list[QuoteOut]


class BarOut(BaseModel):
    bucket: str
    bucket_us: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float | None
    trades: int


class BarsOut(BaseModel):
    symbol: str
    interval: str
    start: str
    end: str
    count: int
    bars: list[BarOut]


class BoardRowOut(BaseModel):
    """The top of book and the last price of a symbol, then the newest quote
    and trade they come from (with their times and entry IDs)."""

    symbol: str
    bid: float | None
    bid_size: float | None
    ask: float | None
    ask_size: float | None
    price: float | None
    quote: QuoteOut | None
    trade: TradeOut | None


class BoardOut(BaseModel):
    quotes: dict[str, BoardRowOut | None]
    errors: dict[str, str]


class SymbolOut(BaseModel):
    symbol: str
    registered: bool
    name: str | None
    logo_url: str | None
    currency: str | None
    exchange: str | None
    week52_high: float | None
    week52_low: float | None
    last_price: float | None
    last_ts: str | None
    last_ts_us: int | None


class SymbolsOut(BaseModel):
    symbols: list[SymbolOut]


class GbmOut(BaseModel):
    periods: int
    start_price: float
    mu: float
    sigma: float
    delta: float
    seed: int
    prices: list[float]


class HealthOut(BaseModel):
    status: str
    redis: str
    database: str


def _json_page(head: dict[str, Any], list_name: str, rows: queries.JsonRows) -> Response:
    """``{...head, "count": n, list_name: [rows]}``; the rows come encoded from PostgreSQL."""
    prefix = codec.encode_json({**head, "count": rows.count})[:-1]
    return JsonArrayResponse(b"".join([prefix, b',"', list_name.encode(), b'":[']), rows, b"]}")


#: Header of a CSV download of an entry-ID range: the page's `complete`.
COMPLETE_HEADER = "Pricepipe-Range-Complete"


def _csv(stream: CopyStream, filename: str, headers: dict[str, str] | None = None
         ) -> Response:
    # Pull the first chunk here: a failing query still becomes a proper error
    # status instead of a response cut off after its headers.
    chunks = iter(stream)
    try:
        first = next(chunks)
    except BaseException:
        stream.abort()
        raise
    return CsvResponse(
        itertools.chain([first], chunks), on_close=stream.abort,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', **(headers or {})},
    )


#: File name extension of each binary format (`.arrows`: IANA's for the IPC stream).
_EXTENSIONS = {"parquet": "parquet", "arrow": "arrows"}


@functools.cache
def _arrow_module() -> ModuleType | None:
    """:mod:`pricepipe.api.arrow`, or None when pyarrow (the ``research``
    extra) is not installed: imported on first use, so the API runs without
    it (and a failed import is not retried on every request)."""
    try:
        return importlib.import_module("pricepipe.api.arrow")
    except ImportError:
        return None


def _offered() -> tuple[str, ...]:
    """The formats ``Accept`` may pick: the binary ones only with pyarrow."""
    if _arrow_module() is None:
        return ("json", "csv")
    return tuple(params.MEDIA_TYPES)


def _require_arrow(fmt: str) -> ModuleType:
    module = _arrow_module()
    if module is None:
        raise HTTPException(406, (
            f"format={fmt} needs pyarrow on the server, which is not installed "
            "(pip install 'pricepipe[research]'); json and csv work"))
    return module


def _binary(arrow: ModuleType, fmt: str, layout: Any, symbol: str, stream: CopyStream,
            filename: str, headers: dict[str, str] | None = None) -> Response:
    """A Parquet or Arrow download (``fmt``) of ``stream``'s rows, read
    as ``layout`` of :mod:`pricepipe.api.arrow` (the module, ``arrow``)."""
    # As _csv: the first chunk (the header, sent once rows or the end came)
    # here, so a failing query is an error status, not a cut-off body.
    chunks = iter(stream)
    try:
        first = next(chunks)
    except BaseException:
        stream.abort()
        raise
    body = arrow.encode(itertools.chain([first], chunks), layout, symbol, fmt)
    return BinaryResponse(
        body, on_close=stream.abort, media_type=params.MEDIA_TYPES[fmt],
        headers={"Content-Disposition":
                 f'attachment; filename="{filename}.{_EXTENSIONS[fmt]}"', **(headers or {})})


def build_router(settings: ApiSettings, dependencies: Sequence[Any] = ()) -> APIRouter:
    """The ``/v1`` routes, their bounds taken from ``settings``.

    The prefix belongs to the router itself, so each route's ``path`` is the
    full template the metrics label requests with.
    """
    router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES,
                       dependencies=list(dependencies))
    max_span_us = settings.max_range_days * params.US_PER_DAY

    @router.get("/symbols", response_model=SymbolsOut, summary="Symbols with metadata")
    def get_symbols(svc: ServicesDep) -> Response:
        """Every symbol registered in Redis or described in `instruments`,
        with its metadata (name, logo, 52-week band) and last price: from its
        trades stream when it has entries, else the newest stored trade."""
        registered = set(streams.known_symbols(svc.redis, svc.keys))
        with svc.pool.connection() as conn:
            meta = queries.instruments(conn)
        symbols = sorted(registered | set(meta))
        last: dict[str, tuple[int, float]] = {}
        for (symbol, _), found in latest.newest(svc.redis, svc.keys, symbols,
                                                (Channel.TRADES,)).items():
            if found.error:  # a bad entry: fall back to the database
                log.warning("%s: %s", symbol, found.error)
            elif isinstance(found.event, Trade):
                last[symbol] = (found.event.ts_us, found.event.price)
        missing = [s for s in symbols if s not in last]
        if missing:
            with svc.pool.connection() as conn:
                last.update(queries.last_prices(conn, missing))
        out = []
        empty: dict[str, Any] = dict.fromkeys(
            ("name", "logo_url", "currency", "exchange", "week52_high", "week52_low"))
        for symbol in symbols:
            ts_us, price = last.get(symbol, (None, None))
            out.append({
                "symbol": symbol, "registered": symbol in registered,
                **meta.get(symbol, empty),
                "last_price": price, "last_ts": format_us(ts_us) if ts_us else None,
                "last_ts_us": ts_us,
            })
        return JsonResponse({"symbols": out})

    def history(svc: Services, table: queries.EventTable, symbol: str, start: str | None,
                end: str | None, after_id: str | None, until_id: str | None,
                limit: int | None, cursor: str | None, fmt: str | None,
                accept: str | None) -> Response:
        """A page (JSON) or the whole range (CSV, Parquet, Arrow) of one
        history table: of a time range in event-time order, or of an
        entry-ID range in stream order."""
        sym = params.parse_symbol(symbol)
        span: queries.Span | None = params.parse_id_range(after_id, until_id,
                                                          max_span_us=max_span_us)
        if span is not None and (start is not None or end is not None):
            raise InvalidParameterError(
                f"{'start' if start is not None else 'end'}: give either start/end (a time "
                "range, in event-time order) or after_id/until_id (an entry-ID range, in "
                "stream order), not both", param="start" if start is not None else "end")
        if span is None:
            span = params.parse_range(start, end, now_us=now_us(),
                                      default_span_us=params.US_PER_DAY,
                                      max_span_us=max_span_us)
        after = params.parse_cursor(cursor, stream_order=isinstance(span, params.IdRange))
        fmt_name = params.response_format(fmt, accept, offered=_offered())
        # Before the rows are read (see pricepipe.api.coverage).
        complete = (coverage.range_complete(svc.redis, svc.keys, sym, table.channel,
                                            codec.unpack_entry_id(span.until))
                    if isinstance(span, params.IdRange) else None)
        headers = None
        if isinstance(span, params.IdRange):
            headers = {COMPLETE_HEADER: "unknown" if complete is None
                       else "true" if complete else "false"}
        if fmt_name == "csv":
            stream = CopyStream(
                svc.pool.connection,
                lambda conn: queries.event_csv_sql(conn, table, sym, span, after, limit),
                header=table.csv_columns, chunk_bytes=settings.csv_chunk_bytes,
                spare=svc.pool.spare_connection,
                halves=lambda conn: queries.event_csv_halves(conn, table, sym, span, after,
                                                             limit))
            return _csv(stream, f"{sym}-{table.name}.csv", headers)
        if fmt_name in params.BINARY_FORMATS:
            arrow = _require_arrow(fmt_name)
            layout = arrow.LAYOUTS[table.name]
            # One COPY, never split in halves: the research formats keep memory
            # flat whatever the range (a split's second half waits in memory).
            stream = CopyStream(
                svc.pool.connection,
                lambda conn: queries.event_csv_sql(conn, table, sym, span, after, limit,
                                                   columns=layout.sources),
                header=layout.sources, chunk_bytes=settings.csv_chunk_bytes)
            return _binary(arrow, fmt_name, layout, sym, stream, f"{sym}-{table.name}", headers)
        rows = limit or settings.default_page_rows
        with svc.pool.connection() as conn, (
                svc.pool.spare_connection() if rows >= queries.SPLIT_PAGE_ROWS
                else contextlib.nullcontext()) as spare:
            page = queries.event_page(conn, table, sym, span, after, rows, spare=spare)
        bounds: dict[str, Any]
        if isinstance(span, params.IdRange):
            bounds = {"start": None, "end": None,
                      "after_id": codec.unpack_entry_id(span.after),
                      "until_id": codec.unpack_entry_id(span.until), "complete": complete}
        else:
            bounds = {"start": format_us(span.start_us), "end": format_us(span.end_us),
                      "after_id": None, "until_id": None, "complete": None}
        head = {
            "symbol": sym, **bounds,
            "next_cursor": page.next_cursor.encode() if page.next_cursor else None,
        }
        return _json_page(head, table.name, page.rows)

    # The parameters of both history routes (FastAPI reads each route's own
    # signature, so they are spelled out twice, from these aliases).
    Start = Annotated[str | None, Query(max_length=64, description=(
        f"Start (inclusive): {TIME_HELP}; default end - 1 day. "
        "Not with `after_id`/`until_id`"))]
    End = Annotated[str | None, Query(max_length=64, description=(
        f"End (exclusive): {TIME_HELP}; default now. Not with `after_id`/`until_id`"))]
    id_help = ("stream entry ID `<ms>-<seq>` (e.g. `1767571200120-0`); with `{other}`, "
               "selects the entries strictly between the two, in stream order "
               "(IDs compare as numbers: ms, then seq), instead of a time range: "
               "the range of a gap the websocket or the client library names")
    # The pattern is documented, not enforced by FastAPI: params.parse_entry_id
    # says what is wrong in words, and the same for every mistake.
    id_pattern = {"pattern": "^[0-9]+-[0-9]+$"}
    AfterId = Annotated[str | None, Query(
        max_length=48, json_schema_extra=id_pattern,
        description="After (exclusive): " + id_help.format(other="until_id"),
        examples=["1767571200120-0"])]
    UntilId = Annotated[str | None, Query(
        max_length=48, json_schema_extra=id_pattern,
        description="Until (exclusive): " + id_help.format(other="after_id"),
        examples=["1767571260000-3"])]
    Limit = Annotated[int | None, Query(ge=1, le=settings.max_page_rows, description=(
        f"Rows per page (JSON: default {settings.default_page_rows}; CSV, Parquet, Arrow: "
        "rows of the download, default all)"))]
    CursorParam = Annotated[str | None, Query(max_length=64, description=(
        "`next_cursor` of the previous page"))]
    csv_200: dict[int | str, dict[str, Any]] = {
        200: {"content": {params.MEDIA_TYPES[name]: {}
                          for name in ("csv", *params.BINARY_FORMATS)}},
        406: {"model": ErrorBody, "description": "Parquet or Arrow asked for, and the server "
              "has no pyarrow"},
    }

    @router.get("/trades/{symbol}", response_model=TradePageOut, responses=csv_200,
                summary="Trades of a symbol in a time range")
    def get_trades(svc: ServicesDep, symbol: Annotated[str, SYMBOL_PATH], start: Start = None,
                   end: End = None, after_id: AfterId = None, until_id: UntilId = None,
                   limit: Limit = None, cursor: CursorParam = None,
                   fmt: FormatParam = None, accept: AcceptHeader = None) -> Response:
        """Trades oldest first (by time, then stream entry ID), each as the
        websocket sends it; or, with `after_id` and `until_id`, the trades
        of the stream strictly between those entry IDs in stream order (by
        entry ID; backfilled trades, never in a stream, are not in such a
        range); `complete` then says whether every entry of the range had
        reached the history when it was read (the CSV's
        `Pricepipe-Range-Complete` header: true, false or unknown). JSON
        pages carry `next_cursor` (null on the last page): pass it as
        `cursor` with the same range for the next page. CSV, Parquet and
        Arrow (IPC stream) downloads stream the whole range."""
        return history(svc, queries.TRADES, symbol, start, end, after_id, until_id, limit,
                       cursor, fmt, accept)

    @router.get("/quotes/{symbol}", response_model=QuotePageOut, responses=csv_200,
                summary="Quotes (top of book) of a symbol in a time range")
    def get_quote_history(svc: ServicesDep, symbol: Annotated[str, SYMBOL_PATH],
                          start: Start = None, end: End = None, after_id: AfterId = None,
                          until_id: UntilId = None, limit: Limit = None,
                          cursor: CursorParam = None, fmt: FormatParam = None,
                          accept: AcceptHeader = None) -> Response:
        """Quotes oldest first, or an entry-ID range of the quotes stream in
        stream order; paged and downloaded as `/v1/trades/{symbol}`."""
        return history(svc, queries.QUOTES, symbol, start, end, after_id, until_id, limit,
                       cursor, fmt, accept)

    @router.get("/bars/{symbol}", response_model=BarsOut, responses=csv_200,
                summary="OHLCV bars of a symbol, with VWAP and trade count")
    def get_bars(
        svc: ServicesDep,
        symbol: Annotated[str, SYMBOL_PATH],
        interval: Annotated[Literal["1m", "5m", "15m", "1h", "1d"], Query(
            description="Bar width; bars are aligned to UTC midnight")] = "1m",
        start: Annotated[str | None, Query(max_length=64, description=(
            f"Start: {TIME_HELP}; rounded down to the interval; "
            "default end - 1000 intervals"))] = None,
        end: End = None,
        fmt: FormatParam = None,
        accept: AcceptHeader = None,
    ) -> Response:
        """Bars of trades from the stored one-minute rollups, computed from
        raw trades where there are none; a bar with no trades is left out.
        `volume` and `vwap` count the trades with a size (`vwap` is null
        when none has one); `trades` counts them all."""
        sym = params.parse_symbol(symbol)
        width_us = params.parse_interval(interval)
        span = params.parse_range(start, end, now_us=now_us(),
                                  default_span_us=min(width_us * 1000, max_span_us),
                                  max_span_us=max_span_us)
        span = params.TimeRange(params.align_down(span.start_us, width_us), span.end_us)
        params.check_bar_count(span, width_us, settings.max_bars)
        fmt_name = params.response_format(fmt, accept, offered=_offered())
        if fmt_name == "csv":
            stream = CopyStream(
                svc.pool.connection,
                lambda conn: queries.bar_csv_sql(conn, sym, span, width_us),
                header=queries.BAR_CSV_COLUMNS, chunk_bytes=settings.csv_chunk_bytes)
            return _csv(stream, f"{sym}-bars-{interval}.csv")
        if fmt_name in params.BINARY_FORMATS:
            arrow = _require_arrow(fmt_name)
            # The bars' CSV as it is: the layout reads bucket_us, not the text.
            stream = CopyStream(
                svc.pool.connection,
                lambda conn: queries.bar_csv_sql(conn, sym, span, width_us),
                header=queries.BAR_CSV_COLUMNS, chunk_bytes=settings.csv_chunk_bytes)
            return _binary(arrow, fmt_name, arrow.BARS, sym, stream, f"{sym}-bars-{interval}")
        with svc.pool.connection() as conn:
            rows = queries.bars(conn, sym, span, width_us)
        head = {"symbol": sym, "interval": interval, "start": format_us(span.start_us),
                "end": format_us(span.end_us)}
        return _json_page(head, "bars", rows)

    @router.get("/quotes", response_model=BoardOut,
                summary="Top of book and last price of several symbols")
    def get_quotes(
        svc: ServicesDep,
        symbols: Annotated[str, Query(max_length=4096, description=(
            f"Comma-separated symbols, at most {settings.max_quote_symbols}"))],
    ) -> Response:
        """For each symbol, the newest entry of its quotes stream (`bid`,
        `bid_size`, `ask`, `ask_size`) and of its trades stream (`price`) in
        Redis, then those two events in full; `null` for a symbol with
        neither. An unreadable entry is left out and reported in `errors`."""
        wanted = params.parse_symbols(symbols, most=settings.max_quote_symbols)
        found = latest.newest(svc.redis, svc.keys, wanted, (Channel.QUOTES, Channel.TRADES))
        board: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for symbol in wanted:
            quote, trade = found[(symbol, Channel.QUOTES)], found[(symbol, Channel.TRADES)]
            errors = [e for e in (quote.error, trade.error) if e]
            if errors:
                problems[symbol] = "; ".join(errors)
            board[symbol] = latest.board_row(symbol, quote, trade)
        return JsonResponse({"quotes": board, "errors": problems})

    @router.get("/simulate/gbm", response_model=GbmOut, summary="Simulated GBM price path")
    def simulate_gbm(
        periods: Annotated[int, Query(ge=1, le=settings.max_gbm_periods,
                                      description="Steps to simulate")] = 252,
        start_price: Annotated[float, Query(gt=0, le=1e12, allow_inf_nan=False)] = 100.0,
        mu: Annotated[float, Query(ge=-100, le=100, allow_inf_nan=False,
                                   description="Drift per unit of time")] = 0.05,
        sigma: Annotated[float, Query(ge=0, le=100, allow_inf_nan=False,
                                      description="Volatility per unit of time")] = 0.2,
        delta: Annotated[float, Query(gt=0, le=1000, allow_inf_nan=False,
                                      description="Time step, units of time")] = 1 / 252,
        seed: Annotated[int | None, Query(ge=0, le=2**63 - 1, description=(
            "Random seed; same seed, same path (default: a fresh one, echoed back)"))] = None,
    ) -> Response:
        """`periods + 1` prices of geometric Brownian motion from
        `start_price` (the seed price service's `/gbm`)."""
        import numpy as np

        from pricepipe.gbm import gbm_path

        used_seed = secrets.randbits(63) if seed is None else seed
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            path = gbm_path(start_price, mu, sigma, delta, periods,
                            np.random.default_rng(used_seed))
            finite = bool(np.all(np.isfinite(path)) and np.all(path > 0))
        if not finite:
            raise InvalidParameterError(
                "the path overflows float64: lower mu, sigma, delta or periods", param="sigma")
        body = {"periods": periods, "start_price": start_price, "mu": mu, "sigma": sigma,
                "delta": delta, "seed": used_seed, "prices": path.tolist()}
        return JsonResponse(body)

    return router


def build_ops_router(metrics: Metrics) -> APIRouter:
    """``/healthz`` and ``/metrics``: not rate limited, not versioned."""
    router = APIRouter()
    # The last failure logged per server: each outage (or change of error) is
    # logged once, not on every probe.
    logged: dict[str, str | None] = {"redis": None, "database": None}

    def down(report: dict[str, str], server: str, exc: BaseException) -> None:
        # A fixed reason in the answer: the driver's text (host names, ports,
        # user names, configuration hints) is for the log, not for any caller.
        report[server] = "unreachable"
        detail = f"{type(exc).__name__}: {str(exc).strip()}"
        if logged[server] != detail:
            log.warning("healthz: %s unreachable: %s", server, detail)
            logged[server] = detail

    @router.get("/healthz", response_model=HealthOut,
                responses={503: {"model": HealthOut, "description": "A dependency is down"}},
                summary="Liveness of the API and its servers")
    def healthz(svc: ServicesDep) -> Response:
        """200 when Redis and PostgreSQL answer, else 503 with ``"unreachable"``
        for the one that does not (the error itself is logged)."""
        report = {"status": "ok", "redis": "ok", "database": "ok"}
        try:
            svc.redis.ping()
        except (redis.RedisError, OSError) as exc:
            down(report, "redis", exc)
        try:
            with svc.pool.connection() as conn:
                queries.ping(conn)
        except (psycopg2.Error, PricepipeError) as exc:
            down(report, "database", exc)
        for server in logged:
            if report[server] == "ok" and logged[server] is not None:
                log.info("healthz: %s reachable again", server)
                logged[server] = None
        healthy = report["redis"] == "ok" and report["database"] == "ok"
        if not healthy:
            report["status"] = "unavailable"
        return JsonResponse(report, status_code=200 if healthy else 503)

    @router.get("/metrics", include_in_schema=False)
    def get_metrics() -> Response:
        return Response(metrics.render(), media_type=Metrics.content_type)

    return router


__all__ = ["ErrorBody", "build_ops_router", "build_router"]
