"""The cron schedule of pricepipe's rq jobs, run by ``pricepipe jobs scheduler``
(rq's :class:`rq.cron.CronScheduler` as
:class:`~pricepipe.workers.jobqueue.JsonCronScheduler`, which enqueues JSON jobs).

Each entry names a job function by its dotted path (so a role can schedule
its own job here without this package importing that role) and its queue
by short name (``keys.rq_queue(name)`` gives the Redis name). Interval jobs
run once as soon as the scheduler starts, then every ``interval_s``; cron
entries follow their crontab expression (UTC).

What the scheduler enqueues is :func:`pricepipe.workers.jobs.run_with_retry`, which
enqueues the real job with rq's ``Retry`` policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pricepipe.keys import Keys

from .jobs import MAINTENANCE


@dataclass(frozen=True)
class Scheduled:
    """One recurring job."""

    name: str
    func: str
    queue: str = MAINTENANCE
    interval_s: int | None = None
    cron: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


SCHEDULE: tuple[Scheduled, ...] = (
    # Hourly, so partitions for the coming days always exist before their
    # first event (workers also create a missing one, but not under load).
    Scheduled("partitions", "pricepipe.workers.jobs.maintain_partitions", interval_s=3600),
    Scheduled("retention", "pricepipe.workers.jobs.apply_retention", interval_s=6 * 3600),
    Scheduled("bars-verify", "pricepipe.workers.jobs.verify_bars", interval_s=600),
    # The seed stockstreamer refreshed logos and 52-week ranges every ~5,000 s;
    # the job lives with the providers that know where metadata comes from.
    Scheduled("instruments", "pricepipe.publisher.metadata.refresh_instruments", interval_s=5000),
)


def install(scheduler: Any, keys: Keys, schedule: tuple[Scheduled, ...] = SCHEDULE) -> list[Any]:
    """Register ``schedule`` on a :class:`~pricepipe.workers.jobqueue.JsonCronScheduler`
    (a plain rq ``CronScheduler`` would enqueue pickles, which the workers
    refuse); returns its cron jobs. Every ``kwargs`` must be JSON values."""
    from .jobs import run_with_retry

    out = []
    for entry in schedule:
        queue = keys.rq_queue(entry.queue)
        out.append(scheduler.register(
            run_with_retry, queue_name=queue, name=entry.name,
            kwargs={"target": entry.func, "target_queue": queue,
                    "target_kwargs": dict(entry.kwargs)},
            interval=entry.interval_s, cron=entry.cron))
    return out
