"""Subcommands of the workers package (light: heavy imports happen in handlers).

* ``pricepipe persist`` - a persist worker (``python -m pricepipe.workers`` is the same).
* ``pricepipe dlq list|replay|delete`` - inspect and re-queue dead letters.
* ``pricepipe jobs worker|scheduler|list|enqueue`` - the rq jobs (see :mod:`.jobs`).
* ``pricepipe backfill``, ``pricepipe export``, ``pricepipe bars verify|rebuild``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pricepipe.config import DatabaseSettings, RedisSettings

log = logging.getLogger(__name__)

#: Under systemd (WatchdogSec=30) the rq processes must ping at least this often, seconds.
WATCHDOG_PING_S = 10
#: rq's worker TTL; an idle worker heartbeats every TTL - 15 s (here 10 s).
WATCHDOG_WORKER_TTL_S = 25


def default_consumer_name() -> str:
    """Host and pid: unique, but not stable across restarts (pass ``--name``
    for that, so a restarted worker reads back its own pending entries at once)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _cmd_persist_check(args: argparse.Namespace) -> int:
    """``--check``: exit 0 if the worker ``--name`` has a live heartbeat, else 1."""
    from pricepipe.codec import decode_json
    from pricepipe.connections import redis_client
    from pricepipe.exceptions import ConfigError
    from pricepipe.flags import redis_settings

    if not args.name:
        raise ConfigError("--check needs the --name of the worker to check")
    rs = redis_settings(args)
    r = redis_client(rs)
    try:
        raw = r.get(rs.keys.heartbeat("persist", args.name))
    finally:
        r.close()
    if raw is None:
        print(f"persist worker {args.name}: no heartbeat")
        return 1
    print(f"persist worker {args.name}: alive {decode_json(raw)}")
    return 0


def _cmd_persist(args: argparse.Namespace) -> int:
    if args.check:
        return _cmd_persist_check(args)
    from pricepipe.stop import StopRequest

    # Signals first: a SIGTERM while connecting must stop us cleanly, too.
    stop = StopRequest().install()

    from pricepipe.connections import redis_client
    from pricepipe.flags import database_settings, redis_settings

    from .barfeed import BarFeed, FinalPass
    from .consumer import GroupConsumer
    from .persister import PersistWorker
    from .settings import WorkerSettings
    from .sink import EventSink

    settings = WorkerSettings.from_env(batch_size=args.batch_size,
                                       claim_idle_ms=args.claim_idle_ms,
                                       metrics_port=args.metrics_port)
    rs = redis_settings(args)
    database_url = database_settings(args).require_url()
    r = redis_client(rs)
    try:
        keys = rs.keys
        name = args.name or default_consumer_name()
        feed = BarFeed(r, keys, grace_ms=settings.bars_final_grace_ms,
                       horizon_s=settings.bars_horizon_s)
        final_pass = FinalPass(feed, database_url,
                               application_name=f"pricepipe-bars-{name}"[:63])
        worker = PersistWorker(
            r, EventSink(database_url, application_name=f"pricepipe-persist-{name}"[:63],
                         partition_lock_timeout_ms=settings.partition_lock_timeout_ms),
            GroupConsumer(r, keys, name), settings, burst=args.burst, stop=stop,
            final_pass=final_pass)
        if settings.metrics_port is not None:
            from .metrics import serve_metrics

            serve_metrics(worker, host=settings.metrics_host, port=settings.metrics_port)
        code = worker.run(install_signals=False)
        if args.burst:
            stats = worker.stats
            print(f"persisted: {stats.trades_inserted} new trade(s), "
                  f"{stats.quotes_inserted} new quote(s), "
                  f"{stats.duplicates} duplicate(s) skipped, "
                  f"{stats.dead_letters} dead letter(s), "
                  f"{stats.bars_published + stats.bars_final} bar update(s) published")
        return code
    finally:
        r.close()


