"""Backfill: historical trades written straight into PostgreSQL through the
same idempotent sink as the persist workers (``trades`` and ``bars_1m``
together, one transaction per page).

**Simulated** (:func:`backfill`, a :class:`~.history.HistorySource` such as
GBM): rows get :func:`entry_id_for` = ``-(ts_us * 1024 + k) - 1`` (``k``: the
trade's rank among trades of the same instant), negative so it can never
equal a packed stream entry ID; deterministic, like the simulated trade ids,
so running the same backfill twice adds nothing the second time.

**A venue's real history** (:func:`backfill_venue`, a
:class:`~.history.VenueHistory`): trades keep the venue's trade id and get
:func:`venue_entry_id` = ``VENUE_ENTRY_BASE + trade_id``, negative too and
apart from the simulated ones. The ``trades`` table is unique on ``(symbol,
ts, trade_id)``, so a trade stored live (the ``binance-ws`` feed, which
shares the aggregate trade ids) or by an earlier run is never stored twice.

* **Resumable**: the trades already stored for the range (this source, or a
  live source of the same trade ids) say where to go on. When they are one
  unbroken run of ids from the range's first trade (forward venues, Binance)
  or down from its last (backward venues, Coinbase), only the ids beyond it
  are fetched; otherwise the whole range is fetched again and the unique key
  skips what is there. So an interrupted backfill re-run continues, and a
  completed one costs a few requests and adds nothing.
* **Candles** where trades are not served: for the minutes of the range
  before its first stored trade, the venue's one-minute candles go into
  ``bars_1m`` only, and only for minutes without a bar (``ON CONFLICT DO
  NOTHING``): a candle never doubles a bar made of trades. Such a bar is
  marked by ``open_entry = close_entry =`` :data:`CANDLE_ENTRY` (no trade is
  behind it), its ``open_ts`` / ``close_ts`` the minute's bounds. Binance
  klines give the trade count and the quote volume (so the VWAP is exact);
  Coinbase candles give neither: ``trade_count`` is 1 and the notional the
  typical price ``(high + low + close) / 3`` times the volume (an estimate).
  When trades of such a minute are stored later (a backfill that reaches
  further, or a live trade folded into it by a persist worker), the
  backfill storing them rebuilds that minute's bar from its trades, so
  the trades' bar replaces the candle's. ``pricepipe bars rebuild`` (bars
  from trades) drops the candle bars of its range: re-run the backfill.

A backfill changes bars in PostgreSQL only: it does not publish to the bars
stream (history is read over HTTP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg2.extras import execute_values

from pricepipe.clock import datetime_to_us, us_to_datetime
from pricepipe.events import US_PER_MINUTE, Trade, bucket_of
from pricepipe.exceptions import InvalidEventError
from pricepipe.venues import TRADE_ID_SPACE
from pricepipe.venues.messages import Candle, VenueTrade

from .batch import TradeRow, trade_row
from .history import HistorySource, VenueHistory
from .sink import EventSink

SAME_INSTANT_MAX = 1024

#: Entry IDs of backfilled venue trades: this plus the venue's trade id (ids
#: below 2**62). Negative, so never a stream's; below every simulated one
#: (those are above -4.2e18 until the year 2100); ordered like the venue's ids.
VENUE_ENTRY_BASE = -(1 << 62)
#: ``open_entry`` and ``close_entry`` of a bar made from a venue's candle.
CANDLE_ENTRY = -(1 << 63)

# Trades already stored in the range, of the given sources (bound parameters only).
STORED_SQL = """
    SELECT min(trade_id::bigint), max(trade_id::bigint), count(DISTINCT trade_id), min(ts)
    FROM trades
    WHERE symbol = %(symbol)s AND source = ANY(%(sources)s)
      AND ts >= %(start)s AND ts < %(end)s
"""

CANDLE_BARS_SQL = """
    INSERT INTO bars_1m (symbol, bucket, open, high, low, close, volume, notional,
                         trade_count, open_ts, open_entry, close_ts, close_entry)
    VALUES %s
    ON CONFLICT (symbol, bucket) DO NOTHING
