"""The GBM publisher against a real Redis: bulk, real time, stop signals, and
the published trades and quotes as the model makes them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from pricepipe.events import MIN_TS_US, Quote, Side, Trade
from pricepipe.keys import PERSIST_GROUP, PERSISTED, Keys
from pricepipe.publisher.catalog import parse_symbols
from pricepipe.publisher.generator import GbmGenerator
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.simulator import Simulator
from pricepipe.publisher.sink import StreamSink
from pricepipe.stop import StopRequest
from pricepipe.streams import known_symbols
from tests.helpers import wait_until

from .helpers import read_events, stream_length

Spawn = Callable[..., subprocess.Popen[bytes]]


def test_bulk_publishes_exactly_n_valid_events(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    proc = spawn(["publish", "--source", "gbm", "--symbols", "AAPL,MSFT,BTC-USD",
                  "--count", "1001", "--seed", "42", "--batch-size", "100",
                  "--spread-bps", "3"], env=pipeline_env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert known_symbols(r, keys) == ["AAPL", "BTC-USD", "MSFT"]
    counts = {}
    trades = 0
    for symbol in ("AAPL", "MSFT", "BTC-USD"):
        events = read_events(r, keys, symbol)
        counts[symbol] = len(events)
        assert {e.symbol for e in events} == {symbol}
        assert {e.source for e in events} == {"gbm"}
        stamps = [e.ts_us for e in events]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        # In Redis as generated: quotes first, every trade at the last quote's
        # bid or ask, on the side that says which.
        assert isinstance(events[0], Quote)
        book = events[0]
        for event in events:
            if isinstance(event, Quote):
                assert event.bid is not None and event.ask is not None
                assert event.bid < event.ask
                assert event.spread / event.mid == pytest.approx(3 / 10_000)  # type: ignore
                book = event
            else:
                assert isinstance(event, Trade)
                trades += 1
                assert event.price == (book.ask if event.side is Side.BUY else book.bid)
                assert event.size is not None and event.size > 0
        # Registered before the first XADD: the persist groups see everything.
        for channel in PERSISTED:
            group = r.xinfo_groups(keys.stream(symbol, channel))[0]
            assert group["name"] == PERSIST_GROUP.encode()
            assert group["last-delivered-id"] == b"0-0"
    assert sum(counts.values()) == 1001
    assert counts == {"AAPL": 334, "MSFT": 334, "BTC-USD": 333}
    assert 0 < trades < 1001 - 3
    assert b"done: published 1001 events" in out
    assert f"{trades} trades, {1001 - trades} quotes".encode() in out


def test_same_seed_publishes_same_events(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    def events() -> list[Trade | Quote]:
        # Batches of 2 periods: each made (in a thread) while the one before
        # is sent, still in the seed's order.
        proc = spawn(["publish", "--symbols", "2", "--count", "40", "--seed", "7",
                      "--params", "AAPL:10:0.1:0.9", "--quotes-per-trade", "1",
                      "--batch-size", "4"],
                     env=pipeline_env)
        assert proc.wait(timeout=60) == 0
        # Event times are the wall clock; everything else is the seed's.
        out = [replace(e, ts_us=MIN_TS_US) for e in read_events(r, keys, "AAPL")]
        r.flushall()
        return out

    first, second = events(), events()
    assert len(first) == 20 and first == second
    assert {type(e) for e in first} == {Trade, Quote}
    quote = next(e for e in first if isinstance(e, Quote))
    assert quote.bid is not None and abs(quote.bid - 10.0) < 10.0  # from the --params price


def test_sigterm_finishes_the_batch_and_exits_zero(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    proc = spawn(["publish", "--symbols", "3", "--rate", "20"], env=pipeline_env)
    # Until events are published (fails at once if the publisher exits instead).
    wait_until(lambda: stream_length(r, keys, "GOOG") >= 3, timeout_s=30, proc=proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    lengths = [stream_length(r, keys, s) for s in ("AAPL", "MSFT", "GOOG")]
    # Whole periods only: every symbol got the same number of events.
    assert len(set(lengths)) == 1, lengths
    assert b"done: published" in out


def _bulk_stopped_after_one_batch(r: Any, keys: Keys, gen: GbmGenerator,
                                  caplog: pytest.LogCaptureFixture) -> int:
    """``run_bulk(100)`` of ``gen`` in batches of 20 events, stopped (as
    SIGTERM would) right after the first batch went out, while the next
    one is being made; returns how many were appended."""
    stop = StopRequest()
    metrics = PublisherMetrics()
    sink = StreamSink(r, keys, stop=stop, metrics=metrics)
    publish = sink.publish

    def publish_then_stop(events: Any) -> int:
        appended = publish(events)
        stop.set()
        return appended

    sink.publish = publish_then_stop  # type: ignore[method-assign]
    sim = Simulator(gen, sink, stop=stop, metrics=metrics, batch_size=20)
    with caplog.at_level("INFO", logger="pricepipe.publisher.simulator"):
        return sim.run_bulk(100)


def test_a_stop_in_bulk_says_what_it_made_and_did_not_publish(
    r: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    gen = GbmGenerator(parse_symbols("AAPL,MSFT"), seed=3)
    # One batch of 10 periods of both symbols went out; the next was made.
    assert _bulk_stopped_after_one_batch(r, keys, gen, caplog) == 20
    assert stream_length(r, keys, "AAPL") + stream_length(r, keys, "MSFT") == 20
    assert "stopped: 20 generated events ahead were not published" in caplog.text
    assert "done: published 20 events" in caplog.text


def test_a_stop_in_bulk_reports_a_batch_that_failed_ahead(
    r: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    class FailingSecond(GbmGenerator):
        calls = 0

        def events(self, ts_us: Any) -> Any:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("generator broke")
            return super().events(ts_us)

    gen = FailingSecond(parse_symbols("AAPL,MSFT"), seed=3)
    # The stop still ends the run cleanly, and says what became of the batch.
    assert _bulk_stopped_after_one_batch(r, keys, gen, caplog) == 20
    assert "the batch generated ahead failed (generator broke)" in caplog.text


class FakeTime:
    """A clock that advances only when the publisher sleeps."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def monotonic(self) -> float:
        return self.now_s

    def wall_us(self) -> int:
        return 1_700_000_000_000_000 + int(self.now_s * 1e6)


