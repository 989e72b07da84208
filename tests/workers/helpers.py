"""Helpers of the workers tests: deterministic ticks, publishing, counting rows
and pending entries."""

from __future__ import annotations

from typing import Any

from pricepipe.workers.settings import WorkerSettings

from pricepipe import streams
from pricepipe.keys import Keys
from pricepipe.tick import Tick
from tests.helpers import wait_until

#: 2026-01-02T03:04:05Z: a fixed event time, so bars are reproducible.
BASE_TS_US = 1_767_323_045_000_000


SYMBOLS = ("AAPL", "MSFT", "BTC-USD", "ETH-USD", "SPY")


def make_ticks(n: int, *, symbols: tuple[str, ...] = SYMBOLS, step_us: int = 250_000,
               start_us: int = BASE_TS_US) -> list[Tick]:
    """``n`` valid ticks spread over ``symbols``, event times ``step_us`` apart."""
    out = []
    for i in range(n):
        symbol = symbols[i % len(symbols)]
        price = 100.0 + (i * 7919 % 1000) / 100.0
        out.append(Tick(symbol, start_us + i * step_us, price, float(i % 5 + 1), "test"))
    return out


def publish(r: Any, keys: Keys, ticks: list[Tick], *, chunk: int = 5000) -> list[str]:
    streams.register_symbols(r, keys, sorted({t.symbol for t in ticks}))
    ids: list[str] = []
    for i in range(0, len(ticks), chunk):
        ids.extend(x.decode() for x in streams.append_ticks(r, keys, ticks[i:i + chunk]))
    return ids


def row_count(db: Any) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM ticks")
        return int(cur.fetchone()[0])


def duplicate_count(db: Any) -> int:
    """Rows beyond the first per (symbol, entry_id): a redelivery that slipped through."""
    with db.cursor() as cur:
        cur.execute("SELECT count(*) - count(DISTINCT (symbol, entry_id)) FROM ticks")
        return int(cur.fetchone()[0])


def fast_settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {"block_ms": 50, "claim_idle_ms": 60_000, "retry_base_s": 0.05,
                              "retry_cap_s": 0.5, "refresh_interval_s": 0.5}
    values.update(overrides)
    return WorkerSettings(**values)


def pending_count(r: Any, keys: Keys, symbols: tuple[str, ...] = SYMBOLS) -> int:
    total = 0
    for symbol in symbols:
        summary = r.xpending(keys.stream(symbol), "persist")
        total += int(summary["pending"])
    return total


def rows_now(database_url: str) -> int:
    """Row count over a fresh connection; -1 while the server is unreachable."""
    import psycopg2

    try:
        conn = psycopg2.connect(database_url, connect_timeout=2)
    except psycopg2.OperationalError:
        return -1
    try:
        return row_count(conn)
    finally:
        conn.close()


def fast_env(env: dict[str, str]) -> dict[str, str]:
    """Subprocess environment with short retry and poll intervals."""
    return dict(env, PRICEPIPE_WORKER_RETRY_BASE_S="0.05", PRICEPIPE_WORKER_RETRY_CAP_S="0.5",
                PRICEPIPE_WORKER_BLOCK_MS="100", PRICEPIPE_WORKER_REFRESH_INTERVAL_S="0.5")


__all__ = ["wait_until"]
