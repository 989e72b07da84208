"""``pricepipe status``: what is in the streams, how far behind the persist
group is, what PostgreSQL holds, and which processes are alive (persist
workers and websocket servers by their heartbeat keys, rq workers and cron
schedulers by rq's registries). Collection (I/O) is separate from
rendering (pure)."""

from __future__ import annotations

from typing import Any

import redis

from .config import DatabaseSettings, RedisSettings
from .keys import PERSIST_GROUP, PERSISTED, Keys

#: Tables of events, each partitioned by day.
EVENT_TABLES = ("trades", "quotes")


def stream_stats(r: Any, keys: Keys, symbols: list[str]) -> list[dict[str, Any]]:
    """Length, persist-group lag and pending count of each persisted stream."""
    out = []
    for symbol in symbols:
        for channel in PERSISTED:
            out.append(_stream_row(r, keys.stream(symbol, channel),
                                   {"symbol": symbol, "channel": str(channel)}))
    return out


def _stream_row(r: Any, stream: str, row: dict[str, Any]) -> dict[str, Any]:
    row.update({"length": 0, "lag": None, "pending": None})
    try:
        row["length"] = int(r.xlen(stream))
        for info in r.xinfo_groups(stream):
            name = info["name"]
            if (name.decode() if isinstance(name, bytes) else name) == PERSIST_GROUP:
                row["pending"] = int(info["pending"])
                row["lag"] = info.get("lag")
    except redis.ResponseError:
        pass
    return row


def job_stats(r: Any, keys: Keys) -> list[dict[str, Any]]:
    """Per rq queue of this deployment (name starting with ``keys.rq_queue("")``):
    jobs waiting, running, scheduled for a retry, deferred and failed."""
    from rq import Queue

    prefix = keys.rq_queue("")
    out = []
    for queue in sorted(Queue.all(connection=r), key=lambda q: q.name):
        if not queue.name.startswith(prefix):
            continue
        out.append({
            "queue": queue.name,
            "queued": queue.count,
            "started": queue.started_job_registry.count,
            "scheduled": queue.scheduled_job_registry.count,
            "deferred": queue.deferred_job_registry.count,
            "failed": queue.failed_job_registry.count,
        })
    return out


def worker_stats(r: Any, keys: Keys, role: str = "persist") -> list[dict[str, Any]]:
    """Live workers of ``role`` (their heartbeat key has not expired) and what
    they last reported."""
    import orjson

    out = []
    for key in sorted(r.scan_iter(match=keys.heartbeat_pattern(role), count=500)):
        text = key.decode() if isinstance(key, bytes) else key
        raw = r.get(key)
        try:
            info = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            info = {}
        out.append({"name": text.rsplit(":", 1)[-1], **(info if isinstance(info, dict) else {})})
    return out


def _age_s(now_ms: int, ts_ms: Any) -> float | None:
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int | float):
        return None
    return round(max(now_ms - ts_ms, 0) / 1000, 1)


def ws_stats(r: Any, keys: Keys, *, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Live websocket servers (their heartbeat key has not expired): name,
    state (``ok`` or ``degraded``, as their ``/healthz``), connections and
    the age of the last heartbeat, seconds (None for a server that does not
    date its heartbeat)."""
    from .clock import now_ms as clock_ms

    now = clock_ms() if now_ms is None else now_ms
    out = []
    for info in worker_stats(r, keys, role="ws"):
        out.append({"name": info["name"], "state": info.get("status", "unknown"),
                    "connections": info.get("connections"),
                    "heartbeat_age_s": _age_s(now, info.get("ts_ms"))})
    return out


def rq_worker_stats(r: Any, keys: Keys, worker_options: dict[str, Any], *,
                    now_ms: int | None = None) -> list[dict[str, Any]]:
    """rq workers serving this deployment's queues (registered, not yet
    dead): name, state (``idle``, ``busy`` ...), queues, current job and the
    age of the last heartbeat, seconds. ``worker_options``: the jobs role's
    rq options (its serializer), given by the command."""
    from rq import Worker

    from .clock import now_ms as clock_ms

    now = clock_ms() if now_ms is None else now_ms
    prefix = keys.rq_queue("")
    out = []
    for worker in sorted(Worker.all(connection=r, **worker_options), key=lambda w: w.name):
        queues = worker.queue_names()
        if not any(q.startswith(prefix) for q in queues):
            continue
        beat = worker.last_heartbeat
        out.append({"name": worker.name, "state": str(worker.get_state()),
                    "queues": queues, "job": worker.get_current_job_id(),
                    "heartbeat_age_s": _age_s(now, beat.timestamp() * 1000) if beat else None})
    return out


def rq_scheduler_stats(r: Any, *, now_ms: int | None = None) -> list[dict[str, Any]]:
    """rq cron schedulers registered (rq's registry, scored by their last
    heartbeat; shared by every deployment on this Redis): name and the age
    of the last heartbeat, seconds. Read only: rq's cleanup of stale
    entries is left to rq."""
    from rq.cron_scheduler_registry import get_registry_key

    from .clock import now_ms as clock_ms

    now = clock_ms() if now_ms is None else now_ms
    out = []
    for name, score in r.zrange(get_registry_key(), 0, -1, withscores=True):
        out.append({"name": name.decode() if isinstance(name, bytes) else name,
                    "heartbeat_age_s": _age_s(now, score * 1000)})
    return out


def collect(redis_settings: RedisSettings, db_settings: DatabaseSettings, *,
            rq_worker_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Gather the status report; a server that cannot be reached is reported,
    not raised, so the command is useful during an outage. rq workers are
    listed when ``rq_worker_options`` (the jobs role's, see
    :func:`rq_worker_stats`) are given."""
    from .connections import pg_connect, redis_client
    from .streams import known_symbols

    keys = redis_settings.keys
    report: dict[str, Any] = {"streams": [], "redis_error": None, "database_error": None,
                              "rows": None}
    try:
        r = redis_client(redis_settings)
        symbols = known_symbols(r, keys)
        report["streams"] = stream_stats(r, keys, symbols)
        report["dead_letters"] = sum(int(r.xlen(keys.dead_letters(s))) for s in keys.all_shards())
        report["persist_workers"] = worker_stats(r, keys)
        report["ws_servers"] = ws_stats(r, keys)
        try:
            report["jobs"] = job_stats(r, keys)
            if rq_worker_options is not None:
                report["rq_workers"] = rq_worker_stats(r, keys, rq_worker_options)
            report["rq_schedulers"] = rq_scheduler_stats(r)
        except redis.RedisError as exc:  # e.g. rq on a Redis Cluster (unsupported by rq)
            report["jobs_error"] = str(exc)
        r.close()
    except (redis.RedisError, OSError) as exc:
        report["redis_error"] = str(exc)
    try:
        import psycopg2
        from psycopg2 import sql

        conn = pg_connect(db_settings.require_url(), application_name="pricepipe-status")
        try:
            with conn.cursor() as cur:
                # Planner statistics would be cheaper but lag behind; status
                # is run by people, so an exact count is worth a scan.
                report["rows"] = {}
                report["partitions"] = {}
                for table in EVENT_TABLES:
                    # A constant table name, never a value from outside.
                    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                    row = cur.fetchone()
                    report["rows"][table] = int(row[0]) if row else 0
                    cur.execute(
                        "SELECT count(*), min(c.relname), max(c.relname) FROM pg_inherits i"
                        " JOIN pg_class c ON c.oid = i.inhrelid"
                        " WHERE i.inhparent = %s::regclass", (table,))
                    row = cur.fetchone()
                    if row:
                        report["partitions"][table] = {"count": int(row[0]), "oldest": row[1],
                                                       "newest": row[2]}
                cur.execute("SELECT count(*) FROM bars_1m")
                row = cur.fetchone()
                report["bars_1m"] = int(row[0]) if row else 0
        finally:
            conn.close()
    except psycopg2.Error as exc:
        report["database_error"] = str(exc).strip()
    return report


