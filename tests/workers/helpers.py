"""Helpers of the workers tests: deterministic trades and quotes, publishing,
counting rows (per table) and pending entries (per stream)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2 import sql

from pricepipe import codec, streams
from pricepipe.clock import now_us
from pricepipe.events import Event, Quote, Side, Trade
from pricepipe.keys import PERSIST_GROUP, PERSISTED, Channel, Keys
from pricepipe.workers.settings import WorkerSettings
from tests.helpers import wait_until

US_PER_DAY = 86_400_000_000


def _base_ts_us() -> int:
    """03:04:05 UTC yesterday: 21 to 45 hours ago.

    Fixed for the whole run, so bars are reproducible, and recent enough for
    the persist workers, which dead-letter events older than
    :data:`~pricepipe.events.MAX_EVENT_AGE_AT_APPEND_US` (7 days) before
    their entry was appended (and tests publish with ``XADD *``: now). Early
    enough that five hours of events after it are still in the past."""
    return (now_us() // US_PER_DAY - 1) * US_PER_DAY + (3 * 3600 + 4 * 60 + 5) * 1_000_000


#: A fixed event time (03:04:05 UTC), so bars are reproducible.
BASE_TS_US = _base_ts_us()

SYMBOLS = ("AAPL", "MSFT", "BTC-USD", "ETH-USD", "SPY")

#: The realistic mix: quotes change more often than anything trades.
QUOTES_PER_TRADE = 5

TABLES = ("trades", "quotes")


def make_trades(n: int, *, symbols: tuple[str, ...] = SYMBOLS, step_us: int = 250_000,
                start_us: int = BASE_TS_US, source: str = "test") -> list[Trade]:
    """``n`` valid trades spread over ``symbols``, event times ``step_us`` apart;
    every seventh without a size (a source that does not report it)."""
    out = []
    for i in range(n):
        price = 100.0 + (i * 7919 % 1000) / 100.0
        size = None if i % 7 == 3 else float(i % 5 + 1)
        out.append(Trade(symbols[i % len(symbols)], start_us + i * step_us, price, size, source,
                         f"T{start_us + i * step_us}", Side.BUY if i % 2 else Side.SELL))
    return out


def make_quotes(n: int, *, symbols: tuple[str, ...] = SYMBOLS, step_us: int = 50_000,
                start_us: int = BASE_TS_US, source: str = "test") -> list[Quote]:
    """``n`` valid quotes spread over ``symbols``; every eleventh one-sided."""
    out = []
    for i in range(n):
        bid = 100.0 + (i * 6007 % 1000) / 100.0
        ask = bid + 0.01 * (i % 3 + 1)
        if i % 11 == 5:
            out.append(Quote(symbols[i % len(symbols)], start_us + i * step_us, bid,
                             float(i % 9), None, None, source))
        else:
            out.append(Quote(symbols[i % len(symbols)], start_us + i * step_us, bid,
                             float(i % 9), ask, float(i % 4 + 1), source))
    return out


def make_events(n: int, *, symbols: tuple[str, ...] = SYMBOLS, step_us: int = 50_000,
                start_us: int = BASE_TS_US) -> list[Event]:
    """``n`` events in the realistic mix (:data:`QUOTES_PER_TRADE` quotes per
    trade), interleaved in time order."""
    trades = make_trades(n // (QUOTES_PER_TRADE + 1) + 1, symbols=symbols,
                         step_us=step_us * (QUOTES_PER_TRADE + 1), start_us=start_us)
    quotes = make_quotes(n, symbols=symbols, step_us=step_us, start_us=start_us + 1)
    out: list[Event] = []
    ti = qi = 0
    for i in range(n):
        if i % (QUOTES_PER_TRADE + 1) == 0:
            out.append(trades[ti])
            ti += 1
        else:
            out.append(quotes[qi])
            qi += 1
    return out


def kinds(events: Sequence[Event]) -> dict[str, int]:
    """How many events of each table: ``{"trades": n, "quotes": m}``."""
    counts = dict.fromkeys(TABLES, 0)
    for event in events:
        counts[str(codec.channel_of(event))] += 1
    return counts


def publish(r: Any, keys: Keys, events: Sequence[Event], *, chunk: int = 5000) -> list[str]:
    streams.register_symbols(r, keys, sorted({e.symbol for e in events}))
    ids: list[str] = []
    for i in range(0, len(events), chunk):
        ids.extend(x.decode() for x in streams.append_events(r, keys, events[i:i + chunk]))
    return ids


def row_counts(db: Any) -> dict[str, int]:
    """Rows per table: ``{"trades": n, "quotes": m}``."""
    out = {}
    with db.cursor() as cur:
        for table in TABLES:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            out[table] = int(cur.fetchone()[0])
    return out


def row_count(db: Any) -> int:
    """Rows of both tables together."""
    return sum(row_counts(db).values())


def duplicate_count(db: Any) -> int:
    """Rows beyond the first per (symbol, entry_id) of each table: a redelivery
    that slipped through."""
    total = 0
    with db.cursor() as cur:
        for table in TABLES:
            cur.execute(sql.SQL("SELECT count(*) - count(DISTINCT (symbol, entry_id)) FROM {}")
                        .format(sql.Identifier(table)))
            total += int(cur.fetchone()[0])
    return total


def fast_settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {"block_ms": 50, "claim_idle_ms": 60_000, "retry_base_s": 0.05,
                              "retry_cap_s": 0.5, "refresh_interval_s": 0.5}
    values.update(overrides)
    return WorkerSettings(**values)


def persisted_streams(keys: Keys, symbols: Sequence[str]) -> list[str]:
    return [keys.stream(s, channel) for s in symbols for channel in PERSISTED]


def pending_count(r: Any, keys: Keys, symbols: Sequence[str] = SYMBOLS) -> int:
    """Entries pending in the persist group, trades and quotes streams together."""
    total = 0
    for stream in persisted_streams(keys, symbols):
        total += int(r.xpending(stream, PERSIST_GROUP)["pending"])
    return total


def registered(r: Any, keys: Keys) -> list[str]:
    return streams.known_symbols(r, keys)


def entries_added(r: Any, keys: Keys) -> dict[str, int]:
    """Entries ever appended to the registered symbols' persisted streams,
    per table (trimming does not lower it)."""
    out = dict.fromkeys(TABLES, 0)
    for symbol in registered(r, keys):
        for channel in PERSISTED:
            info = r.xinfo_stream(keys.stream(symbol, channel))
            out[str(channel)] += int(info["entries-added"])
    return out


def entries_added_per_stream(r: Any, keys: Keys) -> dict[tuple[str, str], int]:
    """Entries ever appended, per ``(table, symbol)`` of every registered
    symbol's persisted streams (``XINFO STREAM`` entries-added)."""
    return {(str(channel), symbol): int(r.xinfo_stream(keys.stream(symbol, channel))
                                        ["entries-added"])
            for symbol in registered(r, keys) for channel in PERSISTED}