def _letters(args: argparse.Namespace, *, ids: list[str] | None = None,
             limit: int | None = None) -> tuple[Any, Any, list[Any]]:
    """Redis, the key layout, and the dead letters (those named by ``ids``, if given)."""
    from pricepipe.connections import redis_client
    from pricepipe.flags import redis_settings

    from . import deadletter

    rs = redis_settings(args)
    r = redis_client(rs)
    keys = rs.keys
    letters = deadletter.list_dead_letters(r, keys, limit=limit)
    wanted = set(ids or ())
    if wanted:
        letters = [d for d in letters if d.dlq_id in wanted or d.entry_id in wanted]
    return r, keys, letters


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from pricepipe.clock import format_us
    from pricepipe.codec import encode_json

    r, _, letters = _letters(args, limit=args.limit)
    try:
        if args.json:
            print(encode_json([d.to_dict() for d in letters]).decode())
            return 0
        for d in letters:
            fields = " ".join(f"{k.decode(errors='replace')}={v.decode(errors='replace')!r}"
                              for k, v in d.fields.items())
            print(f"{d.dlq_id}  {d.stream} {d.entry_id}  deliveries={d.deliveries}  "
                  f"at {format_us(d.failed_ms * 1000)} by {d.consumer}\n"
                  f"    reason: {d.reason}\n    fields: {fields}")
        print(f"{len(letters)} dead letter(s)")
        return 0
    finally:
        r.close()


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from pricepipe.clock import now_ms
    from pricepipe.connections import pg_connect
    from pricepipe.flags import database_settings

    from . import deadletter

    if not args.ids and not args.all:
        print("give dead-letter IDs (or entry IDs) to replay, or --all")
        return 2
    database_url = database_settings(args).require_url()
    r, keys, letters = _letters(args, ids=args.ids)
    try:
        # Letters whose row is committed already (commit, then a crash before
        # the XACK) are not appended again: that would be a second row.
        conn = pg_connect(database_url, application_name="pricepipe-dlq", readonly=True)
        try:
            persisted = deadletter.persisted_letters(conn, keys, letters)
        finally:
            conn.close()
        plan = deadletter.plan_replay(keys, letters, persisted, now_ms=now_ms())
        for letter in plan.persisted:
            print(f"already persisted: {letter.stream} {letter.entry_id} (letter deleted)")
        deadletter.delete(r, keys, plan.persisted)
        for letter, why in plan.kept:
            print(f"kept {letter.dlq_id} ({letter.stream} {letter.entry_id}): {why}; "
                  f"a replay would be refused again (delete it, or load it by a backfill)")
        done = deadletter.replay(r, keys, plan.replay)
        for stream, new_id in done:
            print(f"re-queued to {stream} as {new_id}")
        print(f"{len(done)} dead letter(s) re-queued, {len(plan.persisted)} already persisted "
              f"(deleted), {len(plan.kept)} kept")
        return 0
    finally:
        r.close()


def _cmd_dlq_delete(args: argparse.Namespace) -> int:
    from . import deadletter

    if not args.ids:
        print("give the dead-letter IDs (or entry IDs) to delete")
        return 2
    r, keys, letters = _letters(args, ids=args.ids)
    try:
        print(f"{deadletter.delete(r, keys, letters)} dead letter(s) deleted")
        return 0
    finally:
        r.close()


def _time_us(text: str) -> int:
    """argparse type: ISO-8601 time or epoch s/ms/us -> epoch microseconds."""
    from pricepipe.clock import parse_time_us

    try:
        return parse_time_us(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: give ISO-8601 (2026-01-02T03:04:05Z) or epoch seconds"
        ) from exc


