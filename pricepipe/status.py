"""``pricepipe status``: what is in the streams, how far behind the persist
group is, and what PostgreSQL holds. Collection (I/O) is separate from
rendering (pure)."""

from __future__ import annotations

from typing import Any

import redis

from .config import DatabaseSettings, RedisSettings
from .keys import PERSIST_GROUP, Keys


def stream_stats(r: Any, keys: Keys, symbols: list[str]) -> list[dict[str, Any]]:
    """Length, persist-group lag and pending count of each symbol's stream."""
    out = []
    for symbol in symbols:
        stream = keys.stream(symbol)
        row: dict[str, Any] = {"symbol": symbol, "length": 0, "lag": None, "pending": None}
        try:
            row["length"] = int(r.xlen(stream))
            for info in r.xinfo_groups(stream):
                name = info["name"]
                if (name.decode() if isinstance(name, bytes) else name) == PERSIST_GROUP:
                    row["pending"] = int(info["pending"])
                    row["lag"] = info.get("lag")
        except redis.ResponseError:
            pass
        out.append(row)
    return out


def collect(redis_settings: RedisSettings, db_settings: DatabaseSettings) -> dict[str, Any]:
    """Gather the status report; a server that cannot be reached is reported,
    not raised, so the command is useful during an outage."""
    from .connections import pg_connect, redis_client
    from .streams import known_symbols

    keys = Keys(redis_settings.prefix, redis_settings.shards)
    report: dict[str, Any] = {"streams": [], "redis_error": None, "database_error": None,
                              "rows": None}
    try:
        r = redis_client(redis_settings)
        symbols = known_symbols(r, keys)
        report["streams"] = stream_stats(r, keys, symbols)
        report["dead_letters"] = sum(int(r.xlen(keys.dead_letters(s))) for s in keys.all_shards())
    except (redis.RedisError, OSError) as exc:
        report["redis_error"] = str(exc)
    try:
        import psycopg2

        conn = pg_connect(db_settings.require_url(), application_name="pricepipe-status")
        try:
            with conn.cursor() as cur:
                # Planner statistics would be cheaper but lag behind; status
                # is run by people, so an exact count is worth a scan.
                cur.execute("SELECT count(*) FROM ticks")
                row = cur.fetchone()
                report["rows"] = int(row[0]) if row else 0
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
        lines.append(f"{'symbol':<16} {'length':>10} {'lag':>10} {'pending':>10}")
        for s in streams:
            lines.append(
                f"{s['symbol']:<16} {s['length']:>10} {str(s['lag']):>10} {str(s['pending']):>10}"
            )
    total_len = sum(s["length"] for s in streams)
    lines.append(f"streams: {len(streams)}, entries in Redis: {total_len}, "
                 f"dead letters: {report.get('dead_letters', 0)}")
    lines.append(f"rows persisted: {report.get('rows')}")
    return "\n".join(lines)