def rows_per_stream(db: Any) -> dict[tuple[str, str], int]:
    """Rows per ``(table, symbol)``."""
    out: dict[tuple[str, str], int] = {}
    with db.cursor() as cur:
        for table in TABLES:
            cur.execute(sql.SQL("SELECT symbol, count(*) FROM {} GROUP BY symbol")
                        .format(sql.Identifier(table)))
            out.update({(table, symbol): int(n) for symbol, n in cur.fetchall()})
    return out


def rows_now(database_url: str) -> int:
    """Row count (both tables) over a fresh connection; -1 while the server
    is unreachable."""
    counts = row_counts_now(database_url)
    return -1 if counts is None else sum(counts.values())


def row_counts_now(database_url: str) -> dict[str, int] | None:
    import psycopg2

    try:
        conn = psycopg2.connect(database_url, connect_timeout=2)
    except psycopg2.OperationalError:
        return None
    conn.autocommit = True  # one count, one snapshot: no lock held across the tables
    try:
        return row_counts(conn)
    finally:
        conn.close()


def bar_messages(r: Any, keys: Keys, symbol: str) -> list[tuple[str, Any]]:
    """The bars stream of ``symbol``: ``(entry_id, Bar)`` in order."""
    return [(entry_id.decode(), codec.decode_entry(Channel.BARS_1M, symbol, fields))
            for entry_id, fields in r.xrange(keys.bars(symbol))]


def fast_env(env: dict[str, str]) -> dict[str, str]:
    """Subprocess environment with short retry and poll intervals."""
    return dict(env, PRICEPIPE_WORKER_RETRY_BASE_S="0.05", PRICEPIPE_WORKER_RETRY_CAP_S="0.5",
                PRICEPIPE_WORKER_BLOCK_MS="100", PRICEPIPE_WORKER_REFRESH_INTERVAL_S="0.5")


__all__ = ["wait_until"]
