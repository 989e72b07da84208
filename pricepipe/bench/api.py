"""``pricepipe bench api``: latency of history queries through the HTTP API
beside ``psql``'s ``COPY (query) TO STDOUT`` of the same rows, in the same
run on the same servers.

Queries: one day of trades and one day of quotes (``n`` rows each, default
86,400: one a second) and 30 days of one-minute bars (43,200 rows; ``n``
of them when ``n`` is smaller), each as JSON and CSV. Each is repeated and
the median wall time kept, from sending the request to reading the last
byte; the body is read as bytes, not parsed, as the baseline's output is.
The API runs as ``pricepipe api`` in a process of its own, as PostgreSQL
does for ``psql``. The baseline includes starting ``psql``, as a request
includes its HTTP round trip. Goal: within 2x of the baseline.

The data go under symbols of their own (``ZZBENCH.*``) on a fixed day in
2025, written the way the persist workers store them (stream entry IDs,
venue trade ids, sides, sizes), and are deleted afterwards.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from psycopg2 import sql

from pricepipe.clock import datetime_to_us, format_us, us_to_datetime
from pricepipe.codec import pack_entry_id
from pricepipe.connections import pg_connect
from pricepipe.migrate import migrate

TRADE_SYMBOL = "ZZBENCH.T"
QUOTE_SYMBOL = "ZZBENCH.Q"
BAR_SYMBOL = "ZZBENCH.B"
DAY = date(2025, 6, 2)
BAR_MINUTES = 30 * 1440
DEFAULT_ROWS = 86_400
REPEATS = 5
PSQL = shutil.which("psql") or "/usr/bin/psql"


def _day_start_us(day: date) -> int:
    from datetime import UTC, datetime

    return datetime_to_us(datetime(day.year, day.month, day.day, tzinfo=UTC))


def _entry(ts_us: int) -> int:
    """The packed entry ID of a stream entry added at the event's millisecond."""
    return pack_entry_id(f"{ts_us // 1000}-0")


def _load(conn: Any, n_rows: int, n_bars: int) -> None:
    """Write the bench rows (replacing any from an earlier run)."""
    start_us = _day_start_us(DAY)
    step_us = 86_400_000_000 // n_rows
    trades = io.StringIO()
    quotes = io.StringIO()
    price = 100.0
    for i in range(n_rows):
        ts_us = start_us + i * step_us
        price *= 1.0 + (((i * 7919) % 201) - 100) * 1e-5
        ts = format_us(ts_us)
        side = "buy" if i % 2 else "sell"
        trades.write(f"{TRADE_SYMBOL}\t{ts}\t{price!r}\t{1.0 + i % 5!r}\t{side}\t{10**8 + i}"
                     f"\tbench\t{format_us(ts_us + 150)}\t{_entry(ts_us)}\n")
        half = round(price * 1e-4, 6)
        quotes.write(f"{QUOTE_SYMBOL}\t{ts}\t{price - half!r}\t{100.0 + i % 7!r}\t"
                     f"{price + half!r}\t{200.0 + i % 3!r}\tbench\t{format_us(ts_us + 150)}\t"
                     f"{_entry(ts_us)}\n")
    bars = io.StringIO()
    bar0_us = _day_start_us(DAY) - n_bars * 60_000_000
    for i in range(n_bars):
        b_us = bar0_us + i * 60_000_000
        base = 50.0 + (i % 97) * 0.01
        entry = _entry(b_us)
        bars.write(f"{BAR_SYMBOL}\t{format_us(b_us)}\t{base!r}\t{base + 0.5!r}\t{base - 0.5!r}\t"
                   f"{base + 0.1!r}\t60.0\t{base * 60.0!r}\t60\t{format_us(b_us)}\t{entry}\t"
                   f"{format_us(b_us + 59_000_000)}\t{entry + 1}\n")
    for buf in (trades, quotes, bars):
        buf.seek(0)
    with conn.cursor() as cur:
        _delete(cur)
        for parent in ("trades", "quotes"):
            cur.execute("SELECT ensure_partitions(%s, %s, %s)", (parent, DAY, DAY))
        cur.copy_expert("COPY trades (symbol, ts, price, size, side, trade_id, source, recv_ts,"
                        " entry_id) FROM STDIN", trades)
        cur.copy_expert("COPY quotes (symbol, ts, bid, bid_size, ask, ask_size, source, recv_ts,"
                        " entry_id) FROM STDIN", quotes)
        cur.copy_expert("COPY bars_1m (symbol, bucket, open, high, low, close, volume, "
                        "notional, trade_count, open_ts, open_entry, close_ts, close_entry) "
                        "FROM STDIN", bars)
        # Settled, as yesterday's rows are: hint bits and visibility map set
        # (index-only scans), and no autovacuum of the fresh rows running
        # during the measurements, for the baseline and the API alike.
        cur.execute(sql.SQL("VACUUM (ANALYZE) {}, {}, bars_1m").format(
            sql.Identifier(f"trades_{DAY:%Y%m%d}"), sql.Identifier(f"quotes_{DAY:%Y%m%d}")))