def _symbol(text: str) -> str:
    from pricepipe.events import validate_symbol

    try:
        return validate_symbol(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _check_range(args: argparse.Namespace) -> None:
    from pricepipe.exceptions import ConfigError

    if args.end <= args.start:
        raise ConfigError("--end must be after --start")


def _export_settings_to_env(rs: RedisSettings, ds: DatabaseSettings) -> None:
    """Make the resolved URLs (flags, env or a running ``up``) visible to job
    processes, which read their settings from the environment."""
    if rs.url:
        os.environ["PRICEPIPE_REDIS_URL"] = rs.url
    if ds.url:
        os.environ["PRICEPIPE_DATABASE_URL"] = ds.url


def _cmd_jobs_worker(args: argparse.Namespace) -> int:
    from rq import Worker

    from pricepipe import notify
    from pricepipe.connections import redis_client
    from pricepipe.flags import database_settings, redis_settings

    from .jobqueue import WORKER_OPTIONS
    from .jobrunner import run_worker
    from .jobs import QUEUES

    class NotifyingWorker(Worker):
        """rq's worker, reporting health to systemd from its heartbeat."""

        def heartbeat(self, *a: Any, **kw: Any) -> Any:
            notify.watchdog()
            return super().heartbeat(*a, **kw)

    rs = redis_settings(args)
    _export_settings_to_env(rs, database_settings(args))
    keys = rs.keys
    r = redis_client(rs)
    try:
        queues = [keys.rq_queue(q) for q in (args.queue or QUEUES)]

        def make_worker() -> Worker:
            # rq heartbeats every worker_ttl - 15 s while idle (405 s by default) and
            # every job_monitoring_interval s (30) while a job runs: both must stay well
            # under the unit's WatchdogSec=30, or systemd kills a healthy idle worker.
            # WORKER_OPTIONS: JSON jobs, and only pricepipe's job functions run.
            return NotifyingWorker(queues, connection=r, name=args.name,
                                   worker_ttl=WATCHDOG_WORKER_TTL_S,
                                   job_monitoring_interval=WATCHDOG_PING_S, **WORKER_OPTIONS)

        notify.ready(f"rq worker on {', '.join(queues)}")
        # with_scheduler: moves jobs waiting for a Retry interval back to their queue.
        level = logging.getLevelName(logging.getLogger().level or logging.INFO)
        return run_worker(make_worker, burst=args.burst, on_wait=notify.watchdog,
                          work_options={"with_scheduler": True, "logging_level": level})
    finally:
        r.close()


def _cmd_jobs_scheduler(args: argparse.Namespace) -> int:
    from pricepipe import notify
    from pricepipe.connections import redis_client
    from pricepipe.flags import redis_settings

    from .jobqueue import JsonCronScheduler
    from .jobrunner import run_scheduler
    from .schedule import install

    class NotifyingScheduler(JsonCronScheduler):
        def heartbeat(self) -> None:
            notify.watchdog()
            super().heartbeat()

        def calculate_sleep_interval(self) -> float:
            # rq sleeps up to 60 s between heartbeats: more than the unit's WatchdogSec.
            return min(super().calculate_sleep_interval(), float(WATCHDOG_PING_S))

    rs = redis_settings(args)
    r = redis_client(rs)

    def make_scheduler() -> NotifyingScheduler:
        scheduler = NotifyingScheduler(connection=r, name=args.name or "")
        install(scheduler, rs.keys)
        return scheduler

    try:
        notify.ready("rq cron scheduler")
        # rq's own SIGTERM handling stops it between enqueues; Redis errors
        # (a full Redis, a restart) start a new one after a backoff.
        return run_scheduler(make_scheduler, on_wait=notify.watchdog)
    finally:
        r.close()


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    from .jobs import JOBS
    from .schedule import SCHEDULE

    print("scheduled:")
    for entry in SCHEDULE:
        when = f"every {entry.interval_s}s" if entry.interval_s else f"cron '{entry.cron}'"
        print(f"  {entry.name:<14} {when:<16} {entry.func} on {entry.queue}")
    print("on demand (pricepipe jobs enqueue NAME key=value ...):")
    for name, spec in JOBS.items():
        print(f"  {name:<14} {spec.help}")
    return 0


def _cmd_jobs_enqueue(args: argparse.Namespace) -> int:
    from pricepipe.codec import decode_json
    from pricepipe.connections import redis_client
    from pricepipe.exceptions import ConfigError
    from pricepipe.flags import redis_settings

    from .jobs import JOBS, enqueue

    spec = JOBS.get(args.job)
    if spec is None:
        raise ConfigError(f"unknown job {args.job!r}; known: {', '.join(JOBS)}")
    kwargs: dict[str, Any] = {}
    for item in args.args:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"job arguments are key=value, not {item!r}")
        try:
            kwargs[key] = decode_json(value)  # numbers, true/false, null, "strings"
        except ValueError:
            kwargs[key] = value
    rs = redis_settings(args)
    r = redis_client(rs)
    try:
        job = enqueue(r, rs.keys.rq_queue(spec.queue), spec.func,
                      kwargs=kwargs)
        print(f"enqueued {args.job} as job {job.id}")
        return 0
    finally:
        r.close()


