"""Versioned SQL migrations.

Files ``pricepipe/migrations/NNNN_name.sql`` are applied in order of their
number, each in its own transaction, and recorded in ``schema_migrations``.
A PostgreSQL advisory lock serialises concurrent runs (several workers
starting at once), and applied versions are skipped, so running it twice is
safe.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2
import psycopg2.extensions

from .exceptions import MigrationError

log = logging.getLogger(__name__)

#: Arbitrary constant naming pricepipe's migration lock (pg_advisory_lock key).
LOCK_KEY = 0x7072_6963_6570_6970 & 0x7FFF_FFFF_FFFF_FFFF

_NAME_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    out = []
    for entry in resources.files("pricepipe.migrations").iterdir():
        match = _NAME_RE.fullmatch(entry.name)
        if match:
            out.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return out


def applied(conn: psycopg2.extensions.connection) -> set[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return set()
        cur.execute("SELECT version FROM schema_migrations")
        return {v for (v,) in cur.fetchall()}


def migrate(conn: psycopg2.extensions.connection) -> list[int]:
    """Apply pending migrations; returns the versions applied now.

    Raises :exc:`MigrationError` (the failed migration is rolled back).
    """
    conn.autocommit = True
    done: list[int] = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        have = applied(conn)
        for migration in available():
            if migration.version in have:
                continue
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    cur.execute(migration.sql)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                conn.commit()
            except psycopg2.Error as exc:
                conn.rollback()
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            finally:
                conn.autocommit = True
            log.info("applied migration %04d_%s", migration.version, migration.name)
            done.append(migration.version)
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done
