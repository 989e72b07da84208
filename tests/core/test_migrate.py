from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from pricepipe.migrate import available, migrate
from tests.helpers import recreate_database


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
    url = recreate_database(pg_server, "pricepipe_fresh", template="template0")
    conn = psycopg2.connect(url)
    try:
        assert migrate(conn) == [m.version for m in available()]
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('trades'), to_regclass('quotes'),"
                        " to_regclass('bars_1m'), to_regclass('instruments'),"
                        " to_regclass('ticks')")
            assert cur.fetchone() == ("trades", "quotes", "bars_1m", "instruments", None)
    finally:
        conn.close()


def test_the_database_refuses_what_the_event_model_refuses(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            trade = ("INSERT INTO trades (symbol, ts, price, size, side, source, entry_id)"
                     " VALUES ('AAPL', now(), %s::float8, %s::float8, %s, 'test', 1)")
            for price, size, side in [("NaN", None, None), ("Infinity", None, None),
                                      ("0", None, None), ("-1", None, None), ("1", "-1", None),
                                      ("1", "0", None), ("1", "NaN", None), ("1", "1", "up")]:
                with pytest.raises(psycopg2.errors.CheckViolation):
                    cur.execute(trade, (price, size, side))
            cur.execute(trade, ("1.5", None, "sell"))
            quote = ("INSERT INTO quotes (symbol, ts, bid, bid_size, ask, ask_size, source,"
                     " entry_id) VALUES ('AAPL', now(), %s::float8, %s::float8, %s::float8,"
                     " %s::float8, 'test', 1)")
            for book in [(None, None, None, None), ("2", None, "1", None), ("-1", None, "1", None),
                         ("1", "-1", "2", None), (None, "1", "2", None), ("1", None, "NaN", None)]:
                with pytest.raises(psycopg2.errors.CheckViolation):
                    cur.execute(quote, book)
            cur.execute(quote, ("1", "0", None, None))  # one-sided, empty size: a quote
    finally:
        conn.close()


def test_ticks_become_trades_and_their_bars_are_rebuilt(pg_server: Any) -> None:
    """Migration 0004 on a database that has ticks: a tick is a trade (a size
    of 0 is unknown), and the bars are recomputed with notional and count."""
    url = recreate_database(pg_server, "pricepipe_upgrade", template="template0")
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                        " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        conn.autocommit = False
        for migration in available():
            if migration.version >= 4:
                break
            with conn.cursor() as cur:
                cur.execute(migration.sql)
                cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            (migration.version, migration.name))
        with conn.cursor() as cur:
            cur.execute("SELECT ensure_tick_partitions('2026-01-02', '2026-01-02')")
            cur.execute("INSERT INTO ticks (symbol, ts, price, size, source, entry_id) VALUES"
                        " ('AAPL', '2026-01-02T03:04:05Z', 10, 2, 'gbm', 1),"
                        " ('AAPL', '2026-01-02T03:04:06Z', 12, 0, 'gbm', 2)")
        conn.commit()
        assert migrate(conn) == [m.version for m in available() if m.version >= 4]
        with conn.cursor() as cur:
            cur.execute("SELECT price, size FROM trades ORDER BY entry_id")
            assert cur.fetchall() == [(10.0, 2.0), (12.0, None)]
            cur.execute("SELECT open, close, volume, notional, trade_count FROM bars_1m")
            assert cur.fetchall() == [(10.0, 12.0, 2.0, 20.0, 2)]
    finally:
        conn.close()
