"""Scale-out: the whole pipeline on a three-master Redis Cluster, as the
multi-VM topology runs it (deploy/README.md): one publisher, two persist
workers and two websocket processes, all with ``PRICEPIPE_REDIS_CLUSTER=1``
and the URL of a single node.

N published events (trades and quotes) become exactly N rows, a websocket
client on each websocket process receives live events, and the API serves
the latest quotes and the history.
The rq jobs, which rq cannot run on a cluster, run beside it on a standalone
Redis."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import orjson
import psycopg2
import redis
from rq import Queue
from websockets.sync.client import ClientConnection, connect

from pricepipe.embedded import RedisServer, free_port
from pricepipe.keys import PERSIST_GROUP, Keys
from tests.helpers import slow_stage, wait_http

SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA"]
#: A first bulk run registers the symbols; the second is published live to the clients.
N_FIRST = 600
N_EVENTS = 3000
WAIT_S = 60.0

Spawn = Callable[..., subprocess.Popen[bytes]]


def output_of(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    return proc.stdout.read().decode(errors="replace")[-3000:]


def receive(ws: ClientConnection, kind: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        message = orjson.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        assert message.get("type") != "error", message
        if message.get("type") == kind:
            return message


def count_rows(database_url: str) -> tuple[int, int]:
    """``(rows, distinct (symbol, entry_id))`` over trades and quotes."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT (kind, symbol, entry_id)) FROM ("
                        " SELECT 't' AS kind, symbol, entry_id FROM trades UNION ALL"
                        " SELECT 'q', symbol, entry_id FROM quotes) AS events")
            row = cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])
    finally:
        conn.close()