def _delete(cur: Any) -> None:
    cur.execute("DELETE FROM trades WHERE symbol = %s", (TRADE_SYMBOL,))
    cur.execute("DELETE FROM quotes WHERE symbol = %s", (QUOTE_SYMBOL,))
    cur.execute("DELETE FROM bars_1m WHERE symbol = %s", (BAR_SYMBOL,))


def _timed(fn: Any, repeats: int) -> tuple[float, int]:
    """Median milliseconds of ``fn()`` and the size it returned."""
    fn()  # warm caches and connections
    times = []
    size = 0
    for _ in range(repeats):
        started = time.perf_counter()
        size = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), size


def _http_get(url: str, accept: str = "application/json") -> int:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=300) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
        return len(resp.read())


def _check_counts(expected: list[tuple[str, int]]) -> None:
    """The measured requests really return every row (else the figures lie)."""
    from pricepipe.codec import decode_json

    for url, want in expected:
        with urllib.request.urlopen(url, timeout=300) as resp:
            got = decode_json(resp.read())["count"]
        if got != want:
            raise RuntimeError(f"{url} returned {got} rows, not {want}")


def _psql_copy(database_url: str, query: sql.Composable, conn: Any) -> int:
    copy = sql.SQL("COPY ({}) TO STDOUT").format(query).as_string(conn)
    out = subprocess.run([PSQL, "-X", "-q", "-d", database_url, "-c", copy],
                         capture_output=True, check=True, timeout=300)
    return len(out.stdout)


class _Api:
    """The API as ``pricepipe api`` runs it, in a process of its own: the
    client measuring it shares no interpreter (nor its GIL) with the server,
    as ``psql`` shares none with PostgreSQL."""

    def __init__(self, redis_url: str, database_url: str, max_rows: int, log_dir: Path) -> None:
        from pricepipe.bench.e2e import Role
        from pricepipe.embedded import free_port

        self.port = free_port()
        # Only the settings given here: no API keys, rate limits or other
        # database from the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRICEPIPE_")}
        env.update({
            "PRICEPIPE_REDIS_URL": redis_url,
            "PRICEPIPE_DATABASE_URL": database_url,
            "PRICEPIPE_DATABASE_STATEMENT_TIMEOUT_MS": "120000",
            "PRICEPIPE_API_RATE_LIMIT": "",
            "PRICEPIPE_API_KEY_RATE_LIMIT": "",
            "PRICEPIPE_API_MAX_PAGE_ROWS": str(max(max_rows, 100_000)),
        })
        self.role = Role("bench-api", ["api", "--host", "127.0.0.1", "--port", str(self.port)],
                         env, log_dir)

    def __enter__(self) -> str:
        from pricepipe.supervisor import wait_http

        base = f"http://127.0.0.1:{self.port}"
        self.role.start()
        if not wait_http(f"{base}/healthz", 60, self.role.proc):
            self.role.stop()
            raise RuntimeError(f"the API did not start:\n{self.role.tail()}")
        return base

    def __exit__(self, *exc: object) -> None:
        self.role.stop()


