"""The ``pricepipe up`` status line counts from the persist group's own
bookkeeping, also after Redis reloaded its AOF (when Redis 7.0 no longer
knows the group's lag)."""

from __future__ import annotations

from typing import Any

from pricepipe import streams
from pricepipe.embedded import RedisServer
from pricepipe.events import Quote, Trade
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.supervisor import pipeline_counts

TS = 1_767_323_045_000_000


def test_counts_survive_an_aof_reload(redis_server: RedisServer, r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["AAPL"])
    streams.append_events(r, keys, [Trade("AAPL", TS + i, 1.0 + i, 1.0) for i in range(100)])
    streams.append_events(r, keys, [Quote("AAPL", TS + i, 1.0, 1.0, 2.0, 1.0)
                                    for i in range(20)])
    stream = keys.trades("AAPL")
    got = r.xreadgroup(PERSIST_GROUP, "c1", {stream: ">"}, count=60)
    r.xack(stream, PERSIST_GROUP, *[eid for eid, _ in got[0][1]][:50])
    # 120 published (both streams), 50 trades acknowledged, 10 pending, 60 never delivered.
    assert pipeline_counts(r, keys, ["AAPL"]) == (120, 50, 70)
    redis_server.restart()
    r.connection_pool.disconnect()
    assert pipeline_counts(r, keys, ["AAPL"]) == (120, 50, 70)


def test_postgres_data_goes_where_its_user_can_reach(tmp_path: Any) -> None:
    import os
    from pathlib import Path

    from pricepipe.supervisor import postgres_dir

    private = Path(tmp_path) / "home"  # pytest's tmp_path is 0700: like /root
    private.mkdir(mode=0o700)
    chosen = postgres_dir(private / ".pricepipe")
    if os.geteuid() != 0:
        assert chosen == private / ".pricepipe" / "postgres"
        return
    try:
        assert str(chosen).startswith("/var/tmp/pricepipe-")
        assert chosen == postgres_dir(private / ".pricepipe")  # stable: the next run finds it
    finally:
        chosen.parent.rmdir()
    open_dir = Path("/tmp") / f"pp-open-{os.getpid()}"
    open_dir.mkdir(mode=0o755, exist_ok=True)
    try:
        assert postgres_dir(open_dir) == open_dir / "postgres"
    finally:
        open_dir.rmdir()


# --- the metadata refresh of `up` --------------------------------------------------------------


def test_the_first_refresh_waits_for_trades_of_every_symbol_then_one_a_minute() -> None:
    from pricepipe.supervisor import MetadataRefresh

    refresh = MetadataRefresh(started=100.0, interval_s=60.0)
    assert not refresh.due(101.0, every_symbol_has_trades=False, previous_done=True)
    assert refresh.due(103.0, every_symbol_has_trades=True, previous_done=True)
    # No trades at all (a symbol that never trades): a minute after start anyway.
    assert refresh.due(160.0, every_symbol_has_trades=False, previous_done=True)
    refresh.enqueued(103.0)
    assert not refresh.due(162.0, every_symbol_has_trades=True, previous_done=True)
    assert refresh.due(163.0, every_symbol_has_trades=True, previous_done=True)
    # Never a second one while the first waits or runs (a worker down).
    assert not refresh.due(500.0, every_symbol_has_trades=True, previous_done=False)


def test_every_symbol_has_trades_once_the_group_acknowledged_some(r: Any, keys: Keys) -> None:
    from pricepipe.supervisor import every_symbol_has_trades

    streams.register_symbols(r, keys, ["AAPL", "MSFT"])
    for symbol in ("AAPL", "MSFT"):
        streams.append_events(r, keys, [Trade(symbol, TS + i, 1.0, 1.0) for i in range(3)])
    # Quotes alone give no band: only trades count.
    streams.append_events(r, keys, [Quote("GOOG", TS, 1.0, 1.0, 2.0, 1.0)])
    assert not every_symbol_has_trades(r, keys, [])
    assert not every_symbol_has_trades(r, keys, ["AAPL", "MSFT"])
    for symbol, expected in (("AAPL", False), ("MSFT", True)):
        stream = keys.trades(symbol)
        got = r.xreadgroup(PERSIST_GROUP, "c1", {stream: ">"}, count=1)
        r.xack(stream, PERSIST_GROUP, got[0][1][0][0])
        assert every_symbol_has_trades(r, keys, ["AAPL", "MSFT"]) is expected
    assert not every_symbol_has_trades(r, keys, ["AAPL", "MSFT", "GOOG"])


