"""Keeps an rq worker and the rq cron scheduler working through Redis faults:
``pricepipe jobs worker`` and ``pricepipe jobs scheduler``.

rq's ``Worker.work`` ends its loop on any error it does not expect, a
refused write of a full Redis or a lost connection included, and returns
as if asked to stop; an error while it registers (its ``MULTI`` is refused
by a full Redis) or deregisters escapes it. Under systemd the first is an
exit 0 that ``Restart=on-failure`` does not restart, the second a crash
loop that hits the start limit while Redis stays full. Here either is
logged, and a new worker starts after a backoff (the watchdog pinged
meanwhile), until a stop is requested. A registration under the worker's
own name left by a previous life (SIGKILL, the watchdog) is cleared first:
rq would refuse to start ("There exists an active worker named ...") for up
to ``worker_ttl`` + 60 s, and systemd would give up meanwhile.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from rq.exceptions import StopRequested

log = logging.getLogger(__name__)

#: Backoff between two starts of the rq worker, seconds.
RESTART_BASE_S = 0.5
RESTART_CAP_S = 15.0
#: How often rq's maintenance runs (cleans registries, restarts a dead
#: scheduler child), seconds.
MAINTENANCE_INTERVAL_S = 30


def run_worker(make_worker: Callable[[], Any], *, burst: bool,
               work_options: dict[str, Any], on_wait: Callable[[], object] = lambda: None,
               stop: threading.Event | None = None) -> int:
    """Run rq workers made by ``make_worker`` until one ends on request (a
    signal, or its burst done); returns the exit code (0).

    ``on_wait`` runs every second while waiting to start again (the
    systemd watchdog ping); ``stop`` ends the waiting early (set by
    SIGTERM/SIGINT while waiting, when not given)."""
    stop = stop or threading.Event()
    delay_s = RESTART_BASE_S
    first = True
    while True:
        worker = make_worker()
        # rq's maintenance also restarts a scheduler child that died (a Redis
        # restart kills it): every 10 min by default, which stalls retries.
        worker.maintenance_interval = MAINTENANCE_INTERVAL_S
        if first and _registered_alive(worker):
            # Under systemd a unit's previous life is gone when it starts again
            # (SIGKILL, the watchdog): its registration outlives it by up to
            # worker_ttl + 60 s, and rq refuses to start under the same name.
            log.warning("clearing the registration %s left by a previous life", worker.key)
            _forget(worker)
        first = False
        failure: str
        _stop_before_work(worker)
        try:
            worker.work(burst=burst, **work_options)
        except redis.RedisError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if burst or _stop_was_requested(worker):
                return 0
            failure = "its work loop quit on an error (logged above)"
        _forget(worker)
        if _pause(f"rq worker {worker.name}", failure, delay_s, on_wait, stop):
            return 0
        delay_s = min(delay_s * 2, RESTART_CAP_S)


def run_scheduler(make_scheduler: Callable[[], Any], *,
                  on_wait: Callable[[], object] = lambda: None,
                  stop: threading.Event | None = None) -> int:
    """Run rq cron schedulers made by ``make_scheduler`` until one ends on
    request (SIGTERM or SIGINT); returns the exit code (0).

    rq's ``CronScheduler.start`` lets every Redis error escape: a full Redis
    refuses its registration, its heartbeat and its enqueues, a restart
    drops its connection. Each is logged and a new scheduler starts after a
    backoff, so a full Redis costs the schedule its enqueues (each interval
    job is enqueued again as soon as a scheduler starts: the jobs are
    idempotent), never the process."""
    stop = stop or threading.Event()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        delay_s = RESTART_BASE_S
        while True:
            scheduler = make_scheduler()
            # rq installs its handlers inside start(); until then a stop is ours.
            for signum in previous:
                signal.signal(signum, lambda *_: stop.set())
            if stop.is_set():
                return 0
            try:
                scheduler.start()  # returns only when a signal asked it to stop
            except StopRequested:
                return 0  # a signal during its registration, outside rq's own handling
            except redis.RedisError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                return 0
            if _pause(f"rq cron scheduler {scheduler.name}", failure, delay_s, on_wait, stop):
                return 0
            delay_s = min(delay_s * 2, RESTART_CAP_S)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _pause(who: str, failure: str, delay_s: float, on_wait: Callable[[], object],
           stop: threading.Event) -> bool:
    """Log why ``who`` stopped and wait a jittered ``delay_s`` before the next
    start; True when a stop was requested meanwhile."""
    wait_s = delay_s * (0.75 + random.random() / 2)
    log.warning("%s stopped: %s; starting again in %.1fs", who, failure, wait_s)
    return _wait(wait_s, on_wait, stop)


def _stop_before_work(worker: Any) -> None:
    """Until rq installs its own, SIGTERM and SIGINT ask ``worker`` to stop
    (its flag, which rq's loop reads first). rq installs its handlers only
    after its start-up (registration, the scheduler, "Listening on"): a stop
    in that window would otherwise end the process with the default
    disposition, not a warm shutdown."""
    from datetime import UTC, datetime

    def request(signum: int, frame: object) -> None:
        worker._stop_requested = True
        worker._shutdown_requested_date = datetime.now(UTC)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request)


def _stop_was_requested(worker: Any) -> bool:
    """Whether a signal asked ``worker`` to stop. rq has no public flag: a
    warm shutdown sets the request date (and, during a job, the flag)."""
    return bool(getattr(worker, "_stop_requested", False)
                or getattr(worker, "_shutdown_requested_date", None) is not None)


def _registered_alive(worker: Any) -> bool:
    """Whether a registration under ``worker``'s name says it is alive."""
    try:
        return bool(worker.connection.exists(worker.key)
                    and not worker.connection.hexists(worker.key, "death"))
    except redis.RedisError:
        return False  # work() will meet the same error and be retried


def _forget(worker: Any) -> None:
    """Remove a worker's registration that its own teardown could not end
    (a full Redis refuses rq's ``MULTI``): else the next worker of the same
    name refuses to start ("There exists an active worker"). ``DEL`` and
    ``SREM`` are allowed on a full Redis: they free memory."""
    from rq import worker_registration

    try:
        worker.connection.delete(worker.key)
        worker_registration.unregister(worker)
    except redis.RedisError as exc:
        log.info("could not clear the registration of %s yet: %s", worker.name, exc)


def _wait(seconds: float, on_wait: Callable[[], object], stop: threading.Event) -> bool:
    """Sleep ``seconds`` in steps of a second; True when stopped meanwhile."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for signum in previous:
            signal.signal(signum, lambda *_: stop.set())
    try:
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            on_wait()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            stop.wait(min(left, 1.0))
        return True
    finally:
        if in_main:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