def run(*, redis_url: str, database_url: str, n: int | None = None) -> dict[str, Any]:
    """Measure; print a table as it goes; return the report (see module docstring)."""
    n_rows = n or DEFAULT_ROWS
    n_bars = min(BAR_MINUTES, n_rows)
    conn = pg_connect(database_url, application_name="pricepipe-bench-api")
    conn.autocommit = True
    try:
        migrate(conn)
        print(f"loading {n_rows} trades, {n_rows} quotes and {n_bars} one-minute bars ...",
              flush=True)
        _load(conn, n_rows, n_bars)
        day_start = us_to_datetime(_day_start_us(DAY))
        day_end = day_start + timedelta(days=1)
        bars_start = day_start - timedelta(minutes=n_bars)
        # The baselines read every column of the rows the API serves, in its order.
        trade_query = sql.SQL(
            "SELECT symbol, ts, price, size, side, trade_id, source, recv_ts, entry_id"
            " FROM trades WHERE symbol = {} AND ts >= {} AND ts < {} ORDER BY ts, entry_id"
        ).format(sql.Literal(TRADE_SYMBOL), sql.Literal(day_start), sql.Literal(day_end))
        quote_query = sql.SQL(
            "SELECT symbol, ts, bid, bid_size, ask, ask_size, source, recv_ts, entry_id"
            " FROM quotes WHERE symbol = {} AND ts >= {} AND ts < {} ORDER BY ts, entry_id"
        ).format(sql.Literal(QUOTE_SYMBOL), sql.Literal(day_start), sql.Literal(day_end))
        bar_query = sql.SQL(
            "SELECT * FROM bars_1m WHERE symbol = {} AND bucket >= {} AND bucket < {}"
            " ORDER BY bucket"
        ).format(sql.Literal(BAR_SYMBOL), sql.Literal(bars_start), sql.Literal(day_start))
        figures: dict[str, float] = {}
        baselines: dict[str, float] = {}
        ratios: dict[str, float] = {}
        print(f"{'query':<28} {'median ms':>10} {'bytes':>12}   vs psql COPY")
        with tempfile.TemporaryDirectory(prefix="pricepipe-bench-api-") as logs, \
                _Api(redis_url, database_url, n_rows, Path(logs)) as base:
            day = (f"start={format_us(_day_start_us(DAY))}&end={datetime_to_us(day_end)}"
                   f"&limit={n_rows}")
            trades_url = f"{base}/v1/trades/{TRADE_SYMBOL}?{day}"
            quotes_url = f"{base}/v1/quotes/{QUOTE_SYMBOL}?{day}"
            bars_url = (f"{base}/v1/bars/{BAR_SYMBOL}?interval=1m"
                        f"&start={datetime_to_us(bars_start)}&end={datetime_to_us(day_start)}")
            cases = [
                ("trades_1d", trade_query, trades_url),
                ("quotes_1d", quote_query, quotes_url),
                ("bars_1m", bar_query, bars_url),
            ]
            _check_counts([(trades_url, n_rows), (quotes_url, n_rows), (bars_url, n_bars)])
            for name, query, url in cases:
                base_ms, base_bytes = _timed(lambda q=query: _psql_copy(database_url, q, conn),
                                             REPEATS)
                baselines[f"psql_copy_{name}_ms"] = round(base_ms, 2)
                print(f"{'psql COPY ' + name:<28} {base_ms:>10.1f} {base_bytes:>12}", flush=True)
                for fmt in ("json", "csv"):
                    ms, size = _timed(lambda u=url, f=fmt: _http_get(f"{u}&format={f}"), REPEATS)
                    key = f"api_{name}_{fmt}"
                    figures[f"{key}_ms"] = round(ms, 2)
                    ratios[f"{key}_vs_psql"] = round(ms / base_ms, 3)
                    print(f"{'API ' + name + ' ' + fmt:<28} {ms:>10.1f} {size:>12}   "
                          f"{ms / base_ms:.2f}x", flush=True)
        with conn.cursor() as cur:
            _delete(cur)
    finally:
        conn.close()
    return {
        "target": "api",
        "figures": figures,
        "baselines": baselines,
        "ratios": ratios,
        "params": {"trades": n_rows, "quotes": n_rows, "bars": n_bars,
                   "bar_days": round(n_bars / 1440, 2), "repeats": REPEATS,
                   "goal": "ratios <= 2"},
    }


if __name__ == "__main__":  # pragma: no cover - `pricepipe bench api` is the way in
    import sys

    run(redis_url=sys.argv[1], database_url=sys.argv[2])
