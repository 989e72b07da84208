"""``pricepipe bench api``: latency of history queries through the HTTP API
beside ``psql``'s ``COPY (query) TO STDOUT`` of the same rows, in the same
run on the same servers.

Queries: one day of trades and one day of quotes (``n`` rows each, default
86,400: one a second) and 30 days of one-minute bars (43,200 rows; ``n``
of them when ``n`` is smaller), each as JSON and CSV. Each is repeated and
the median wall time kept, from sending the request to reading the last
byte; the body is read as bytes, not parsed, as the baseline's output is.
The queries run in interleaved rounds (``max(repeats, 5)``): each round runs
``psql`` and then the API's JSON and CSV for each query, and each ratio is
the API's time over the same round's ``psql`` time; reported as the median
of the rounds with its min and max (:mod:`pricepipe.bench.ratios`).
The API runs as ``pricepipe api`` in a process of its own, as PostgreSQL
does for ``psql``. The baseline includes starting ``psql``, as a request
includes its HTTP round trip. Goals (issue 18): JSON <= 1.1x and CSV <= 1.0x
of the baseline.

The data go under symbols of their own (``ZZBENCH.*``) on a fixed day in
2025, written the way the persist workers store them (stream entry IDs,
venue trade ids, sides, sizes), and are deleted afterwards.
"""

from __future__ import annotations

import io
import os
import shutil
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

from .ratios import DEFAULT_REPEATS, Ratio, pair_ratios, summary_text, target_report

TRADE_SYMBOL = "ZZBENCH.T"
QUOTE_SYMBOL = "ZZBENCH.Q"
BAR_SYMBOL = "ZZBENCH.B"
DAY = date(2025, 6, 2)
BAR_MINUTES = 30 * 1440
DEFAULT_ROWS = 86_400
#: Rounds (psql, JSON, CSV of each query) at least: a round takes well under a second.
MIN_PAIRS = 5
FORMATS = ("json", "csv")
#: The issue's goals: time of the API's answer / psql COPY's, per format.
GOALS = {"json": 1.1, "csv": 1.0}
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


def _once(fn: Any) -> tuple[float, int]:
    """Milliseconds of one ``fn()`` and the size it returned."""
    started = time.perf_counter()
    size = fn()
    return (time.perf_counter() - started) * 1000, size


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


def run(*, redis_url: str, database_url: str, n: int | None = None,
        repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
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
        figures: dict[str, list[float]] = {}
        baselines: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}
        pairs = max(repeats, MIN_PAIRS)
        print(f"{pairs} interleaved rounds (psql COPY, then the API as JSON and CSV) per query",
              flush=True)
        print(f"{'query':<28} {'psql ms':>10}  API ms (x the same round's psql)")
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
            for _, query, url in cases:  # warm caches and connections, not measured
                _psql_copy(database_url, query, conn)
                for fmt in FORMATS:
                    _http_get(f"{url}&format={fmt}")
            for round_ in range(pairs):
                for name, query, url in cases:
                    base_ms, sizes[f"psql_{name}"] = _once(
                        lambda q=query: _psql_copy(database_url, q, conn))
                    baselines.setdefault(f"psql_copy_{name}_ms", []).append(base_ms)
                    line = f"{'psql COPY ' + name:<28} {base_ms:>10.1f}"
                    for fmt in FORMATS:
                        ms, sizes[f"api_{name}_{fmt}"] = _once(
                            lambda u=url, f=fmt: _http_get(f"{u}&format={f}"))
                        figures.setdefault(f"api_{name}_{fmt}_ms", []).append(ms)
                        line += f"  {fmt} {ms:.1f} ({ms / base_ms:.2f}x)"
                    print(f"{line}   round {round_ + 1}", flush=True)
        ratios = [
            Ratio(f"api_{name}_{fmt}_vs_psql", GOALS[fmt], "lower",
                  tuple(pair_ratios(figures[f"api_{name}_{fmt}_ms"],
                                    baselines[f"psql_copy_{name}_ms"])),
                  note=f"HTTP {fmt.upper()} time / psql COPY TO STDOUT time, same round")
            for name, _, _ in cases for fmt in FORMATS]
        with conn.cursor() as cur:
            _delete(cur)
    finally:
        conn.close()
    report = target_report(
        "api", figures=figures, baselines=baselines, ratios=ratios,
        params={"trades": n_rows, "quotes": n_rows, "bars": n_bars,
                "bar_days": round(n_bars / 1440, 2), "repeats": pairs, "bytes": sizes})
    print(summary_text(report), flush=True)
    return report


if __name__ == "__main__":  # pragma: no cover - `pricepipe bench api` is the way in
    import sys

    run(redis_url=sys.argv[1], database_url=sys.argv[2])