class SleepingStop(StopRequest):
    """Stops once the fake clock passes ``until_s``; ``wait`` advances it."""

    def __init__(self, clock: FakeTime, until_s: float) -> None:
        super().__init__()
        self.clock = clock
        self.until_s = until_s

    def wait(self, timeout_s: float) -> bool:
        self.clock.now_s += max(timeout_s, 0.0)
        if self.clock.now_s >= self.until_s:
            self.set()
        return self.requested


def test_realtime_rate_is_kept(r: Any, keys: Keys) -> None:
    clock = FakeTime()
    stop = SleepingStop(clock, until_s=clock.now_s + 30.0)
    metrics = PublisherMetrics()
    sink = StreamSink(r, keys, stop=stop, metrics=metrics, clock=clock.monotonic)
    gen = GbmGenerator(parse_symbols("AAPL,MSFT"), seed=1)
    sim = Simulator(gen, sink, stop=stop, metrics=metrics, clock=clock.monotonic,
                    wall_us=clock.wall_us)
    appended = sim.run_realtime(4.0)
    # 30 s at 4 periods per second (t=0 included, t=30 is after the stop),
    # two symbols per period.
    assert appended == 2 * 30 * 4
    events = read_events(r, keys, "AAPL")
    assert len(events) == appended // 2
    stamps = [e.ts_us for e in events]
    gaps = {b - a for a, b in zip(stamps, stamps[1:], strict=False)}
    assert gaps == {250_000}  # event times on the schedule, no drift


def test_realtime_batches_are_held_for_the_batch_interval(r: Any, keys: Keys) -> None:
    clock = FakeTime()
    stop = SleepingStop(clock, until_s=clock.now_s + 10.0)
    metrics = PublisherMetrics()
    sink = StreamSink(r, keys, stop=stop, metrics=metrics, clock=clock.monotonic)
    batches: list[int] = []
    publish = sink.publish
    sink.publish = lambda events: batches.append(len(events)) or publish(events)  # type: ignore
    gen = GbmGenerator(parse_symbols("AAPL"), seed=1)
    sim = Simulator(gen, sink, stop=stop, metrics=metrics, clock=clock.monotonic,
                    wall_us=clock.wall_us, batch_interval_s=0.5)
    appended = sim.run_realtime(100.0)
    # 10 s at 100 periods per second, in batches every 0.5 s instead of 1,000
    # (the stop may come while the last half second waits).
    assert appended == sum(batches) and 950 <= appended <= 1001
    assert len(batches) <= 21 and max(batches) <= 51
    stamps = [e.ts_us for e in read_events(r, keys, "AAPL")]
    # Event times stay on the schedule (to the microsecond: float rounding).
    assert {b - a for a, b in zip(stamps, stamps[1:], strict=False)} <= {9_999, 10_000, 10_001}


def test_realtime_rate_roughly_in_wall_clock(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    proc = spawn(["publish", "--symbols", "1", "--rate", "50"], env=pipeline_env)
    wait_until(lambda: stream_length(r, keys, "AAPL") > 0, timeout_s=30, proc=proc)
    started = time.monotonic()
    first = stream_length(r, keys, "AAPL")
    time.sleep(1.0)
    published = stream_length(r, keys, "AAPL") - first
    elapsed = time.monotonic() - started
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # Generous bounds: never more than the schedule allows (+ one batch),
    # and not stalled. No tight timing assertion on a shared machine.
    assert 5 <= published <= 50 * elapsed + 50


def test_python_m_publisher_is_pricepipe_publish(
    pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    proc = subprocess.run([sys.executable, "-m", "pricepipe.publisher", "--symbols", "1",
                           "--count", "5"], env=pipeline_env, capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert stream_length(r, keys, "AAPL") == 5


def test_second_signal_exits_at_once(pipeline_env: dict[str, str]) -> None:
    code = (
        "import os, signal, time\n"
        "from pricepipe.stop import StopRequest\n"
        "stop = StopRequest().install()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('first:', stop.requested, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
        "print('not reached', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=pipeline_env, capture_output=True,
                          timeout=60, check=False)
    assert proc.stdout == b"first: True\n"
    assert proc.returncode == 128 + signal.SIGTERM
