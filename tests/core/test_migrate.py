from typing import Any

import psycopg2

from pricepipe.migrate import available, migrate


def test_migrations_are_recorded_and_safe_to_run_twice(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    try:
        # The template was migrated already: nothing left to apply, twice.
        assert migrate(conn) == []
        assert migrate(conn) == []
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [v for (v,) in cur.fetchall()] == [m.version for m in available()]
    finally:
        conn.close()


def test_fresh_database_migrates_from_zero(pg_server: Any) -> None:
    from tests.conftest import recreate_database

    url = recreate_database(pg_server, "pricepipe_fresh", template="template0")
    conn = psycopg2.connect(url)
    try:
        assert migrate(conn) == [m.version for m in available()]
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('ticks'), to_regclass('instruments')")
            assert all(cur.fetchone() or ())
    finally:
        conn.close()
