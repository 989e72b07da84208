"""Daily partitions of ``ticks``: created ahead of time, dropped whole for retention.

Partitions are named ``ticks_YYYYMMDD`` and cover one UTC day (migration
0001, ``ensure_tick_partitions``). Dropping a partition removes a day of
ticks in one catalog operation, without the bloat and WAL of a ``DELETE``.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from psycopg2 import sql

_NAME_RE = re.compile(r"ticks_(\d{4})(\d{2})(\d{2})")

LIST_SQL = """
    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'ticks'::regclass ORDER BY c.relname
"""


def partition_day(name: str) -> date | None:
    """The day a partition named ``ticks_YYYYMMDD`` covers, or None for other names."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def expired(names: list[str], *, today: date, retention_days: int) -> list[str]:
    """Partitions entirely older than ``retention_days`` before ``today`` (UTC).

    A partition of day D is dropped once D < today - retention_days: with 30
    days' retention, today's and the 30 previous days' partitions stay.
    """
    cutoff = today - timedelta(days=retention_days)
    out = []
    for name in names:
        day = partition_day(name)
        if day is not None and day < cutoff:
            out.append(name)
    return out


def list_partitions(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(LIST_SQL)
        names = [row[0] for row in cur.fetchall()]
    conn.commit()
    return names


def ensure_ahead(conn: Any, *, today: date, days_ahead: int, days_behind: int = 1) -> int:
    """Create the partitions from ``today - days_behind`` to ``today + days_ahead``
    that are missing. Returns how many were created. Idempotent."""
    with conn.cursor() as cur:
        cur.execute("SELECT ensure_tick_partitions(%s, %s)",
                    (today - timedelta(days=days_behind), today + timedelta(days=days_ahead)))
        row = cur.fetchone()
    conn.commit()
    return int(row[0]) if row else 0


def drop_expired(conn: Any, *, today: date, retention_days: int,
                 lock_timeout_ms: int = 5000) -> list[str]:
    """Drop the partitions older than the retention; returns their names.

    Dropping a partition briefly locks the parent table: ``lock_timeout``
    makes a busy moment fail fast (the job is retried) instead of stalling
    the persist workers behind it.
    """
    dropped = []
    for name in expired(list_partitions(conn), today=today, retention_days=retention_days):
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (str(lock_timeout_ms),))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        dropped.append(name)
    return dropped
