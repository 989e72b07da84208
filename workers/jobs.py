"""rq jobs: the slow, periodic and bulk work around persistence.

Every job is idempotent (safe to retry, safe to run twice) and returns a
small JSON-able dict that rq keeps as its result. Jobs run in an rq worker
process (``pricepipe jobs worker``) and read their connection settings from
its environment (``PRICEPIPE_DATABASE_URL`` ...), never from the job's
arguments, so no password is ever stored in Redis.

Jobs are JSON, and workers run only the functions named here and in the
schedule (:mod:`.jobqueue`): no pickle, so writing to Redis is not running code.

Failures are retried with rq's :class:`rq.Retry` (``PRICEPIPE_JOBS_RETRY_*``)
and, once retries are exhausted, stay in the queue's failed-job registry,
which ``pricepipe status`` counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rq.serializers import JSONSerializer

from pricepipe.clock import now_us
from pricepipe.config import DatabaseSettings
from pricepipe.connections import pg_connect

from .settings import JobsSettings

log = logging.getLogger(__name__)

#: The serializer of every pricepipe rq queue, worker and scheduler: rq's JSON
#: one, never its default pickle (see :mod:`.jobqueue` for what workers run).
SERIALIZER = JSONSerializer

#: Short queue names; the Redis name is ``keys.rq_queue(name)``.
MAINTENANCE = "maintenance"
BULK = "bulk"
QUEUES = (MAINTENANCE, BULK)


@dataclass(frozen=True)
class JobSpec:
    """A job that ``pricepipe jobs enqueue NAME`` knows: function and queue."""

    func: str
    queue: str
    help: str


JOBS: dict[str, JobSpec] = {
    "partitions": JobSpec("pricepipe.workers.jobs.maintain_partitions", MAINTENANCE,
                          "create the daily trade and quote partitions ahead"),
    "retention": JobSpec("pricepipe.workers.jobs.apply_retention", MAINTENANCE,
                         "drop trade and quote partitions older than their retention"),
    "bars-verify": JobSpec("pricepipe.workers.jobs.verify_bars", MAINTENANCE,
                           "recompute recent bars from trades and repair differences"),
    "bars-rebuild": JobSpec("pricepipe.workers.jobs.rebuild_bars", BULK,
                            "rebuild the bars of a range (start_us, end_us[, symbol])"),
    "backfill": JobSpec("pricepipe.workers.jobs.backfill_history", BULK,
                        "backfill trades (symbol, start_us, end_us[, source, upstream, "
                        "candles, force_source; gbm: interval_s, seed])"),
    "export": JobSpec("pricepipe.workers.jobs.export_events", BULK,
                      "write a CSV of trades or quotes (symbol, start_us, end_us, path"
                      "[, channel])"),
}


def _connect(name: str) -> Any:
    return pg_connect(DatabaseSettings.from_env().require_url(),
                      application_name=f"pricepipe-job-{name}")


def _today() -> Any:
    return datetime.now(UTC).date()


# --- the jobs ------------------------------------------------------------------------------


def maintain_partitions(days_ahead: int | None = None) -> dict[str, Any]:
    """Create the trade and quote partitions from yesterday to ``days_ahead`` days ahead."""
    from .partitions import ensure_ahead

    ahead = days_ahead if days_ahead is not None else JobsSettings.from_env().partitions_ahead_days
    conn = _connect("partitions")
    try:
        created = ensure_ahead(conn, today=_today(), days_ahead=ahead)
    finally:
        conn.close()
    log.info("partitions: %d created (%d days ahead)", created, ahead)
    return {"created": created, "days_ahead": ahead}


def apply_retention(retention_days: int | None = None,
                    quotes_retention_days: int | None = None) -> dict[str, Any]:
    """Drop whole trade and quote partitions older than their table's
    retention (arguments, else the settings; a table whose retention is
    unset keeps everything)."""
    from .partitions import drop_expired

    settings = JobsSettings.from_env()
    days = {"trades": retention_days if retention_days is not None else settings.retention_days,
            "quotes": quotes_retention_days if quotes_retention_days is not None
            else settings.quotes_retention_days}
    if all(d is None for d in days.values()):
        return {"dropped": [], "retention_days": days}
    conn = _connect("retention")
    try:
        dropped = drop_expired(conn, today=_today(), retention_days=days)
    finally:
        conn.close()
    if dropped:
        log.info("retention: dropped %s", ", ".join(dropped))
    return {"dropped": dropped, "retention_days": days}


def verify_bars(minutes: int | None = None, repair: bool = True) -> dict[str, Any]:
    """Recompute the bars of the last ``minutes`` from trades; rebuild them if
    any differ (and ``repair``). The minute in progress is included: a worker
    updating it meanwhile is serialised by :func:`pricepipe.workers.rollup.rebuild`."""
    from . import rollup

    span = minutes if minutes is not None else JobsSettings.from_env().bars_verify_minutes
    end_us = now_us()
    start_us = end_us - span * 60_000_000
    conn = _connect("bars")
    try:
        mismatches = rollup.verify(conn, start_us, end_us)
        rebuilt = 0
        if mismatches and repair:
            log.warning("bars: %d bar(s) differ from their trades; rebuilding %d minutes",
                        len(mismatches), span)
            rebuilt = rollup.rebuild(conn, start_us, end_us)
    finally:
        conn.close()
    return {"minutes": span, "mismatches": len(mismatches), "rebuilt": rebuilt}


def rebuild_bars(start_us: int, end_us: int, symbol: str | None = None) -> dict[str, Any]:
    """Rebuild the bars of ``[start_us, end_us)`` (whole minutes) from the trades."""
    from . import rollup

    conn = _connect("bars")
    try:
        written = rollup.rebuild(conn, start_us, end_us, symbol)
    finally:
        conn.close()
    return {"bars": written}


def backfill_history(symbol: str, start_us: int, end_us: int, interval_s: float = 1.0,
                     seed: int = 0, source: str = "gbm", upstream: str | None = None,
                     candles: bool = True, force_source: bool = False) -> dict[str, Any]:
    """Backfill ``symbol``'s trades: from a venue's REST history (``source``
    ``binance`` or ``coinbase``; ``upstream`` the venue's symbol, default the
    symbol's venue-qualified name's; resumable and idempotent, see
    :mod:`.backfill`), or from the built-in simulated history (``gbm``)."""
    from pricepipe.events import validate_symbol

    from .backfill import backfill
    from .history import GBMHistory
    from .sink import EventSink

    if source != "gbm":
        from pricepipe.config import RedisSettings
        from pricepipe.connections import redis_client

        from .backfill import resolve_symbol, run_venue_backfill

        local, venue_symbol = resolve_symbol(source, symbol, upstream)
        rs = RedisSettings.from_env()
        r = redis_client(rs) if rs.url else None
        try:
            done = run_venue_backfill(
                DatabaseSettings.from_env().require_url(), source, local, venue_symbol,
                start_us, end_us, redis=(r, rs.keys) if r is not None else None,
                candles=candles, force_source=force_source)
        finally:
            if r is not None:
                r.close()
        return {"symbol": local, "source": done.source, "trades": done.trades,
                "inserted": done.inserted, "candle_bars": done.candle_bars,
                "resumed_at": done.resumed_at}
    validate_symbol(symbol)
    with EventSink(DatabaseSettings.from_env().require_url(),
                   application_name="pricepipe-job-backfill") as sink:
        result = backfill(sink, GBMHistory(interval_s=interval_s, seed=seed), symbol,
                          start_us, end_us)
    return {"symbol": symbol, "trades": result.trades, "inserted": result.inserted}


def export_events(symbol: str, start_us: int, end_us: int, path: str,
                  channel: str = "trades") -> dict[str, Any]:
    """Write ``symbol``'s trades (or quotes: ``channel="quotes"``) of
    ``[start_us, end_us)`` as CSV to ``path`` (on the worker's host),
    atomically: a temporary file renamed when complete."""
    import os

    from pricepipe.keys import Channel

    from .export import export_csv

    kind = Channel(channel)
    tmp = f"{path}.part"
    conn = _connect("export")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            rows = export_csv(conn, out, symbol, start_us, end_us, channel=kind)
        os.replace(tmp, path)
    finally:
        conn.close()
    return {"path": path, "channel": str(kind), "rows": rows}


# --- enqueueing with retries ---------------------------------------------------------------


def retry_policy(settings: JobsSettings | None = None) -> Any:
    """rq :class:`~rq.Retry` from the settings (None when retries are off)."""
    from rq import Retry

    s = settings or JobsSettings.from_env()
    if s.retry_max < 1:
        return None
    return Retry(max=s.retry_max, interval=list(s.retry_intervals_s) or 0)


def enqueue(r: Any, queue_name: str, func: str, *, kwargs: dict[str, Any] | None = None,
            settings: JobsSettings | None = None) -> Any:
    """Enqueue ``func`` (dotted path, one of pricepipe's jobs: a worker refuses
    any other) on the rq queue ``queue_name`` with the retry policy and timeout
    of the settings. Returns the rq job.

    The job is JSON (:data:`SERIALIZER`): ``kwargs`` must be JSON values, else
    ``TypeError``."""
    from rq import Queue

    s = settings or JobsSettings.from_env()
    return Queue(queue_name, connection=r, serializer=SERIALIZER).enqueue(
        func, kwargs=kwargs or {}, retry=retry_policy(s), job_timeout=s.job_timeout_s,
        failure_ttl=7 * 86_400)


def run_with_retry(target: str, target_queue: str,
                   target_kwargs: dict[str, Any] | None = None) -> str:
    """The job the cron scheduler enqueues: it enqueues ``target`` (dotted
    path) on ``target_queue`` with rq's ``Retry`` (rq's cron cannot attach
    one itself) and returns its job ID.

    (Parameter names avoid ``func``/``queue``/``kwargs``, which rq's
    ``enqueue`` would take as its own options.)"""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("run_with_retry must run inside an rq job")
    return str(enqueue(job.connection, target_queue, target, kwargs=target_kwargs).id)