def test_the_refresh_is_the_schedules_metadata_job(r: Any, keys: Keys) -> None:
    from pricepipe.cli import enqueue_metadata_refresh
    from pricepipe.supervisor import job_done
    from pricepipe.workers.jobqueue import check_allowed

    assert job_done(None)
    job = enqueue_metadata_refresh(r, keys)
    assert job.func_name == "pricepipe.publisher.metadata.refresh_instruments"
    check_allowed(job.func_name)  # a pricepipe worker runs it
    assert job.origin == keys.rq_queue("maintenance")
    assert not job_done(job)  # queued
    job.cancel()
    assert job_done(job)
    job.delete()
    assert job_done(job)  # gone


# --- stopping a child: nothing outlives it ------------------------------------------------------

#: A child that ignores SIGTERM (an rq worker waiting for a long job) and
#: runs a grandchild in a process group of its own (rq's work horse) that
#: ignores it too. It prints each SIGTERM it gets.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("term", flush=True))
horse = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                          "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"],
                         process_group=0)
print("horse", horse.pid, flush=True)
while True:
    time.sleep(1)
"""


def _wait_for_line(path: Any, prefix: str, timeout_s: float = 30.0) -> str:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return str(line)
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} line in {path}: {path.read_text()!r}")


def test_a_stubborn_child_is_asked_twice_then_killed_with_its_work_horse(tmp_path: Any) -> None:
    import os
    import signal
    import sys
    import time

    from pricepipe.supervisor import Child, process_parents

    log_path = tmp_path / "stubborn.log"
    child = Child("stubborn", [STUBBORN], dict(os.environ), log_path,
                  command_prefix=(sys.executable, "-c"))
    child.start()
    horse = int(_wait_for_line(log_path, "horse ").split()[1])
    assert child.proc is not None
    assert os.getpgid(child.proc.pid) == child.proc.pid  # a process group of its own
    assert os.getpgid(horse) == horse
    child.stop(timeout_s=0.5, force_timeout_s=0.5)
    assert child.proc.returncode == -signal.SIGKILL
    assert log_path.read_text().count("term") == 2  # warm, then cold, then SIGKILL
    deadline = time.monotonic() + 10
    while horse in process_parents() and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL is delivered asynchronously
    assert horse not in process_parents()


def test_a_child_that_stops_gets_one_signal(tmp_path: Any) -> None:
    import os
    import sys

    from pricepipe.supervisor import Child

    log_path = tmp_path / "polite.log"
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: (print('term', flush=True), sys.exit(0)))\n"
              "print('ready', flush=True)\n"
              "time.sleep(120)\n")
    child = Child("polite", [script], dict(os.environ), log_path,
                  command_prefix=(sys.executable, "-c"))
    child.start()
    _wait_for_line(log_path, "ready")
    child.stop(timeout_s=30)
    assert child.proc is not None and child.proc.returncode == 0
    assert log_path.read_text().count("term") == 1


def test_proc_stat_lines_with_awkward_command_names() -> None:
    from pricepipe.supervisor import descendants, parse_proc_stat

    assert parse_proc_stat("42 (python3) S 7 42 42 0 -1") == ("S", 7)
    assert parse_proc_stat("43 (a) (b) Z) Z 42 43 43 0 -1") == ("Z", 42)
    # 1 -> 2 -> {3, 4}, 4 -> 5; 6 is someone else's.
    assert descendants(2, {2: 1, 3: 2, 4: 2, 5: 4, 6: 1}) == [3, 4, 5]
    assert descendants(9, {2: 1}) == []
