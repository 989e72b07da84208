"""Fixtures of the deployment tests: the unit files, a local Redis Cluster."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from pricepipe.embedded import STANDARD_PORTS, RedisServer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS_DIR = DEPLOY / "systemd"
#: Where install.sh puts the virtualenv; tests rewrite it to the one running them.
INSTALLED_VENV = "/opt/pricepipe/venv"

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


@pytest.fixture
def redis_cluster(make_redis_server: Callable[..., RedisServer]) -> list[RedisServer]:
    """Three Redis Cluster masters on loopback, slots spread by ``redis-cli --cluster create``."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is needed to create the cluster (Debian package redis-tools)")
    taken: set[int] = set()
    nodes = []
    for _ in range(3):
        port = cluster_port(taken)
        taken |= {port, port + CLUSTER_BUS_OFFSET}
        nodes.append(make_redis_server(port=port, extra_args=(
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
