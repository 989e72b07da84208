"""Daily partitions of ``trades`` and ``quotes``: created ahead of time,
dropped whole for retention.

Partitions are named ``<table>_YYYYMMDD`` and cover one UTC day (migration
0004, ``ensure_partitions(parent, first_day, last_day)``). Dropping a
partition removes a day of events in one catalog operation, without the
bloat and WAL of a ``DELETE``. Each table has its own retention: quotes
outnumber trades and are often kept for less time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta
from typing import Any

import psycopg2.errors
from psycopg2 import sql
from redis.backoff import EqualJitterBackoff

#: The partitioned event tables.
TABLES = ("trades", "quotes")

_NAME_RE = re.compile(r"(trades|quotes)_(\d{4})(\d{2})(\d{2})")

LIST_SQL = """
    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = %s::regclass ORDER BY c.relname
"""


def partition_day(name: str) -> tuple[str, date] | None:
    """``(table, day)`` of a partition named ``<table>_YYYYMMDD``, or None for
    other names."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    try:
        return match[1], date(int(match[2]), int(match[3]), int(match[4]))
    except ValueError:
        return None


def expired(names: Iterable[str], *, today: date,
            retention_days: Mapping[str, int | None]) -> list[str]:
    """Partitions entirely older than their table's retention before ``today`` (UTC).

    A partition of day D is dropped once D < today - retention_days: with 30
    days' retention, today's and the 30 previous days' partitions stay. A
    table whose retention is None (or missing) keeps everything.
    """
    out = []
    for name in names:
        parsed = partition_day(name)
        if parsed is None:
            continue
        table, day = parsed
        days = retention_days.get(table)
        if days is not None and day < today - timedelta(days=days):
            out.append(name)
    return out


def list_partitions(conn: Any, table: str | None = None) -> list[str]:
    """Partition names of ``table`` (default: every event table), sorted."""
    names: list[str] = []
    with conn.cursor() as cur:
        for parent in (table,) if table else TABLES:
            cur.execute(LIST_SQL, (parent,))
            names.extend(row[0] for row in cur.fetchall())
    conn.commit()
    return sorted(names)


#: How long creating partitions waits for its lock on the parent table, ms.
LOCK_TIMEOUT_MS = 200


def create_partitions(cur: Any, table: str, first_day: date, last_day: date, *,
                      lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> int:
    """``ensure_partitions(table, first_day, last_day)`` in the cursor's
    transaction, waiting at most ``lock_timeout_ms`` for a lock; returns how
    many partitions were created.

    ``CREATE TABLE ... PARTITION OF`` takes an ``ACCESS EXCLUSIVE`` lock on
    the parent. While it waits for one (behind a long read, a CSV export),
    every later read and write of the table queues behind the request
    (PostgreSQL grants locks in order: "Explicit Locking", section 13.3.1 of
    its manual). ``lock_timeout`` (``SET LOCAL``: this transaction only)
    withdraws the request instead, raising ``psycopg2.errors.LockNotAvailable``:
    roll back and try again later. Days whose partition exists take no lock.
    """
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (str(int(lock_timeout_ms)),))
    cur.execute("SELECT ensure_partitions(%s, %s, %s)", (table, first_day, last_day))
    row = cur.fetchone()
    return int(row[0]) if row else 0


def ensure_ahead(conn: Any, *, today: date, days_ahead: int, days_behind: int = 1,
                 lock_timeout_ms: int = LOCK_TIMEOUT_MS, attempts: int = 30,
                 wait_s: Callable[[int], float] | None = None) -> int:
    """Create the partitions of every event table from ``today - days_behind``
    to ``today + days_ahead`` that are missing. Returns how many were
    created. Idempotent.

    Each table's partitions are created in one transaction that waits at most
    ``lock_timeout_ms`` for its lock (see :func:`create_partitions`); one that
    gives up is retried, ``attempts`` times in all, waiting ``wait_s(n)``
    seconds after the n-th (capped, jittered backoff by default), then
    ``LockNotAvailable`` is raised (the job's own retries take over).
    """
    backoff = EqualJitterBackoff(cap=5.0, base=0.2)
    wait = wait_s or backoff.compute
    created = 0
    for table in TABLES:
        for attempt in range(1, attempts + 1):
            try:
                with conn.cursor() as cur:
                    created += create_partitions(
                        cur, table, today - timedelta(days=days_behind),
                        today + timedelta(days=days_ahead), lock_timeout_ms=lock_timeout_ms)
                conn.commit()
                break
            except psycopg2.errors.LockNotAvailable:
                conn.rollback()
                if attempt == attempts:
                    raise
                time.sleep(wait(attempt))
            except BaseException:
                conn.rollback()
                raise
    return created


def drop_expired(conn: Any, *, today: date, retention_days: Mapping[str, int | None],
                 lock_timeout_ms: int = 5000) -> list[str]:
    """Drop the partitions older than their table's retention; returns their names.

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
