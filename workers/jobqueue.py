"""What pricepipe's rq queues carry and what their workers agree to run.

rq pickles a job's function reference, arguments and ``meta`` by default, and
a worker unpickles them: whoever can write one hash in Redis runs code as the
jobs worker's user. Here every Queue, Worker and the cron scheduler use:

* :data:`~pricepipe.workers.jobs.SERIALIZER` (rq's JSON serializer, which
  :func:`~pricepipe.workers.jobs.enqueue` writes): job data, meta and results
  are JSON. A pickle written into a job hash fails to decode: the job fails (its
  data) or its meta is dropped, and nothing in it runs. Job arguments are
  therefore JSON values (ints, floats, strings, booleans, null, lists, dicts
  with string keys); times travel as epoch microseconds (``start_us``).
* :class:`PricepipeJob` as the workers' job class: JSON can still name any
  importable callable (``os.system``), so the function must be one of
  pricepipe's jobs (:func:`allowed_functions`: the ``JOBS`` table, the
  ``SCHEDULE`` and the cron dispatcher), never a method of a serialized
  instance; success, failure and stopped callbacks and webhooks (rq imports
  callbacks by name too) are never run, since pricepipe's jobs set none.
  A refused job fails with :exc:`JobRefusedError`; the worker carries on.
* :class:`JsonCronScheduler`: rq's cron scheduler, enqueueing on JSON
  queues (rq 3.0's ``CronJob.enqueue`` builds its Queue without a serializer).
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from rq import Queue
from rq.cron import CronJob, CronScheduler
from rq.job import Job
from rq.utils import now

from pricepipe.exceptions import PricepipeError

from .jobs import JOBS, SERIALIZER
from .schedule import SCHEDULE

log = logging.getLogger(__name__)

#: The job function the cron scheduler enqueues (it enqueues the real job with a Retry).
DISPATCHER = "pricepipe.workers.jobs.run_with_retry"


class JobRefusedError(PricepipeError):
    """A job in the queue is not one pricepipe would enqueue (an unknown
    function, a bound method); it is failed, not run."""


@cache
def allowed_functions() -> frozenset[str]:
    """Dotted paths of the functions a pricepipe worker runs."""
    return frozenset({DISPATCHER, *(spec.func for spec in JOBS.values()),
                      *(entry.func for entry in SCHEDULE)})


def check_allowed(func: str) -> None:
    """Raise :exc:`JobRefusedError` unless ``func`` is one of pricepipe's jobs."""
    if func not in allowed_functions():
        raise JobRefusedError(f"{func!r} is not one of pricepipe's jobs "
                              f"(known: {', '.join(sorted(allowed_functions()))})")


class PricepipeJob(Job):
    """rq's job, running only pricepipe's job functions and no callbacks."""

    @property
    def func(self) -> Any:
        # The check runs where rq resolves the function, just before the call
        # (in the work horse): a refusal is an ordinary job failure.
        if self.instance is not None:
            raise JobRefusedError(f"job {self.id}: methods of serialized instances are refused")
        check_allowed(str(self.func_name))
        return super().func

    # rq imports a callback by the name stored in the job hash and calls it:
    # pricepipe's jobs never set one, so whatever a hash names is ignored.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """Never: pricepipe's jobs set no webhooks, and a planted one would make
        the worker send requests to an address of the writer's choice."""
        if self.webhooks:
            log.warning("job %s: %d webhook(s) ignored", self.id, len(self.webhooks))


def queue(name: str, connection: Any) -> Queue:
    """The rq queue ``name`` (its Redis name, ``keys.rq_queue(short)``) with
    pricepipe's serializer and job class."""
    return Queue(name, connection=connection, serializer=SERIALIZER, job_class=PricepipeJob)


__all__ = ["SERIALIZER", "JobRefusedError", "JsonCronScheduler", "PricepipeJob",
           "WORKER_OPTIONS", "allowed_functions", "check_allowed", "queue"]

#: Keyword arguments of every pricepipe rq ``Worker``.
WORKER_OPTIONS: dict[str, Any] = {"serializer": SERIALIZER, "job_class": PricepipeJob}


class JsonCronScheduler(CronScheduler):
    """rq's cron scheduler, enqueueing each due job on a JSON queue.

    rq's own bookkeeping of which job each cron entry enqueued (its
    ``rq:cron_job:*`` history, for rq's monitoring) is not kept: pricepipe
    does not read it."""

    def enqueue_jobs(self) -> list[CronJob]:
        enqueue_time = now()
        enqueued: list[CronJob] = []
        for cron_job in self.get_jobs():
            if not cron_job.should_run():
                continue
            if cron_job.func is None:  # rq: a cron job registered for monitoring only
                continue
            # args and kwargs passed by name, as rq does: a job's own kwargs may
            # share the names of enqueue's options.
            queue(cron_job.queue_name, self.connection).enqueue(
                cron_job.func, args=cron_job.args, kwargs=cron_job.kwargs,
                **cron_job.job_options)
            log.info("enqueued %s on %s", cron_job.name, cron_job.queue_name)
            cron_job.set_enqueue_time(enqueue_time)
            enqueued.append(cron_job)
        return enqueued