def _cmd_backfill(args: argparse.Namespace) -> int:
    from pricepipe.flags import database_settings, redis_settings

    _check_range(args)
    kwargs: dict[str, Any] = {"symbol": args.symbol, "start_us": args.start,
                              "end_us": args.end, "interval_s": args.interval_s,
                              "seed": args.seed}
    if args.source != "gbm":
        from .backfill import resolve_symbol

        local, upstream = resolve_symbol(args.source, args.symbol, args.upstream)
        kwargs = {"symbol": local, "start_us": args.start, "end_us": args.end,
                  "source": args.source, "upstream": upstream, "candles": not args.no_candles,
                  "force_source": args.force_source}
    if args.enqueue:
        from pricepipe.connections import redis_client

        from .jobs import BULK, enqueue

        rs = redis_settings(args)
        r = redis_client(rs)
        try:
            job = enqueue(r, rs.keys.rq_queue(BULK),
                          "pricepipe.workers.jobs.backfill_history", kwargs=kwargs)
        finally:
            r.close()
        print(f"enqueued backfill of {kwargs['symbol']} as job {job.id}")
        return 0

    from tqdm import tqdm

    if args.source != "gbm":
        from pricepipe.connections import redis_client

        from .backfill import run_venue_backfill

        rs = redis_settings(args)
        r = redis_client(rs) if rs.url else None
        try:
            with tqdm(unit="trade", desc=kwargs["symbol"], disable=args.quiet) as bar:
                def set_total(n: int) -> None:
                    bar.total = n
                    bar.refresh()

                done = run_venue_backfill(
                    database_settings(args).require_url(), args.source, kwargs["symbol"],
                    kwargs["upstream"], args.start, args.end,
                    redis=(r, rs.keys) if r is not None else None, candles=kwargs["candles"],
                    force_source=args.force_source, base_url=args.base_url,
                    progress=bar.update, total=set_total)
        finally:
            if r is not None:
                r.close()
        print(f"backfilled {done.symbol}: {done.trades} trade(s) from {done.source}, "
              f"{done.inserted} new, {done.candle_bars} bar(s) from candles"
              + (f", resumed after trade {done.resumed_at}" if done.resumed_at is not None
                 else "") + f" ({done.requests} request(s))")
        return 0

    from .backfill import backfill
    from .history import GBMHistory
    from .sink import EventSink

    source = GBMHistory(interval_s=args.interval_s, seed=args.seed)
    total = source.expected_count(args.symbol, args.start, args.end)
    with EventSink(database_settings(args).require_url(),
                   application_name="pricepipe-backfill") as sink, \
            tqdm(total=total, unit="trade", desc=args.symbol, disable=args.quiet) as bar:
        result = backfill(sink, source, args.symbol, args.start, args.end,
                          progress=bar.update)
    print(f"backfilled {args.symbol}: {result.trades} trade(s) from {result.source}, "
          f"{result.inserted} new")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import sys

    from pricepipe.connections import pg_connect
    from pricepipe.flags import database_settings
    from pricepipe.keys import Channel

    from .export import export_csv

    _check_range(args)
    channel = Channel.QUOTES if args.quotes else Channel.TRADES
    conn = pg_connect(database_settings(args).require_read_url(),
                      application_name="pricepipe-export", readonly=True)
    try:
        if args.out == "-":
            rows = export_csv(conn, sys.stdout, args.symbol, args.start, args.end,
                              channel=channel)
        else:
            tmp = f"{args.out}.part"
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                rows = export_csv(conn, out, args.symbol, args.start, args.end,
                                  channel=channel)
            os.replace(tmp, args.out)
    finally:
        conn.close()
    what = "quote(s)" if args.quotes else "trade(s)"
    print(f"exported {rows} {what} of {args.symbol}"
          + ("" if args.out == "-" else f" to {args.out}"), file=sys.stderr)
    return 0


