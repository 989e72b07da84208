"""Client library resume after SIGKILL: a consumer-group process is killed
mid-stream and restarted under the same name; after acks, every tick was
handled, none was lost, and a tick seen twice was flagged as redelivered."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from pricepipe.keys import Keys
from tests.helpers import wait_until

from .helpers import publish

SCRIPT = Path(__file__).with_name("group_consumer.py")


def _ledger(path: Path) -> list[tuple[str, str, bool]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        symbol, entry_id, redelivered = line.split()
        out.append((symbol, entry_id, redelivered == "1"))
    return out


def test_group_consumer_killed_and_restarted_sees_every_tick(
    tmp_path: Path, pipeline_env: dict[str, str], r: redis.Redis, keys: Keys
) -> None:
    symbols = ["AAPL", "MSFT"]
    # Per stream (symbol/channel, as the ledger names them): its entry IDs in order.
    published = {f"{s}/{kind}": publish(r, keys, s, 75, start=i * 1000, kind=kind)
                 for i, s in enumerate(symbols) for kind in ("trades", "quotes")}
    ledger = tmp_path / "ledger.txt"
    env = {**pipeline_env, "PYTHONPATH": str(Path(__file__).parents[3])}
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(ledger), *symbols], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        first = start()
        wait_until(lambda: len(_ledger(ledger)) >= 60, proc=first)
        first.send_signal(signal.SIGKILL)
        first.wait()
        seen_before = len(_ledger(ledger))
        second = start()
        # Entry IDs are unique per stream only: two streams may hold the
        # same ID, so an event is (stream, entry ID).
        everything = {(s, e) for s, ids in published.items() for e in ids}
        # Done when every tick is in the ledger and acknowledged.
        wait_until(lambda: {(s, e) for s, e, _ in _ledger(ledger)} >= everything
                   and _pending(r, keys, symbols) == 0, proc=second)
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()

    lines = _ledger(ledger)
    assert seen_before < len(lines)
    for stream in published:
        # Per stream, first sightings are exactly the stream, in order: no
        # gap, nothing invented.
        firsts: list[str] = []
        for s, entry_id, _ in lines:
            if s == stream and entry_id not in firsts:
                firsts.append(entry_id)
        assert firsts == published[stream]
    # A tick handled twice is one the crash left unacknowledged, and the
    # second delivery says so; at most one read batch (count=10) per stream.
    seen: set[tuple[str, str]] = set()
    duplicates = []
    for symbol, entry_id, redelivered in lines:
        if (symbol, entry_id) in seen:
            assert redelivered, (symbol, entry_id)
            duplicates.append((symbol, entry_id))
        seen.add((symbol, entry_id))
    assert len(duplicates) <= len(published) * 10
    assert _pending(r, keys, symbols) == 0


def _pending(r: redis.Redis, keys: Keys, symbols: list[str]) -> int:
    total = 0
    for symbol in symbols:
        for stream in (keys.trades(symbol), keys.quotes(symbol)):
            summary: Any = r.xpending(stream, "crash-test")
            total += int(summary["pending"])
    return total