"""
CANDLE_TEMPLATE = (
    "(%s, timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s, %s, %s, %s, %s, %s,"
    " timestamptz 'epoch' + %s * interval '1 microsecond', %s,"
    " timestamptz 'epoch' + %s * interval '1 microsecond', %s)"
)

CANDLE_BUCKETS_SQL = """
    SELECT bucket FROM bars_1m
    WHERE symbol = %(symbol)s AND bucket >= %(first)s AND bucket <= %(last)s
      AND open_entry = %(candle)s
"""


def entry_id_for(ts_us: int, rank: int) -> int:
    """Entry ID of the ``rank``-th backfilled trade at ``ts_us`` (see module doc)."""
    if not 0 <= rank < SAME_INSTANT_MAX:
        raise ValueError(f"more than {SAME_INSTANT_MAX} backfilled trades at one instant")
    return -(ts_us * SAME_INSTANT_MAX + rank) - 1


def rows_of(trades: list[Trade], last: tuple[int, int] | None = None
            ) -> tuple[list[TradeRow], tuple[int, int] | None]:
    """Rows for ``trades`` (time-ordered); ``last`` carries (ts_us, rank) across chunks."""
    rows: list[TradeRow] = []
    prev_ts, rank = last if last is not None else (-1, -1)
    for t in trades:
        rank = rank + 1 if t.ts_us == prev_ts else 0
        prev_ts = t.ts_us
        rows.append(trade_row(t, entry_id_for(t.ts_us, rank)))
    return rows, ((prev_ts, rank) if trades else last)


@dataclass
class BackfillResult:
    symbol: str
    source: str
    trades: int = 0
    inserted: int = 0
    #: trades the event checks refused (logged by the caller)
    rejected: int = 0
    #: bars written from the venue's candles
    candle_bars: int = 0
    #: the trade id the run went on from, when it resumed an earlier one
    resumed_at: int | None = None
    #: REST requests sent
    requests: int = 0


def backfill(sink: EventSink, source: HistorySource, symbol: str, start_us: int, end_us: int,
             *, chunk: int = 10_000, progress: Callable[[int], None] | None = None
             ) -> BackfillResult:
    """Write ``symbol``'s trade history in ``[start_us, end_us)``, one
    transaction per chunk.

    Safe to interrupt and re-run: committed chunks are skipped by the
    unique keys. ``progress(n)`` is called after each chunk with its size.
    Raises ``psycopg2.Error`` and whatever the source raises.
    """
    result = BackfillResult(symbol, source.name)
    last: tuple[int, int] | None = None
    for trades in source.trades(symbol, start_us, end_us, chunk=chunk):
        rows, last = rows_of(trades, last)
        result.inserted += sink.write(rows).trades
        result.trades += len(rows)
        if progress is not None:
            progress(len(rows))
    return result


def venue_entry_id(trade_id: int) -> int:
    """Entry ID of a backfilled venue trade (see :data:`VENUE_ENTRY_BASE`)."""
    if not 0 <= trade_id < 1 << 62:
        raise ValueError(f"trade id {trade_id} out of range")
    return VENUE_ENTRY_BASE + trade_id


def same_id_sources(source: str) -> list[str]:
    """Every source whose trade ids count the same trades as ``source``'s."""
    space = TRADE_ID_SPACE.get(source)
    if space is None:
        return [source]
    return sorted(s for s, other in TRADE_ID_SPACE.items() if other == space)


def venue_trade(trade: VenueTrade, symbol: str, source: str) -> Trade:
    """The event of a venue's trade under the local ``symbol``. Raises
    :exc:`~pricepipe.exceptions.InvalidEventError`."""
    return Trade(symbol, trade.ts_us, trade.price, trade.size, source, str(trade.trade_id),
                 trade.side)


