"""Helpers shared by the tests of every package (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis
from psycopg2 import sql

from pricepipe.embedded import STANDARD_PORTS, PostgresServer

REPO = Path(__file__).resolve().parents[1]

#: The session PostgreSQL's migrated database, which each test's is cloned from.
TEMPLATE_DB = "pricepipe_template"


def _failed_early(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is not None:
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        raise AssertionError(f"process exited early ({proc.returncode}):\n{out}")


def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 60.0,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``predicate`` until it holds; fail if ``proc`` (the process meant
    to make it hold) exits first. No timing assertion: the timeout only ends
    a hung test."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        _failed_early(proc)
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the test's safety timeout")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
            return bool(response.status == 200)
    except OSError:
        return False


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, *,
              timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers 200 (see :func:`wait_until`)."""
    wait_until(lambda: http_ok(url), timeout_s=timeout_s, proc=proc)


def recreate_database(server: PostgresServer, name: str, template: str = TEMPLATE_DB) -> str:
    """Drop ``name`` if it exists and create it anew as a copy of ``template``;
    its URL on ``server``."""
    conn = psycopg2.connect(server.url_for("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)))
    finally:
        conn.close()
    return server.url_for(name)


# --- a local Redis Cluster --------------------------------------------------------------------

#: Redis Cluster's bus listens on the client port + 10000 (cluster-port default).
CLUSTER_BUS_OFFSET = 10_000
CLUSTER_SLOTS = 16_384


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A port P with P and its bus port P+10000 both free (free_port() may pick
    a port above 55535, whose bus port would not exist)."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20_000, 45_000)
        bus = port + CLUSTER_BUS_OFFSET
        if {port, bus} & (taken | STANDARD_PORTS):
            continue
        if _port_free(port) and _port_free(bus):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def wait_cluster_ok(ports: list[int], timeout_s: float = 30.0) -> None:
    """Until every node reports ``cluster_state:ok`` with every slot assigned."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        states: list[dict[str, str]] = []
        for port in ports:
            client = redis.Redis(port=port, host="127.0.0.1", socket_timeout=2)
            try:
                info: Any = client.cluster("INFO")  # redis-py parses it into a dict
                states.append(info)
            finally:
                client.close()
        if all(s.get("cluster_state") == "ok"
               and int(s.get("cluster_slots_ok", 0)) == CLUSTER_SLOTS
               and int(s.get("cluster_known_nodes", 0)) == len(ports) for s in states):
            return
        last = str(states)
        time.sleep(0.1)
    raise AssertionError(f"cluster not ok within {timeout_s}s: {last}")


#: Tests too slow for the main suite's 10 minutes (benchmark harnesses,
#: units under systemd-run, an alert that needs 30 s of lag):
#: ``PRICEPIPE_SLOW_TESTS=1`` runs them, as ``.ci/run``'s second stage does.
slow_stage = pytest.mark.skipif(
    os.environ.get("PRICEPIPE_SLOW_TESTS") != "1",
    reason="slow: PRICEPIPE_SLOW_TESTS=1 runs it (.ci/run's second stage)")