@slow_stage  # 12-21 s: in .ci/run's second stage, to keep the main suite in 10 min
def test_pipeline_end_to_end_on_redis_cluster(
    redis_cluster: list[RedisServer], pipeline_env: dict[str, str], database_url: str,
    spawn: Spawn,
) -> None:
    env = dict(pipeline_env, PRICEPIPE_REDIS_CLUSTER="1",
               PRICEPIPE_REDIS_URL=redis_cluster[0].url, PRICEPIPE_WORKER_BLOCK_MS="200",
               # Workers start before the publisher registers the symbols: find them soon.
               PRICEPIPE_WORKER_REFRESH_INTERVAL_S="0.5")
    cluster: Any = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    keys = Keys(env["PRICEPIPE_REDIS_PREFIX"], int(env["PRICEPIPE_REDIS_SHARDS"]))
    # The test is only meaningful if the shards really live on different masters.
    nodes = {cluster.get_node_from_key(keys.trades(s)).port for s in SYMBOLS}
    assert len(nodes) >= 2, f"symbols all on one node {nodes}: choose other symbols"

    # Publishers register a symbol before its first event, and the websocket server
    # refuses to subscribe to one nobody registered: a first run registers them.
    publish = ["publish", "--source", "gbm", "--symbols", ",".join(SYMBOLS)]
    first = spawn([*publish, "--count", str(N_FIRST), "--seed", "6"], env=env)
    assert first.wait(WAIT_S) == 0, output_of(first)
    total = N_FIRST + N_EVENTS

    ws_ports = [free_port(), free_port()]
    servers = [spawn(["ws", "--host", "127.0.0.1", "--port", str(p)], env=env)
               for p in ws_ports]
    for port, proc in zip(ws_ports, servers, strict=True):
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    workers = [spawn(["persist", "--name", f"cluster-{i}"], env=env) for i in (1, 2)]

    with ExitStack() as stack:
        clients = [stack.enter_context(connect(f"ws://127.0.0.1:{p}/ws", open_timeout=10))
                   for p in ws_ports]
        stack.callback(cluster.close)
        for i, ws in enumerate(clients):
            receive(ws, "hello", 10)
            ws.send(orjson.dumps({"op": "subscribe", "channels": ["trades", "quotes"],
                                  "symbols": SYMBOLS, "req": i}).decode())
            subscribed = receive(ws, "subscribed", 10)
            assert sorted(subscribed["symbols"]) == sorted(SYMBOLS)

        publisher = spawn([*publish, "--count", str(N_EVENTS), "--seed", "7"], env=env)
        assert publisher.wait(WAIT_S) == 0, output_of(publisher)

        # Every websocket process relays live events of the cluster's streams.
        for ws in clients:
            trades = receive(ws, "trades", 20)["trades"]
            quotes = receive(ws, "quotes", 20)["quotes"]
            assert trades and quotes
            for trade in trades:
                assert trade["symbol"] in SYMBOLS and trade["id"] and trade["price"] > 0
            for quote in quotes:
                assert quote["symbol"] in SYMBOLS and quote["bid"] < quote["ask"]

        deadline = time.monotonic() + WAIT_S
        rows = count_rows(database_url)
        while rows[0] < total and time.monotonic() < deadline:
            for proc in workers:
                assert proc.poll() is None, output_of(proc)
            time.sleep(0.2)
            rows = count_rows(database_url)
        assert rows == (total, total), f"rows (total, distinct) = {rows}"

        # The streams hold every entry, all acknowledged by the persist group.
        length = pending = 0
        for symbol in SYMBOLS:
            for stream in (keys.trades(symbol), keys.quotes(symbol)):
                length += int(cluster.xlen(stream))
                pending += int(cluster.xpending(stream, PERSIST_GROUP)["pending"])
        assert (length, pending) == (total, 0)

    # The API on the same cluster: latest quotes from the streams, history from PostgreSQL.
    api_port = free_port()
    api = spawn(["api", "--host", "127.0.0.1", "--port", str(api_port)], env=env)
    wait_http(f"http://127.0.0.1:{api_port}/healthz", api)
    base = f"http://127.0.0.1:{api_port}/v1"
    with urllib.request.urlopen(f"{base}/quotes?symbols={','.join(SYMBOLS)}",
                                timeout=10) as response:
        quotes = orjson.loads(response.read())["quotes"]
    assert sorted(quotes) == sorted(SYMBOLS)
    assert all(quotes[s]["bid"] < quotes[s]["ask"] for s in SYMBOLS), quotes
    history = 0
    for symbol in SYMBOLS:
        for channel in ("trades", "quotes"):
            with urllib.request.urlopen(f"{base}/{channel}/{symbol}?limit=100000",
                                        timeout=10) as resp:
                history += len(orjson.loads(resp.read())[channel])
    assert history == total

    # rq does not run on Redis Cluster; as deploy/README.md documents, the jobs units
    # read /etc/pricepipe/jobs.env pointing them at a standalone Redis (here the test's
    # session Redis) while the streams stay on the cluster.
    jobs_env = dict(env, PRICEPIPE_REDIS_URL=pipeline_env["PRICEPIPE_REDIS_URL"],
                    PRICEPIPE_REDIS_CLUSTER="0")
    enqueued = spawn(["jobs", "enqueue", "partitions"], env=jobs_env)
    assert enqueued.wait(WAIT_S) == 0, output_of(enqueued)
    jobs = spawn(["jobs", "worker", "--burst", "--name", "cluster-jobs"], env=jobs_env)
    assert jobs.wait(WAIT_S) == 0, output_of(jobs)
    rq_redis = redis.Redis.from_url(pipeline_env["PRICEPIPE_REDIS_URL"])
    try:
        queues = [q for q in Queue.all(connection=rq_redis)
                  if q.name.startswith(keys.rq_queue(""))]
        finished = sum(q.finished_job_registry.count for q in queues)
        failed = sum(q.failed_job_registry.count for q in queues)
        assert (finished, failed) == (1, 0)
    finally:
        rq_redis.close()

    for proc in [*workers, *servers, api]:
        proc.send_signal(signal.SIGTERM)
    for proc in [*workers, *servers, api]:
        assert proc.wait(30) == 0, output_of(proc)
    assert count_rows(database_url) == (total, total)  # a clean stop adds nothing
