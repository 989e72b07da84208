"""``pricepipe jobs worker`` keeps working through a full Redis and a Redis
restart (rq's own loop quits on both), on real servers and processes."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.exceptions import StopRequested

from pricepipe.clock import utcnow
from pricepipe.embedded import RedisServer
from pricepipe.keys import Keys
from pricepipe.workers import jobrunner, partitions
from pricepipe.workers.jobs import MAINTENANCE
from pricepipe.workers.schedule import SCHEDULE
from tests.helpers import wait_until


def _days_ahead_created(db: Any, days: int) -> bool:
    day = utcnow().date() + timedelta(days=days)
    return f"trades_{day:%Y%m%d}" in set(partitions.list_partitions(db))


def _enqueue(env: dict[str, str], spawn: Callable[..., subprocess.Popen[bytes]],
             days: int) -> None:
    proc = spawn(["jobs", "enqueue", "partitions", f"days_ahead={days}"], env=env)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out


def test_the_jobs_worker_waits_out_a_full_redis_and_a_restart(
        db: Any, pipeline_env: dict[str, str], make_redis_server: Callable[..., RedisServer],
        spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    server = make_redis_server()
    env = dict(pipeline_env, PRICEPIPE_REDIS_URL=server.url)
    admin = redis.Redis.from_url(server.url)
    log_path = tmp_path / "worker.log"

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    try:
        # Full before the worker starts: rq's registration (a MULTI) is refused.
        admin.config_set("maxmemory", 1)
        with log_path.open("wb") as log_file:
            worker = spawn(["jobs", "worker", "--name", "full-1"], env=env, stdout=log_file)
        wait_until(lambda: log_text().count("starting again") >= 2, proc=worker, timeout_s=60)
        admin.config_set("maxmemory", 0)
        _enqueue(env, spawn, 13)
        wait_until(lambda: _days_ahead_created(db, 13), proc=worker, timeout_s=60)

        # A restart (rq 3 rides this one out by itself).
        server.stop()
        server.start()
        _enqueue(env, spawn, 14)
        wait_until(lambda: _days_ahead_created(db, 14), proc=worker, timeout_s=90)
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, log_text()[-3000:]
        assert "OutOfMemoryError" in log_text()
    finally:
        admin.close()


def test_a_registration_left_by_a_killed_life_does_not_block_the_next(
        pipeline_env: dict[str, str], redis_url: str, r: Any,
        spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        first = spawn(["jobs", "worker", "--name", "killed-1"], env=pipeline_env,
                      stdout=log_file)
    wait_until(lambda: r.exists("rq:worker:killed-1"), proc=first, timeout_s=60)
    first.kill()  # SIGKILL: no deregistration
    first.wait()
    assert r.exists("rq:worker:killed-1") and not r.hexists("rq:worker:killed-1", "death")
    with log_path.open("ab") as log_file:
        second = spawn(["jobs", "worker", "--name", "killed-1"], env=pipeline_env,
                       stdout=log_file)
    wait_until(lambda: "previous life" in log_path.read_text(), proc=second, timeout_s=60)
    wait_until(lambda: "Listening on" in log_path.read_text().split("previous life", 1)[1],
               proc=second, timeout_s=60)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0


def test_the_cron_scheduler_waits_out_a_full_redis_and_a_restart(
        pipeline_env: dict[str, str], make_redis_server: Callable[..., RedisServer],
        spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path, keys: Keys) -> None:
    server = make_redis_server()
    env = dict(pipeline_env, PRICEPIPE_REDIS_URL=server.url)
    admin = redis.Redis.from_url(server.url)
    log_path = tmp_path / "scheduler.log"

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    def enqueued() -> int:
        # Each start logs one line per job it enqueues, partitions first.
        return log_text().count("enqueued ")

    try:
        # Full before it starts: rq's registration is refused, again and again.
        admin.config_set("maxmemory", 1)
        with log_path.open("wb") as log_file:
            scheduler = spawn(["jobs", "scheduler", "--name", "cron-full"], env=env,
                              stdout=log_file)
        wait_until(lambda: log_text().count("starting again") >= 2, proc=scheduler,
                   timeout_s=60)
        assert enqueued() == 0 and "OutOfMemoryError" in log_text()
        admin.config_set("maxmemory", 0)
        # Once each: the refused starts enqueued nothing. The log line follows
        # its push, so once every due job is logged the queue holds them all.
        due = sum(1 for entry in SCHEDULE if entry.queue == MAINTENANCE)
        wait_until(lambda: enqueued() >= len(SCHEDULE), proc=scheduler, timeout_s=60)
        assert enqueued() == len(SCHEDULE)
        assert admin.llen(f"rq:queue:{keys.rq_queue(MAINTENANCE)}") == due

        # A restart loses the registration: the scheduler comes back into it
        # (by itself, or as a new scheduler after a lost connection).
        server.stop()
        server.start()
        wait_until(lambda: admin.zscore("rq:cron_schedulers", "cron-full") is not None,
                   proc=scheduler, timeout_s=90)
        scheduler.send_signal(signal.SIGTERM)
        assert scheduler.wait(timeout=60) == 0, log_text()[-3000:]
        assert "shutdown complete" in log_text()
    finally:
        admin.close()


class _Worker:
    """Stands in for rq's Worker: ``outcomes`` say how each ``work`` ends."""

    def __init__(self, outcome: Any, made: list[_Worker]) -> None:
        self.outcome = outcome
        self.name = f"w{len(made)}"
        self.key = f"rq:worker:{self.name}"
        self._stop_requested = False
        self._shutdown_requested_date = "now" if outcome == "stopped" else None
        self.connection = self
        made.append(self)

    def work(self, **_: Any) -> bool:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return False

    def delete(self, key: str) -> int:
        return 1

    def exists(self, key: str) -> int:
        return 0

    def srem(self, *_: Any) -> int:
        return 1

    def pipeline(self) -> Any:
        raise redis.OutOfMemoryError("still full")