def candle_row(symbol: str, candle: Candle) -> tuple[Any, ...]:
    """A ``bars_1m`` row of one candle (see the module docstring)."""
    bucket = bucket_of(candle.bucket_us)
    trades = candle.trades if candle.trades else 1
    notional = (candle.notional if candle.notional is not None
                else candle.volume * (candle.high + candle.low + candle.close) / 3)
    return (symbol, bucket, candle.open, candle.high, candle.low, candle.close, candle.volume,
            notional, trades, bucket, CANDLE_ENTRY, bucket + US_PER_MINUTE - 1, CANDLE_ENTRY)


def _stored(sink: EventSink, symbol: str, sources: Sequence[str], start_us: int,
            end_us: int) -> tuple[int | None, int | None, int, int | None]:
    """``(min id, max id, distinct ids, min ts_us)`` of the range's stored trades."""
    conn = sink.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(STORED_SQL, {"symbol": symbol, "sources": list(sources),
                                     "start": us_to_datetime(start_us),
                                     "end": us_to_datetime(end_us)})
            low, high, count, first_ts = cur.fetchone()
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return low, high, int(count), None if first_ts is None else datetime_to_us(first_ts)


def _settle_candle_bars(sink: EventSink, symbol: str, first_us: int, last_us: int) -> int:
    """Rebuild from its trades every candle bar among the minutes of
    ``[first_us, last_us]`` (trades of that minute were stored after it);
    returns how many."""
    from . import rollup

    conn = sink.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(CANDLE_BUCKETS_SQL, {
                "symbol": symbol, "first": us_to_datetime(bucket_of(first_us)),
                "last": us_to_datetime(bucket_of(last_us)), "candle": CANDLE_ENTRY})
            buckets = [datetime_to_us(row[0]) for row in cur.fetchall()]
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    for bucket_us in buckets:
        rollup.rebuild(conn, bucket_us, bucket_us + US_PER_MINUTE, symbol)
    return len(buckets)


def _write_candles(sink: EventSink, symbol: str, candles: Sequence[Candle]) -> int:
    rows = [candle_row(symbol, c) for c in candles if c.volume > 0]
    if not rows:
        return 0
    conn = sink.connect()
    try:
        with conn.cursor() as cur:
            execute_values(cur, CANDLE_BARS_SQL, rows, template=CANDLE_TEMPLATE,
                           page_size=len(rows))
            written = cur.rowcount
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return int(written)


def backfill_venue(sink: EventSink, history: VenueHistory, symbol: str, upstream: str,
                   start_us: int, end_us: int, *, candles: bool = True,
                   progress: Callable[[int], None] | None = None,
                   total: Callable[[int], None] | None = None) -> BackfillResult:
    """Load the venue's trades of ``upstream`` in ``[start_us, end_us)`` as
    ``symbol``, and its candles for the minutes before the first trade
    stored (see the module docstring).

    Resumable and idempotent. ``total(n)`` is called once with the number of
    trades to fetch, ``progress(n)`` after each page. Raises
    ``psycopg2.Error`` and :exc:`~pricepipe.exceptions.UpstreamError`;
    pages committed before stay committed."""
    result = BackfillResult(symbol, history.source)
    sources = same_id_sources(history.source)
    first, until = history.bounds(upstream, start_us, end_us)
    low, high, count, _ = _stored(sink, symbol, sources, start_us, end_us)
    unbroken = low is not None and high is not None and count == high - low + 1
    if unbroken and history.forward and low == first and high is not None:
        first = result.resumed_at = max(first, high + 1)
    elif unbroken and not history.forward and high == until - 1 and low is not None:
        until = result.resumed_at = min(until, low)
    if total is not None:
        total(max(until - first, 0))
    for page in history.pages(upstream, first, until):
        trades: list[Trade] = []
        for venue in page:
            if not start_us <= venue.ts_us < end_us:
                continue
            try:
                trades.append(venue_trade(venue, symbol, history.source))
            except InvalidEventError:
                result.rejected += 1
        if trades:
            rows: list[TradeRow] = [trade_row(t, venue_entry_id(int(t.trade_id or 0)))
                                    for t in trades]
            result.inserted += sink.write(rows).trades
            result.trades += len(rows)
            _settle_candle_bars(sink, symbol, trades[0].ts_us, trades[-1].ts_us)
        if progress is not None:
            progress(len(page))
    if candles:
        _, _, _, first_us = _stored(sink, symbol, sources, start_us, end_us)
        candles_until = end_us if first_us is None else bucket_of(first_us)
        if candles_until > start_us:
            for chunk in history.candles(upstream, start_us, candles_until):
                result.candle_bars += _write_candles(
                    sink, symbol, [c for c in chunk if c.bucket_us < candles_until])
    result.requests = history.requests
    return result


