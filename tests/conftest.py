"""Fixtures: throwaway real servers on free ports.

* ``redis_server`` / ``pg_server`` (session): a ``redis-server`` with AOF and a
  PostgreSQL cluster started by the test run itself, never the machine's
  standard ports. Tests may stop, kill and restart them; the function-scoped
  fixtures below bring them back up.
* ``redis_url`` (function): the session Redis, flushed before the test.
* ``database_url`` (function): a fresh database cloned from a migrated
  template, so every test starts from the current schema with no rows.
* ``make_redis_server`` / ``make_pg_server``: private servers for tests that
  need their own (chaos, cluster), stopped at the end of the test.
* ``spawn``: start a ``pricepipe`` subprocess; killed at the end of the test.
* ``redis_cluster``: three Redis Cluster masters of private servers.
* ``redis_role_urls``: the session Redis's URL for each role's ACL user.

Every server requires a password, as a deployment's do: the session Redis
has the ACL users of every role (:mod:`pricepipe.acl`) and its URLs are the
admin's; private Redis servers have the same admin user and password (so one
replicates from another as it is), PostgreSQL servers a SCRAM password for
``postgres``. URLs carry the passwords, so tests use them as they are. (The
cluster's nodes are the exception: see ``redis_cluster``.)

Helpers that are not fixtures live in ``tests/helpers.py`` and each
package's ``helpers.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

from pricepipe.acl import Role, acl_file, role_urls, user_name
from pricepipe.config import DatabaseSettings, RedisSettings
from pricepipe.embedded import PostgresServer, RedisServer
from pricepipe.keys import Keys
from pricepipe.migrate import migrate

from .helpers import (
    CLUSTER_BUS_OFFSET,
    TEMPLATE_DB,
    cluster_port,
    recreate_database,
    wait_cluster_ok,
)

#: Installed, the roles are pricepipe.publisher etc.; in a checkout their
#: folders also look like top-level packages, which nothing may import.
ROLE_FOLDERS = ("publisher", "workers", "subscriber", "api")


def pytest_collection_finish(session: pytest.Session) -> None:
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in ROLE_FOLDERS)
    if leaked:
        raise pytest.UsageError(f"imported by their folder name, not as pricepipe.*: {leaked}")
TEST_DB = "pricepipe_test"
TEST_SHARDS = 4
TEST_PREFIX = "pp"

#: This run's passwords: one per Redis role (ADMIN's is every test Redis's
#: admin password) and PostgreSQL's superuser's.
REDIS_PASSWORDS = {role: secrets.token_urlsafe(16) for role in Role}
REDIS_ADMIN = (user_name(Role.ADMIN, Keys(TEST_PREFIX)), REDIS_PASSWORDS[Role.ADMIN])
PG_PASSWORD = secrets.token_urlsafe(16)


def _reachable_tempdir(prefix: str) -> Path:
    # mkdtemp makes 0700 directories; PostgreSQL may run as another user
    # (we are often root) and must be able to enter it.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    path = _reachable_tempdir("pricepipe-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer]:
    # The tests flush what they wrote, so a rewrite leaves an AOF of almost
    # nothing. With production's 1gb threshold there was none, and a restart
    # late in the suite replayed every write of the session: 31 s of test_outage.
    server = RedisServer(servers_dir / "redis", auth=REDIS_ADMIN,
                         acl=acl_file(REDIS_PASSWORDS, Keys(TEST_PREFIX)),
                         extra_args=("--auto-aof-rewrite-min-size", "16mb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server(servers_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(servers_dir / "pg", database=TEMPLATE_DB, fsync=False,
                            password=PG_PASSWORD)
    server.start()
    conn = psycopg2.connect(server.url_for(TEMPLATE_DB))
    try:
        migrate(conn)
    finally:
        conn.close()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def database_url(pg_server: PostgresServer) -> str:
    if not pg_server.running:
        pg_server.start()
    return recreate_database(pg_server, TEST_DB)


@pytest.fixture
def redis_passwords() -> dict[Role, str]:
    """This run's password of each role's Redis user (the admin's is every
    test Redis's admin password): for a private server with every user,
    ``make_redis_server(acl=acl_file(redis_passwords, keys))``."""
    return dict(REDIS_PASSWORDS)


@pytest.fixture
def redis_role_urls(redis_url: str) -> dict[Role, str]:
    """The (flushed) session Redis's URL for each role's user."""
    return role_urls(redis_url, REDIS_PASSWORDS, Keys(TEST_PREFIX))


@pytest.fixture
def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings(url=redis_url, prefix=TEST_PREFIX, shards=TEST_SHARDS)


@pytest.fixture
def db_settings(database_url: str) -> DatabaseSettings:
    return DatabaseSettings(url=database_url)


@pytest.fixture
def keys() -> Keys:
    return Keys(TEST_PREFIX, TEST_SHARDS)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def db(database_url: str) -> Iterator[Any]:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def pipeline_env(redis_url: str, database_url: str) -> dict[str, str]:
    """Environment for a ``pricepipe`` subprocess talking to the test servers."""
    env = dict(os.environ)
    env.update({
        "PRICEPIPE_REDIS_URL": redis_url,
        "PRICEPIPE_DATABASE_URL": database_url,
        "PRICEPIPE_REDIS_SHARDS": str(TEST_SHARDS),
        "PRICEPIPE_REDIS_PREFIX": TEST_PREFIX,
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        kwargs.setdefault("auth", REDIS_ADMIN)
        server = RedisServer(_reachable_tempdir("pricepipe-redis-"), **kwargs)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
def make_pg_server() -> Iterator[Callable[..., PostgresServer]]:
    started: list[PostgresServer] = []

    def make(**kwargs: Any) -> PostgresServer:
        kwargs.setdefault("fsync", False)
        kwargs.setdefault("password", PG_PASSWORD)
        server = PostgresServer(_reachable_tempdir("pricepipe-pg-"), **kwargs)
        server.start()
        conn = psycopg2.connect(server.url)
        try:
            migrate(conn)
        finally:
            conn.close()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``spawn(["persist", "--burst"], env=...)`` runs ``python -m pricepipe ...``."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], *, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen([sys.executable, "-m", "pricepipe", *args], env=env, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def redis_cluster(make_redis_server: Callable[..., RedisServer]) -> list[RedisServer]:
    """Three Redis Cluster masters on loopback, slots spread by ``redis-cli --cluster create``.

    Without authentication, unlike every other test server: the cluster
    tests connect with ``redis.RedisCluster(host=..., port=...)``."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is needed to create the cluster (Debian package redis-tools)")
    taken: set[int] = set()
    nodes = []
    for _ in range(3):
        port = cluster_port(taken)
        taken |= {port, port + CLUSTER_BUS_OFFSET}
        nodes.append(make_redis_server(port=port, auth=None, extra_args=(
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # relative to the node's --dir
            "--cluster-node-timeout", "5000",
        )))
    result = subprocess.run(
        ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
         "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_cluster_ok([n.port for n in nodes])
    return nodes