def test_run_worker_starts_again_after_each_kind_of_failure(monkeypatch: Any) -> None:
    monkeypatch.setattr(jobrunner, "RESTART_BASE_S", 0.01)
    outcomes: list[Any] = [redis.OutOfMemoryError("full"), "quit", redis.ConnectionError("x"),
                           "stopped"]
    made: list[_Worker] = []
    pings: list[int] = []
    code = jobrunner.run_worker(lambda: _Worker(outcomes.pop(0), made), burst=False,
                                work_options={}, on_wait=lambda: pings.append(1))
    assert code == 0 and len(made) == 4 and len(pings) >= 3
    # A burst ends the loop whatever the work loop says.
    assert jobrunner.run_worker(lambda: _Worker("quit", made), burst=True,
                                work_options={}) == 0
    assert len(made) == 5
    # A stop while waiting to start again.
    stop = threading.Event()
    stop.set()
    assert jobrunner.run_worker(lambda: _Worker("quit", made), burst=False, work_options={},
                                stop=stop) == 0
    assert len(made) == 6


class _Scheduler:
    """Stands in for rq's CronScheduler: ``start`` raises its outcome, if any."""

    def __init__(self, outcome: BaseException | None, made: list[_Scheduler]) -> None:
        self.outcome = outcome
        self.name = f"s{len(made)}"
        made.append(self)

    def start(self) -> None:
        if self.outcome is not None:
            raise self.outcome


def test_run_scheduler_starts_again_after_redis_errors_and_ends_on_a_stop(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(jobrunner, "RESTART_BASE_S", 0.01)
    made: list[_Scheduler] = []
    pings: list[int] = []
    outcomes: list[BaseException | None] = [redis.OutOfMemoryError("full"),
                                            redis.ConnectionError("gone"), None]
    assert jobrunner.run_scheduler(lambda: _Scheduler(outcomes.pop(0), made),
                                   on_wait=lambda: pings.append(1)) == 0
    assert len(made) == 3 and len(pings) >= 2
    # A signal while rq registers it (before its own handling starts).
    assert jobrunner.run_scheduler(lambda: _Scheduler(StopRequested(), made)) == 0
    assert len(made) == 4
    # Any other error is not a Redis fault: it is raised.
    with pytest.raises(ValueError):
        jobrunner.run_scheduler(lambda: _Scheduler(ValueError("bug"), made))
