"""deploy/sql/roles.sql on a fresh PostgreSQL, in install.sh's order: roles
first (twice: it is idempotent), then migrations as the writer role (which may
not create roles), then the API reading through
``PRICEPIPE_DATABASE_READ_URL`` as the read-only login."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from pricepipe.clock import now_us, us_to_datetime
from pricepipe.embedded import PostgresServer, find_pg_bindir, free_port
from tests.helpers import wait_http

from .helpers import DEPLOY

NAMES = {"dbname": "pricepipe", "writer": "pricepipe_writer", "reader": "pricepipe_reader",
         "api": "pricepipe_api"}


@pytest.fixture
def fresh_pg() -> Iterator[PostgresServer]:
    """A new PostgreSQL cluster in which no pricepipe role exists yet."""
    directory = Path(tempfile.mkdtemp(prefix="pricepipe-roles-"))
    directory.chmod(0o755)  # PostgreSQL may run as another user when we are root
    server = PostgresServer(directory / "pg", database="postgres", fsync=False,
                            extra_settings={"log_connections": "on"})
    server.start()
    yield server
    server.kill()
    shutil.rmtree(directory, ignore_errors=True)


def run_roles_sql(server: PostgresServer, passwords: tuple[str, str]) -> None:
    psql = shutil.which("psql") or str(find_pg_bindir() / "psql")
    # As install.sh does: names as -v variables, passwords through stdin.
    script = (f"\\set writer_password {passwords[0]}\n\\set api_password {passwords[1]}\n"
              + (DEPLOY / "sql" / "roles.sql").read_text())
    result = subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.url_for("postgres"),
         *[a for k, v in NAMES.items() for a in ("-v", f"{k}={v}")]],
        input=script, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def url(server: PostgresServer, role: str) -> str:
    return f"postgresql://{role}@127.0.0.1:{server.port}/{NAMES['dbname']}"


def test_roles_then_migrations_then_least_privilege(
    fresh_pg: PostgresServer, pipeline_env: dict[str, str],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    run_roles_sql(fresh_pg, ("w1", "a1"))
    run_roles_sql(fresh_pg, ("w2", "a2"))  # re-run: rotates passwords only

    # pricepipe-migrate.service: `pricepipe migrate` with the writer's URL.
    env = dict(pipeline_env, PRICEPIPE_DATABASE_URL=url(fresh_pg, NAMES["writer"]),
               PRICEPIPE_DATABASE_READ_URL=url(fresh_pg, NAMES["api"]))
    migrated = spawn(["migrate"], env=env)
    assert migrated.wait(60) == 0, migrated.stdout.read() if migrated.stdout else ""

    ts = us_to_datetime(now_us() - 60_000_000)
    writer = psycopg2.connect(url(fresh_pg, NAMES["writer"]))
    api = psycopg2.connect(url(fresh_pg, NAMES["api"]))
    try:
        with writer, writer.cursor() as cur:
            cur.execute("SELECT ensure_partitions('trades', %s, %s)", (ts.date(), ts.date()))
            cur.execute("INSERT INTO trades (symbol, ts, price, size, source, entry_id) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", ("AAPL", ts, 1.5, 2.0, "test", 1))
            cur.execute("SELECT rolcreaterole, rolsuper FROM pg_roles WHERE rolname = %s",
                        (NAMES["writer"],))
            assert cur.fetchone() == (False, False)
        with api.cursor() as cur:
            cur.execute("SELECT symbol, price FROM trades")
            assert cur.fetchall() == [("AAPL", 1.5)]
            cur.execute("SELECT count(*) FROM bars_1m")  # tables of later migrations too
        api.rollback()
        api.autocommit = True
        with api.cursor() as cur:
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("INSERT INTO instruments (symbol) VALUES (%s)", ("X",))
            cur.execute("SET default_transaction_read_only = off")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("INSERT INTO instruments (symbol) VALUES (%s)", ("X",))
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("CREATE TABLE sneaky (x int)")
    finally:
        writer.close()
        api.close()

    # The API serves history through PRICEPIPE_DATABASE_READ_URL (here the read-only
    # login; on a multi-VM deployment a streaming replica).
    port = free_port()
    server = spawn(["api", "--host", "127.0.0.1", "--port", str(port)], env=env)
    trades_url = f"http://127.0.0.1:{port}/v1/trades/AAPL"
    wait_http(trades_url, server)
    with urllib.request.urlopen(trades_url, timeout=5) as response:
        body = json.loads(response.read())
    assert [(t["symbol"], t["price"]) for t in body["trades"]] == [("AAPL", 1.5)]
    # Which role the API's connections authenticated as (log_connections).
    log = (fresh_pg.data_dir / "postgres.log").read_text(errors="replace")
    users = set(re.findall(r"connection authorized: user=(\S+) database=pricepipe "
                           r"application_name=pricepipe-api", log))
    assert users == {NAMES["api"]}, log[-2000:]