def _cmd_bars(args: argparse.Namespace) -> int:
    from pricepipe.clock import format_us
    from pricepipe.connections import pg_connect
    from pricepipe.flags import database_settings

    from . import rollup

    _check_range(args)
    conn = pg_connect(database_settings(args).require_url(), application_name="pricepipe-bars")
    try:
        if args.bars_command == "rebuild":
            print(f"rebuilt {rollup.rebuild(conn, args.start, args.end, args.symbol)} bar(s)")
            return 0
        mismatches = rollup.verify(conn, args.start, args.end, args.symbol)
        for m in mismatches:
            print(f"{m.symbol} {m.bucket.isoformat()}: trades in bar {m.actual_trades}, "
                  f"recomputed {m.expected_trades}")
        print(f"{len(mismatches)} bar(s) differ from their trades between "
              f"{format_us(args.start)} and {format_us(args.end)}")
        if mismatches and args.repair:
            print(f"rebuilt {rollup.rebuild(conn, args.start, args.end, args.symbol)} bar(s)")
            return 0
        return 1 if mismatches else 0
    finally:
        conn.close()


def _range_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", type=_time_us, required=True,
                   help="start (inclusive): ISO-8601 or epoch seconds/ms/us")
    p.add_argument("--end", type=_time_us, required=True, help="end (exclusive)")


