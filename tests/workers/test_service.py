"""The worker as a service: systemd notifications, trimming behind the
acknowledged floor, and the rq worker and scheduler commands."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pricepipe.clock import utcnow
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.workers import partitions
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.persister import PersistWorker

from .helpers import (
    BASE_TS_US,
    fast_env,
    make_events,
    make_trades,
    pending_count,
    publish,
    row_count,
    row_counts,
    wait_until,
)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def test_persist_tells_systemd_ready_watchdog_and_stopping(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str], tmp_path: Path,
        notify_socket: socket.socket, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    publish(r, keys, make_events(50))
    env = dict(fast_env(pipeline_env), NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    proc = spawn(["persist", "--name", "sd"], env=env)
    seen: list[str] = []
    while not {"READY=1", "WATCHDOG=1"} <= set(seen):
        seen.extend(notify_socket.recv(4096).decode().splitlines())
    wait_until(lambda: row_count(db) == 50, proc=proc)
    wait_until(lambda: bool(r.exists(keys.heartbeat("persist", "sd"))), proc=proc)
    for name, code in (("sd", 0), ("nobody", 1)):
        check = spawn(["persist", "--check", "--name", name], env=env)
        out = check.communicate(timeout=60)[0].decode()
        assert check.returncode == code, out
    proc.send_signal(signal.SIGTERM)
    while "STOPPING=1" not in seen:
        seen.extend(notify_socket.recv(4096).decode().splitlines())
    assert proc.wait(timeout=60) == 0
    assert seen.index("READY=1") < seen.index("STOPPING=1")


def test_worker_trims_only_what_the_group_acknowledged(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    trades = make_trades(3000, symbols=("AAPL",), step_us=10_000)
    stream = keys.trades("AAPL")
    publish(r, keys, trades[:1500])
    run_worker()
    assert r.xlen(keys.bars("AAPL")) > 0
    # A stuck consumer holds the next entry; 1499 more come after it.
    publish(r, keys, trades[1500:1501])
    held = r.xreadgroup(PERSIST_GROUP, "stuck", {stream: ">"}, count=1)[0][1][0][0]
    publish(r, keys, trades[1501:])
    run_worker(stream_window_s=0)  # window 0: trim everything acknowledged
    # The acknowledged head is trimmed (exactly), never the pending entry nor
    # anything after it.
    assert r.xrange(stream, count=1)[0][0] == held and r.xlen(stream) == 1500
    assert pending_count(r, keys, ("AAPL",)) == 1
    assert row_counts(db) == {"trades": 2999, "quotes": 0}


def test_bars_streams_are_trimmed_to_the_window(
        r: Any, keys: Keys, run_worker: Callable[..., PersistWorker]) -> None:
    # Bars streams have no group: trimmed by the window alone. Many bar
    # updates (one per small batch), then a zero window.
    for i in range(300):
        publish(r, keys, make_trades(1, symbols=("AAPL",), start_us=BASE_TS_US + i * 61_000_000))
    run_worker(batch_size=16)
    before = r.xlen(keys.bars("AAPL"))
    assert before == 300  # one per minute, each published once
    run_worker("w2", stream_window_s=0)
    assert r.xlen(keys.bars("AAPL")) < before


def test_consumers_gone_for_good_are_forgotten_but_never_with_pending_entries(
        r: Any, keys: Keys, run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_trades(20, symbols=("AAPL",)))
    stream = keys.trades("AAPL")
    r.xreadgroup(PERSIST_GROUP, "holder", {stream: ">"}, count=1)  # keeps one pending
    r.xreadgroup(PERSIST_GROUP, "gone", {stream: "0"})  # exists, holds nothing
    consumer = GroupConsumer(r, keys, "w1")
    assert consumer.forget_idle_consumers(stream, idle_ms=3_600_000) == []  # not idle yet
    assert consumer.forget_idle_consumers(stream, idle_ms=0) == ["gone"]
    names = {c["name"] for c in r.xinfo_consumers(stream, PERSIST_GROUP)}
    assert names == {b"holder"}
    run_worker(consumer_expiry_s=0, claim_idle_ms=0)  # claims holder's entry, then forgets it
    assert [c["name"] for c in r.xinfo_consumers(stream, PERSIST_GROUP)] == [b"w1"]
    assert pending_count(r, keys, ("AAPL",)) == 0


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def jobs_env(request: pytest.FixtureRequest, redis_url: str,
             pipeline_env: dict[str, str]) -> dict[str, str]:
    """The pipeline's environment, its Redis URL in either protocol."""
    return dict(pipeline_env, PRICEPIPE_REDIS_URL=f"{redis_url}?protocol={request.param}")


def test_jobs_worker_command_runs_enqueued_jobs(
        db: Any, jobs_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    enqueue = spawn(["jobs", "enqueue", "partitions", "days_ahead=12"], env=jobs_env)
    out = enqueue.communicate(timeout=60)[0].decode()
    assert enqueue.returncode == 0 and "enqueued partitions" in out, out
    worker = spawn(["jobs", "worker", "--burst", "--name", "t1"], env=jobs_env)
    out = worker.communicate(timeout=100)[0].decode()
    assert worker.returncode == 0, out
    names = partitions.list_partitions(db)
    day = utcnow().date() + timedelta(days=12)
    assert {f"trades_{day:%Y%m%d}", f"quotes_{day:%Y%m%d}"} <= set(names)


def test_jobs_scheduler_enqueues_the_schedule_and_stops_on_sigterm(
        r: Any, keys: Keys, jobs_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    from pricepipe.workers.jobqueue import queue as job_queue

    proc = spawn(["jobs", "scheduler", "--name", "sched-test"], env=jobs_env)
    queue = job_queue(keys.rq_queue("maintenance"), r)  # reads JSON jobs only
    wait_until(lambda: queue.count >= 4, proc=proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    funcs = {job.func_name for job in queue.get_jobs()}
    assert funcs == {"pricepipe.workers.jobs.run_with_retry"}
    targets = {job.kwargs["target"] for job in queue.get_jobs()}
    assert targets == {"pricepipe.workers.jobs.maintain_partitions",
                       "pricepipe.workers.jobs.apply_retention",
                       "pricepipe.workers.jobs.verify_bars",
                       "pricepipe.publisher.metadata.refresh_instruments"}