# --- running one (the command and the rq job share this) -------------------------------------


def resolve_symbol(venue: str, symbol: str, upstream: str | None = None) -> tuple[str, str]:
    """``(local, upstream)`` of a backfill's symbol: venue-qualified unless
    ``upstream`` names the venue's symbol (see :func:`pricepipe.venues.resolve`).
    Raises :exc:`~pricepipe.exceptions.ConfigError`."""
    from pricepipe.events import validate_symbol
    from pricepipe.exceptions import ConfigError
    from pricepipe.venues import resolve

    if upstream:
        try:
            return validate_symbol(symbol), upstream
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return resolve(venue, symbol)


def check_source(r: Any, keys: Any, symbol: str, source: str, *, force: bool = False) -> None:
    """Refuse (:exc:`~pricepipe.exceptions.ConfigError`) to backfill a symbol
    the source registry records with a source of other trade ids (a
    backfill's ids must be the live feed's, or the unique key cannot tell
    the same trade twice), unless ``force``."""
    from pricepipe.exceptions import ConfigError
    from pricepipe.sources import source_of
    from pricepipe.venues import same_trade_ids

    recorded = source_of(r, keys, symbol)
    if recorded is None or same_trade_ids(recorded, source) or force:
        return
    raise ConfigError(f"{symbol} is published from {recorded}, whose trade ids are not "
                      f"{source}'s; backfill another name (--upstream) or pass --force-source")


def open_history(venue: str, *, base_url: str | None = None,
                 http: Any = None) -> VenueHistory:
    """The venue's history over REST, configured from its settings
    (``PRICEPIPE_<VENUE>_BASE_URL``, ``..._RATE_LIMIT``: the request budget)."""
    from pricepipe.budget import Budget
    from pricepipe.exceptions import ConfigError
    from pricepipe.upstream import HttpOptions, Upstream
    from pricepipe.venues.settings import BinanceSettings, CoinbaseSettings

    from .history import VENUE_HISTORIES

    if venue not in VENUE_HISTORIES:
        raise ConfigError(f"unknown backfill source {venue!r}: want gbm or one of "
                          f"{sorted(VENUE_HISTORIES)}")
    settings = (BinanceSettings if venue == "binance" else CoinbaseSettings).from_env(
        base_url=base_url)
    upstream = Upstream(settings.base_url, http or HttpOptions(),
                        headers={"User-Agent": "pricepipe"}, pool_size=1)
    return VENUE_HISTORIES[venue](upstream, Budget(settings.rate_limit,
                                                   name=f"backfill-{venue}"))


def run_venue_backfill(database_url: str, venue: str, symbol: str, upstream: str,
                       start_us: int, end_us: int, *, redis: tuple[Any, Any] | None = None,
                       candles: bool = True, force_source: bool = False,
                       base_url: str | None = None, http: Any = None,
                       progress: Callable[[int], None] | None = None,
                       total: Callable[[int], None] | None = None) -> BackfillResult:
    """Check the source registry (``redis``: ``(client, keys)``, when there
    is one), then :func:`backfill_venue` into ``database_url``."""
    history = open_history(venue, base_url=base_url, http=http)
    try:
        if redis is not None:
            check_source(redis[0], redis[1], symbol, history.source, force=force_source)
        with EventSink(database_url, application_name=f"pricepipe-backfill-{venue}") as sink:
            return backfill_venue(sink, history, symbol, upstream, start_us, end_us,
                                  candles=candles, progress=progress, total=total)
    finally:
        history.close()