def register(subparsers: Any) -> None:
    from pricepipe.flags import add_server_flags

    p = subparsers.add_parser(
        "persist", help="persist worker: Redis Streams -> PostgreSQL (trades, quotes, 1m bars)")
    add_server_flags(p)
    p.add_argument("--name", help="consumer name, stable across restarts (default: host-pid)")
    p.add_argument("--burst", action="store_true",
                   help="drain what is in the streams now (including pending), then exit 0")
    p.add_argument("--batch-size", type=int, default=None,
                   help="entries per transaction (env PRICEPIPE_WORKER_BATCH_SIZE)")
    p.add_argument("--check", action="store_true",
                   help="exit 0 if the worker --name has a live heartbeat, else 1 (health check)")
    p.add_argument("--claim-idle-ms", type=int, default=None,
                   help="claim other consumers' entries pending this long "
                        "(env PRICEPIPE_WORKER_CLAIM_IDLE_MS)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port, on loopback "
                        "(env PRICEPIPE_WORKER_METRICS_PORT, _METRICS_HOST)")
    p.set_defaults(func=_cmd_persist)

    p = subparsers.add_parser("dlq", help="dead letters: entries that could not be persisted")
    dlq = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    q = dlq.add_parser("list", help="show dead letters with their reasons")
    add_server_flags(q, database=False)
    q.add_argument("--limit", type=int, default=None, help="show at most this many")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_cmd_dlq_list)
    q = dlq.add_parser("replay", help="append dead letters to their streams again (after a "
                       "fix); letters whose row is already in PostgreSQL are deleted instead")
    add_server_flags(q)
    q.add_argument("ids", nargs="*", help="dead-letter IDs or original entry IDs")
    q.add_argument("--all", action="store_true", help="replay every dead letter")
    q.set_defaults(func=_cmd_dlq_replay)
    q = dlq.add_parser("delete", help="drop dead letters for good")
    add_server_flags(q, database=False)
    q.add_argument("ids", nargs="+", help="dead-letter IDs or original entry IDs")
    q.set_defaults(func=_cmd_dlq_delete)

    p = subparsers.add_parser("jobs", help="rq jobs: partitions, retention, bars, backfill")
    jobs = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    q = jobs.add_parser("worker", help="run an rq worker for pricepipe's job queues")
    add_server_flags(q)
    q.add_argument("--name", help="worker name (default: rq's)")
    q.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    q.add_argument("--queue", action="append",
                   help="short queue name (repeatable; default: maintenance, bulk)")
    q.set_defaults(func=_cmd_jobs_worker)
    q = jobs.add_parser("scheduler", help="run rq's cron scheduler with pricepipe's schedule")
    add_server_flags(q, database=False)
    q.add_argument("--name", help="scheduler name (default: rq's)")
    q.set_defaults(func=_cmd_jobs_scheduler)
    q = jobs.add_parser("list", help="show the schedule and the jobs known to enqueue")
    q.set_defaults(func=_cmd_jobs_list)
    q = jobs.add_parser("enqueue", help="enqueue a job now (with the retry policy)")
    add_server_flags(q, database=False)
    q.add_argument("job", help="job name (see `pricepipe jobs list`)")
    q.add_argument("args", nargs="*", help="job arguments as key=value (JSON values)")
    q.set_defaults(func=_cmd_jobs_enqueue)

    p = subparsers.add_parser(
        "backfill", help="write a symbol's trade history into PostgreSQL: a venue's real "
        "trades (binance, coinbase) or simulated ones (gbm)")
    add_server_flags(p)
    p.add_argument("symbol", type=_symbol,
                   help="the symbol; a venue's is venue-qualified (BTCUSDT: BINANCE:BTCUSDT) "
                        "unless --upstream names it")
    _range_flags(p)
    p.add_argument("--source", choices=("gbm", "binance", "coinbase"), default="gbm",
                   help="where the history comes from (default gbm, simulated)")
    p.add_argument("--upstream", help="the venue's symbol, when SYMBOL is a local name")
    p.add_argument("--base-url", help="the venue's REST base URL (a fake venue, a mirror); "
                                      "a job uses the worker's PRICEPIPE_<VENUE>_BASE_URL")
    p.add_argument("--no-candles", action="store_true",
                   help="no bars from the venue's candles for minutes whose trades it no "
                        "longer serves")
    p.add_argument("--force-source", action="store_true",
                   help="backfill even if the source registry records other trade ids")
    p.add_argument("--interval-s", type=float, default=1.0, help="gbm: seconds between trades")
    p.add_argument("--seed", type=int, default=0, help="gbm: seed of the simulated history")
    p.add_argument("--enqueue", action="store_true", help="run as an rq job instead of here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_backfill)

    p = subparsers.add_parser("export", help="write a symbol's trades (or quotes) over a range "
                              "as CSV")
    add_server_flags(p, redis=False)
    p.add_argument("symbol", type=_symbol)
    _range_flags(p)
    p.add_argument("--out", required=True, help="CSV file to write ('-': standard output)")
    p.add_argument("--quotes", action="store_true", help="export the quotes instead of the trades")
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser("bars", help="check or rebuild 1-minute bars from the trades")
    bars = p.add_subparsers(dest="bars_command", required=True, metavar="ACTION")
    for action, text in (("verify", "compare bars with their recomputation (exit 1 if any "
                          "differ)"), ("rebuild", "recompute the bars of the range")):
        q = bars.add_parser(action, help=text)
        add_server_flags(q, redis=False)
        _range_flags(q)
        q.add_argument("--symbol", type=_symbol, default=None, help="only this symbol")
        if action == "verify":
            q.add_argument("--repair", action="store_true", help="rebuild if any differ")
        q.set_defaults(func=_cmd_bars)
