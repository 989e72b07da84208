"""The GBM publisher against a real Redis: bulk, real time, stop signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pricepipe.publisher.catalog import parse_symbols
from pricepipe.publisher.generator import GbmGenerator
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.simulator import Simulator
from pricepipe.publisher.sink import StreamSink

from pricepipe.codec import decode_fields
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.stop import StopRequest
from pricepipe.streams import known_symbols

Spawn = Callable[..., subprocess.Popen[bytes]]


def stream_entries(r: Any, keys: Keys, symbol: str) -> list[Any]:
    return r.xrange(keys.stream(symbol))


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_bulk_publishes_exactly_n_valid_entries(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    proc = spawn(["publish", "--source", "gbm", "--symbols", "AAPL,MSFT,BTC-USD",
                  "--count", "1001", "--seed", "42", "--batch-size", "100"], env=pipeline_env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert known_symbols(r, keys) == ["AAPL", "BTC-USD", "MSFT"]
    counts = {}
    for symbol in ("AAPL", "MSFT", "BTC-USD"):
        entries = stream_entries(r, keys, symbol)
        counts[symbol] = len(entries)
        ticks = [decode_fields(fields) for _, fields in entries]
        assert {t.symbol for t in ticks} == {symbol}
        assert {t.source for t in ticks} == {"gbm"}
        assert all(t.price > 0 for t in ticks)
        stamps = [t.ts_us for t in ticks]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        # Registered before the first XADD: the persist group sees everything.
        group = r.xinfo_groups(keys.stream(symbol))[0]
        assert group["name"] == PERSIST_GROUP.encode() and group["last-delivered-id"] == b"0-0"
    assert sum(counts.values()) == 1001
    assert counts == {"AAPL": 334, "MSFT": 334, "BTC-USD": 333}
    assert b"done: published 1001 ticks" in out


def test_same_seed_publishes_same_prices(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    def prices() -> list[float]:
        proc = spawn(["publish", "--symbols", "2", "--count", "20", "--seed", "7",
                      "--params", "AAPL:10:0.1:0.9"], env=pipeline_env)
        assert proc.wait(timeout=60) == 0
        out = [decode_fields(f).price for _, f in stream_entries(r, keys, "AAPL")]
        r.flushall()
        return out

    first, second = prices(), prices()
    assert len(first) == 10 and first == second
    assert abs(first[0] - 10.0) < 10.0  # started from the --params price


def test_sigterm_finishes_the_batch_and_exits_zero(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    proc = spawn(["publish", "--symbols", "3", "--rate", "20"], env=pipeline_env)
    assert wait_for(lambda: r.exists(keys.stream("GOOG")) and
                    r.xlen(keys.stream("GOOG")) >= 3), "no ticks published"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    lengths = [r.xlen(keys.stream(s)) for s in ("AAPL", "MSFT", "GOOG")]
    # Whole periods only: every symbol got the same number of ticks.
    assert len(set(lengths)) == 1, lengths
    assert b"done: published" in out


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
    entries = stream_entries(r, keys, "AAPL")
    assert len(entries) == appended // 2
    stamps = [decode_fields(f).ts_us for _, f in entries]
    gaps = {b - a for a, b in zip(stamps, stamps[1:], strict=False)}
    assert gaps == {250_000}  # event times on the schedule, no drift


def test_realtime_batches_are_held_for_the_batch_interval(r: Any, keys: Keys) -> None:
    clock = FakeTime()
    stop = SleepingStop(clock, until_s=clock.now_s + 10.0)
    metrics = PublisherMetrics()
    sink = StreamSink(r, keys, stop=stop, metrics=metrics, clock=clock.monotonic)
    batches: list[int] = []
    publish = sink.publish
    sink.publish = lambda ticks: batches.append(len(ticks)) or publish(ticks)  # type: ignore
    gen = GbmGenerator(parse_symbols("AAPL"), seed=1)
    sim = Simulator(gen, sink, stop=stop, metrics=metrics, clock=clock.monotonic,
                    wall_us=clock.wall_us, batch_interval_s=0.5)
    appended = sim.run_realtime(100.0)
    # 10 s at 100 periods per second, in batches every 0.5 s instead of 1,000
    # (the stop may come while the last half second waits).
    assert appended == sum(batches) and 950 <= appended <= 1001
    assert len(batches) <= 21 and max(batches) <= 51
    stamps = [decode_fields(f).ts_us for _, f in stream_entries(r, keys, "AAPL")]
    # Event times stay on the schedule (to the microsecond: float rounding).
    assert {b - a for a, b in zip(stamps, stamps[1:], strict=False)} <= {9_999, 10_000, 10_001}


def test_realtime_rate_roughly_in_wall_clock(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys
) -> None:
    proc = spawn(["publish", "--symbols", "1", "--rate", "50"], env=pipeline_env)
    assert wait_for(lambda: r.exists(keys.stream("AAPL")) > 0)
    started = time.monotonic()
    first = r.xlen(keys.stream("AAPL"))
    time.sleep(1.0)
    published = r.xlen(keys.stream("AAPL")) - first
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
    assert r.xlen(keys.stream("AAPL")) == 5


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