def render(report: dict[str, Any]) -> str:
    lines = []
    if report.get("redis_error"):
        lines.append(f"redis: unreachable ({report['redis_error']})")
    if report.get("database_error"):
        lines.append(f"database: unreachable ({report['database_error']})")
    streams = report.get("streams") or []
    if streams:
        lines.append(f"{'symbol':<20} {'stream':<8} {'length':>10} {'lag':>10} {'pending':>10}")
        for s in streams:
            lines.append(f"{s['symbol']:<20} {s['channel']:<8} {s['length']:>10} "
                         f"{str(s['lag']):>10} {str(s['pending']):>10}")
    total_len = sum(s["length"] for s in streams)
    lines.append(f"streams: {len(streams)}, entries in Redis: {total_len}, "
                 f"dead letters: {report.get('dead_letters', 0)}")
    rows = report.get("rows")
    if rows is not None:
        lines.append("rows persisted: " + ", ".join(f"{n} {table}" for table, n in rows.items()))
    if report.get("bars_1m") is not None:
        lines.append(f"1-minute bars: {report['bars_1m']}")
    for table, parts in (report.get("partitions") or {}).items():
        lines.append(f"{table} partitions: {parts['count']} "
                     f"({parts['oldest']} .. {parts['newest']})")
    workers = report.get("persist_workers")
    if workers is not None:
        names = ", ".join(w["name"] for w in workers) or "none"
        lines.append(f"persist workers alive: {len(workers)} ({names})")
    lines.extend(_render_processes(report))
    jobs = report.get("jobs")
    if jobs:
        lines.append(f"{'rq queue':<24} {'queued':>8} {'started':>8} {'scheduled':>10} "
                     f"{'deferred':>9} {'failed':>8}")
        for q in jobs:
            lines.append(f"{q['queue']:<24} {q['queued']:>8} {q['started']:>8} "
                         f"{q['scheduled']:>10} {q['deferred']:>9} {q['failed']:>8}")
    elif jobs is not None:
        lines.append("rq queues: none yet")
    if report.get("jobs_error"):
        lines.append(f"rq queues: unavailable ({report['jobs_error']})")
    return "\n".join(lines)


def _age(seconds: Any) -> str:
    return "?" if seconds is None else f"{seconds:.0f}s ago"


def _render_processes(report: dict[str, Any]) -> list[str]:
    """The websocket servers, rq workers and cron schedulers, one line each."""
    lines: list[str] = []
    ws = report.get("ws_servers")
    if ws is not None:
        lines.append(f"websocket servers alive: {len(ws)}")
        lines.extend(f"  {w['name']:<32} {w['state']:<9} {w['connections'] or 0:>6} conn  "
                     f"heartbeat {_age(w['heartbeat_age_s'])}" for w in ws)
    workers = report.get("rq_workers")
    if workers is not None:
        lines.append(f"rq workers: {len(workers)}")
        lines.extend(f"  {w['name']:<32} {w['state']:<9} heartbeat {_age(w['heartbeat_age_s'])}"
                     f"  queues {','.join(w['queues'])}"
                     + (f"  job {w['job']}" if w.get("job") else "") for w in workers)
    schedulers = report.get("rq_schedulers")
    if schedulers is not None:
        lines.append(f"rq cron schedulers: {len(schedulers)}")
        lines.extend(f"  {s['name']:<32} heartbeat {_age(s['heartbeat_age_s'])}"
                     for s in schedulers)
    return lines
