"""Real backfills: a venue's historical trades (Binance aggregate trades,
Coinbase trades) loaded from a fake venue (a real local HTTP server speaking
the documented REST answers) through the idempotent sink, resumable after
an interruption, with candles for minutes whose trades are no longer
served; ``pricepipe backfill --source binance`` loads a day of trades and a
second run adds nothing."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rq import SimpleWorker

from pricepipe import sources
from pricepipe.clock import datetime_to_us, format_us, now_us
from pricepipe.exceptions import UpstreamError
from pricepipe.keys import Keys
from pricepipe.upstream import HttpOptions
from pricepipe.workers import jobqueue, jobs
from pricepipe.workers.backfill import CANDLE_ENTRY, run_venue_backfill, venue_entry_id
from tests.publisher.fake_upstream import FakeUpstream

Spawn = Callable[..., subprocess.Popen[bytes]]

US_PER_DAY = 86_400_000_000
#: Yesterday, 00:00 UTC.
DAY_US = (now_us() // US_PER_DAY - 1) * US_PER_DAY
STEP_MS = 40_000  # a trade every 40 s: 2160 a day

NO_RETRIES = HttpOptions(retries=0, connect_timeout_s=1.0, read_timeout_s=5.0)


@pytest.fixture
def venue_rest() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.close()


def tape(fake: FakeUpstream, symbol: str, start_us: int, end_us: int, step_ms: int) -> None:
    """Trades every ``step_ms`` over ``[start_us, end_us)``, and some around it."""
    for ts_ms in range((start_us - 600_000_000) // 1000, (end_us + 600_000_000) // 1000,
                       step_ms):
        fake.add_trade(symbol, 100.0 + (ts_ms // step_ms) % 50 / 10, ts_ms,
                       qty=0.5, buyer_maker=bool(ts_ms // step_ms % 2))


def ids_in(fake: FakeUpstream, symbol: str, start_us: int, end_us: int, *,
           served: bool = True) -> list[int]:
    with fake.lock:
        trades = fake.served(symbol) if served else fake.trades[symbol]
        return [t.trade_id for t in trades if start_us <= t.ts_ms * 1000 < end_us]


def backfill(spawn: Spawn, args: list[str], env: dict[str, str]) -> str:
    """The output of ``pricepipe <args>``, which must exit 0."""
    proc = spawn(args, env=env)
    out: str = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    return out


def stored(db: Any, symbol: str) -> list[tuple[int, str]]:
    with db.cursor() as cur:
        cur.execute("SELECT trade_id::bigint, source FROM trades WHERE symbol = %s"
                    " ORDER BY trade_id::bigint", (symbol,))
        return list(cur.fetchall())


def bars(db: Any, symbol: str) -> tuple[int, int, int]:
    """(bars, trades counted in them, bars from candles)."""
    with db.cursor() as cur:
        cur.execute("SELECT count(*), coalesce(sum(trade_count), 0),"
                    " count(*) FILTER (WHERE open_entry = %s) FROM bars_1m WHERE symbol = %s",
                    (CANDLE_ENTRY, symbol))
        count, trades, candles = cur.fetchone()
    return int(count), int(trades), int(candles)


def test_a_day_of_binance_trades_loads_once_however_often_it_runs(
        spawn: Spawn, pipeline_env: dict[str, str], db: Any, venue_rest: FakeUpstream) -> None:
    tape(venue_rest, "BTCUSDT", DAY_US, DAY_US + US_PER_DAY, STEP_MS)
    expected = ids_in(venue_rest, "BTCUSDT", DAY_US, DAY_US + US_PER_DAY)
    assert len(expected) == 2160
    args = ["backfill", "--source", "binance", "BTCUSDT", "--start", format_us(DAY_US),
            "--end", format_us(DAY_US + US_PER_DAY), "--base-url", venue_rest.url]
    out = backfill(spawn, args, pipeline_env)
    assert "backfilled BINANCE:BTCUSDT: 2160 trade(s) from backfill-binance, 2160 new" in out
    assert "trade/s" in out  # the progress bar
    assert stored(db, "BINANCE:BTCUSDT") == [(i, "backfill-binance") for i in expected]
    assert bars(db, "BINANCE:BTCUSDT") == (1440, 2160, 0)  # every minute traded: no candles
    pages = len(venue_rest.requests_to("fromId="))
    assert pages == 3  # 1000 a page
    out = backfill(spawn, args, pipeline_env)
    assert "0 trade(s) from backfill-binance, 0 new" in out and "resumed" in out, out
    assert len(venue_rest.requests_to("fromId=")) == pages  # nothing fetched again
    assert stored(db, "BINANCE:BTCUSDT") == [(i, "backfill-binance") for i in expected]
    assert bars(db, "BINANCE:BTCUSDT") == (1440, 2160, 0)


def test_an_interrupted_backfill_resumes_where_it_stopped(
        database_url: str, db: Any, venue_rest: FakeUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICEPIPE_BINANCE_BASE_URL", venue_rest.url)
    tape(venue_rest, "BTCUSDT", DAY_US, DAY_US + US_PER_DAY, STEP_MS)
    expected = ids_in(venue_rest, "BTCUSDT", DAY_US, DAY_US + US_PER_DAY)
    # Three requests find the range's ids, two pages come, then the venue fails.
    venue_rest.script("ok", "ok", "ok", "ok", "ok", "500")
    with pytest.raises(UpstreamError):
        run_venue_backfill(database_url, "binance", "BINANCE:BTCUSDT", "BTCUSDT", DAY_US,
                           DAY_US + US_PER_DAY, http=NO_RETRIES)
    assert [i for i, _ in stored(db, "BINANCE:BTCUSDT")] == expected[:2000]
    done = run_venue_backfill(database_url, "binance", "BINANCE:BTCUSDT", "BTCUSDT", DAY_US,
                              DAY_US + US_PER_DAY, http=NO_RETRIES)
    assert done.resumed_at == expected[2000] and (done.trades, done.inserted) == (160, 160)
    assert [i for i, _ in stored(db, "BINANCE:BTCUSDT")] == expected


def test_coinbase_trades_by_bisection_and_candles_where_trades_are_not_served(
        spawn: Spawn, pipeline_env: dict[str, str], db: Any, venue_rest: FakeUpstream) -> None:
    start, end = DAY_US + 3_600_000_000, DAY_US + 4 * 3_600_000_000  # three hours
    tape(venue_rest, "BTC-USD", start, end, 20_000)  # three trades a minute
    everything = ids_in(venue_rest, "BTC-USD", start, end, served=False)
    # The venue no longer serves the first hour's trades.
    venue_rest.horizon["BTC-USD"] = ids_in(venue_rest, "BTC-USD", start + 3_600_000_000,
                                           end, served=False)[0]
    served = ids_in(venue_rest, "BTC-USD", start, end)
    assert len(everything) == 540 and len(served) == 360
    args = ["backfill", "--source", "coinbase", "BTC-USD", "--start", format_us(start),
            "--end", format_us(end), "--base-url", venue_rest.url, "--quiet"]
    out = backfill(spawn, args, pipeline_env)
    assert "360 trade(s) from backfill-coinbase, 360 new, 60 bar(s) from candles" in out, out
    assert [i for i, _ in stored(db, "COINBASE:BTC-USD")] == served
    # Two hours of bars from trades, the first hour's from the venue's candles.
    assert bars(db, "COINBASE:BTC-USD") == (180, 360 + 60, 60)
    with db.cursor() as cur:
        cur.execute("SELECT volume, close_ts - open_ts FROM bars_1m WHERE symbol = %s"
                    " AND open_entry = %s ORDER BY bucket LIMIT 1",
                    ("COINBASE:BTC-USD", CANDLE_ENTRY))
        volume, span = cur.fetchone()
    assert volume == pytest.approx(1.5) and span.total_seconds() == pytest.approx(60, abs=1e-5)
    probes = len(venue_rest.requests_to("limit=1&"))
    assert 0 < probes < 40  # bisection, not a walk through every page
    out = backfill(spawn, args, pipeline_env)
    assert re.search(r"0 trade\(s\) from backfill-coinbase, 0 new, 0 bar\(s\)", out), out
    assert bars(db, "COINBASE:BTC-USD") == (180, 420, 60)
    # Served again (a mirror, a venue that reaches further back): the first
    # hour's trades replace the bars made from candles.
    venue_rest.horizon.clear()
    out = backfill(spawn, args, pipeline_env)
    assert "180 trade(s) from backfill-coinbase, 180 new" in out and "resumed" in out, out
    assert [i for i, _ in stored(db, "COINBASE:BTC-USD")] == everything
    assert bars(db, "COINBASE:BTC-USD") == (180, 540, 0)


def bar_rows(db: Any, symbol: str) -> dict[int, tuple[Any, ...]]:
    """bucket -> (open, high, low, close, volume, notional, trade_count, open_ts,
    open_entry, close_ts, close_entry), times in epoch microseconds."""
    with db.cursor() as cur:
        cur.execute("SELECT bucket, open, high, low, close, volume, notional, trade_count,"
                    " open_ts, open_entry, close_ts, close_entry FROM bars_1m"
                    " WHERE symbol = %s", (symbol,))
        return {datetime_to_us(b): (o, h, lo, c, v, x, n, datetime_to_us(ot), oe,
                                    datetime_to_us(ct), ce)
                for b, o, h, lo, c, v, x, n, ot, oe, ct, ce in cur.fetchall()}


def test_binance_trades_after_the_horizon_and_klines_for_the_minutes_before(
        spawn: Spawn, pipeline_env: dict[str, str], db: Any, venue_rest: FakeUpstream) -> None:
    start, end = DAY_US + 3_600_000_000, DAY_US + 4 * 3_600_000_000  # three hours
    cut = start + 3_600_000_000
    tape(venue_rest, "BTCUSDT", start, end, 20_000)  # three trades a minute
    everything = ids_in(venue_rest, "BTCUSDT", start, end, served=False)
    # aggTrades no longer serves the first hour; klines still cover it. The
    # horizon falls on a minute boundary, so every minute is either all
    # candle or all trades.
    venue_rest.horizon["BTCUSDT"] = ids_in(venue_rest, "BTCUSDT", cut, end, served=False)[0]
    served = ids_in(venue_rest, "BTCUSDT", start, end)
    assert len(everything) == 540 and len(served) == 360
    # The venue's own answer, read by the documented layout ([open time, open,
    # high, low, close, volume, close time, quote volume, trades, ...]), so
    # the expectation does not go through the parser under test.
    with venue_rest.lock:
        status, klines = venue_rest.answer("/api/v3/klines", {
            "symbol": ["BTCUSDT"], "interval": ["1m"], "startTime": [str(start // 1000)],
            "endTime": [str(cut // 1000 - 1)], "limit": ["1000"]}, {})
        tail = [t for t in venue_rest.served("BTCUSDT") if cut <= t.ts_ms * 1000 < end]
    assert status == 200 and len(klines) == 60
    args = ["backfill", "--source", "binance", "BTCUSDT", "--start", format_us(start),
            "--end", format_us(end), "--base-url", venue_rest.url, "--quiet"]
    out = backfill(spawn, args, pipeline_env)
    assert "360 trade(s) from backfill-binance, 360 new, 60 bar(s) from candles" in out, out
    assert [i for i, _ in stored(db, "BINANCE:BTCUSDT")] == served
    # Klines carry the trade count, so every trade of the three hours is
    # counted once: 180 by the candles, 360 by the stored trades.
    assert bars(db, "BINANCE:BTCUSDT") == (180, 540, 60)
    rows = bar_rows(db, "BINANCE:BTCUSDT")
    assert sum(row[4] for row in rows.values()) == pytest.approx(0.5 * 540)
    for k in klines:
        bucket = k[0] * 1000
        # A candle bar has no trade behind it: marked by CANDLE_ENTRY, spanning
        # its whole minute; its notional is the kline's quote volume, so its
        # VWAP is exact (not the typical price's estimate Coinbase gets).
        assert rows[bucket] == (
            pytest.approx(float(k[1])), pytest.approx(float(k[2])), pytest.approx(float(k[3])),
            pytest.approx(float(k[4])), pytest.approx(float(k[5])),
            pytest.approx(float(k[7])), k[8], bucket,
            CANDLE_ENTRY, bucket + 59_999_999, CANDLE_ENTRY), bucket
        assert k[6] * 1000 == bucket + 59_999_000  # the kline is that same minute
    by_minute: dict[int, list[Any]] = {}
    for t in tail:
        by_minute.setdefault(t.ts_ms * 1000 - t.ts_ms * 1000 % 60_000_000, []).append(t)
    assert len(by_minute) == 120 and set(rows) == {k[0] * 1000 for k in klines} | set(by_minute)
    for bucket, group in by_minute.items():
        prices = [t.price for t in group]
        assert rows[bucket] == (
            pytest.approx(prices[0]), pytest.approx(max(prices)), pytest.approx(min(prices)),
            pytest.approx(prices[-1]), pytest.approx(sum(t.qty for t in group)),
            pytest.approx(sum(t.qty * t.price for t in group)), len(group),
            group[0].ts_ms * 1000, venue_entry_id(group[0].trade_id), group[-1].ts_ms * 1000,
            venue_entry_id(group[-1].trade_id)), bucket
    pages = len(venue_rest.requests_to("fromId="))
    out = backfill(spawn, args, pipeline_env)
    assert re.search(r"0 trade\(s\) from backfill-binance, 0 new, 0 bar\(s\) from candles,"
                     r" resumed", out), out
    assert len(venue_rest.requests_to("fromId=")) == pages  # no trade fetched again
    assert [i for i, _ in stored(db, "BINANCE:BTCUSDT")] == served
    assert bar_rows(db, "BINANCE:BTCUSDT") == rows


def test_a_backfill_refuses_a_symbol_fed_with_other_trade_ids(
        spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys, db: Any,
        venue_rest: FakeUpstream) -> None:
    tape(venue_rest, "BTCUSDT", DAY_US, DAY_US + 3_600_000_000, 60_000)
    # The Binance poller's trade ids are not aggregate trade ids.
    assert sources.claim(r, keys, ["BINANCE:BTCUSDT"], "binance") == {}
    args = ["backfill", "--source", "binance", "BTCUSDT", "--start", format_us(DAY_US),
            "--end", format_us(DAY_US + 3_600_000_000), "--base-url", venue_rest.url,
            "--quiet"]
    refused = spawn(args, env=pipeline_env)
    out = refused.communicate(timeout=120)[0].decode()
    assert refused.returncode == 2 and "published from binance" in out, out
    assert stored(db, "BINANCE:BTCUSDT") == []
    # The websocket feed shares the backfill's ids: fine.
    assert sources.claim(r, keys, ["BINANCE:BTCUSDT"], "binance-ws", force=True)
    out = backfill(spawn, args, pipeline_env)
    assert "60 new" in out, out


def test_a_venue_backfill_runs_as_an_rq_job(
        spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys, db: Any,
        database_url: str, redis_url: str, venue_rest: FakeUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tape(venue_rest, "ETH-USD", DAY_US, DAY_US + 1_800_000_000, 30_000)
    expected = ids_in(venue_rest, "ETH-USD", DAY_US, DAY_US + 1_800_000_000)
    enqueue = spawn(["backfill", "--source", "coinbase", "ETH-USD", "--start", format_us(DAY_US),
                     "--end", format_us(DAY_US + 1_800_000_000), "--enqueue"], env=pipeline_env)
    out = enqueue.communicate(timeout=60)[0].decode()
    assert enqueue.returncode == 0 and "enqueued backfill of COINBASE:ETH-USD" in out, out
    # The job reads its settings from the worker's environment.
    for name, value in (("PRICEPIPE_DATABASE_URL", database_url),
                        ("PRICEPIPE_REDIS_URL", redis_url),
                        ("PRICEPIPE_COINBASE_BASE_URL", venue_rest.url)):
        monkeypatch.setenv(name, value)
    queue = jobqueue.queue(keys.rq_queue(jobs.BULK), r)
    (job,) = queue.jobs
    SimpleWorker([queue], connection=r, **jobqueue.WORKER_OPTIONS).work(burst=True)
    job.refresh()
    result = job.latest_result()
    assert job.is_finished, result.exc_string if result is not None else job
    returned = job.return_value()
    assert returned is not None and returned["inserted"] == len(expected) == 60
    assert [i for i, _ in stored(db, "COINBASE:ETH-USD")] == expected
