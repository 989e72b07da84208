"""The end-to-end promise on separate role processes, per event type: N
events published (trades and quotes) are exactly N rows, the HTTP API
returns every one of them, a websocket client subscribed beforehand
receives every one live, and the client library's readers read every one,
each under its stream entry ID, in stream order. Every role speaks RESP2
and RESP3 (``?protocol=3`` on the Redis URL): the test runs in both."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx2 as httpx
import orjson
import psycopg2
import pytest
import redis
from psycopg2 import sql
from websockets.sync.client import connect

from pricepipe import streams
from pricepipe.embedded import free_port
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.client import Delivery, GroupReader, StreamReader
from tests.helpers import wait_http

pytestmark = pytest.mark.timeout(180)

SYMBOLS = ["AAPL", "MSFT", "BTC-USD"]
N = 3_000
CHANNELS = ("trades", "quotes")


def _finish(proc: Any, timeout_s: float = 120) -> None:
    code = proc.wait(timeout_s)
    assert code == 0, proc.stdout.read().decode(errors="replace")


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_n_published_n_persisted_n_served_n_pushed(
    spawn: Any, pipeline_env: dict[str, str], r: Any, database_url: str, keys: Keys,
    redis_url: str, protocol: int,
) -> None:
    url = f"{redis_url}{'&' if '?' in redis_url else '?'}protocol={protocol}"
    pipeline_env = dict(pipeline_env, PRICEPIPE_REDIS_URL=url)
    ws_port, api_port = free_port(), free_port()
    ws_proc = spawn(["ws", "--port", str(ws_port)], env=pipeline_env)
    api_proc = spawn(["api", "--port", str(api_port)], env=pipeline_env)
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws_proc)
    wait_http(f"http://127.0.0.1:{api_port}/healthz", api_proc)

    # The websocket server refuses symbols nobody registered (unknown_symbol);
    # the publisher registers its own, but this client subscribes before it runs.
    streams.register_symbols(r, keys, SYMBOLS)
    received: dict[str, list[dict[str, Any]]] = {c: [] for c in CHANNELS}
    subscribed = threading.Event()
    done = threading.Event()

    def listen() -> None:
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=10) as ws:
            ws.send(orjson.dumps({"op": "subscribe", "channels": list(CHANNELS),
                                  "symbols": SYMBOLS, "snapshot": False}).decode())
            deadline = time.monotonic() + 90
            while sum(map(len, received.values())) < N and time.monotonic() < deadline:
                try:
                    message = orjson.loads(ws.recv(timeout=1))
                except TimeoutError:
                    continue
                if message.get("type") == "subscribed":
                    subscribed.set()
                elif message.get("type") in CHANNELS:
                    assert not message.get("conflated"), "a fast reader was conflated"
                    received[message["type"]].extend(message[message["type"]])
        done.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(15), "no subscription acknowledgement"

    _finish(spawn(["publish", "--source", "gbm", "--symbols", ",".join(SYMBOLS),
                   "--count", str(N), "--seed", "7"], env=pipeline_env))
    _finish(spawn(["persist", "--burst"], env=pipeline_env))

    stream_ids = {(s, c): [eid.decode() for eid, _ in r.xrange(keys.stream(s, Channel(c)))]
                  for s in SYMBOLS for c in CHANNELS}
    assert sum(map(len, stream_ids.values())) == N
    per_channel = {c: sum(len(stream_ids[s, c]) for s in SYMBOLS) for c in CHANNELS}
    assert per_channel["trades"] and per_channel["quotes"] > per_channel["trades"]

    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            for channel in CHANNELS:
                cur.execute(sql.SQL("SELECT count(*), count(DISTINCT (symbol, entry_id))"
                                    " FROM {}").format(sql.Identifier(channel)))
                assert cur.fetchone() == (per_channel[channel],) * 2, channel
    finally:
        conn.close()

    api = f"http://127.0.0.1:{api_port}"
    for (symbol, channel), ids in stream_ids.items():
        served: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"start": int(time.time()) - 3600, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            response = httpx.get(f"{api}/v1/{channel}/{symbol}", params=params, timeout=10)
            assert response.status_code == 200, response.text
            body = response.json()
            served += [e["id"] for e in body[channel]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        assert len(served) == len(ids) and set(served) == set(ids), (symbol, channel)
        # The same by entry-ID range, in stream order, and complete up to just
        # after the last entry: the API reads the persist group's floor from
        # Redis (in this test's protocol); later IDs may still be appended.
        response = httpx.get(f"{api}/v1/{channel}/{symbol}", timeout=10, params={
            "after_id": f"{int(ids[0].split('-')[0]) - 1}-0",
            "until_id": streams.next_id(ids[-1]),
            "limit": 10_000})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [e["id"] for e in body[channel]] == ids and body["complete"] is True

    assert done.wait(100), f"websocket got {sum(map(len, received.values()))} of {N} events"
    for (symbol, channel), ids in stream_ids.items():
        pushed = [e["id"] for e in received[channel] if e["symbol"] == symbol]
        assert pushed == ids  # every one, in order, no duplicate

    # The client library, on a client of the same protocol: a plain reader and
    # a consumer group each read every entry of every stream, in order.
    client = redis.Redis.from_url(url)
    try:
        assert client.connection_pool.connection_kwargs.get("protocol") in (protocol,
                                                                           str(protocol))
        for reader in (StreamReader(client, keys, SYMBOLS, start="0"),
                       GroupReader(client, keys, SYMBOLS, group="e2e", consumer="c",
                                   start="0")):
            got: dict[tuple[str, str], list[str]] = {key: [] for key in stream_ids}
            with reader:
                for _ in range(N):
                    item = reader.get(timeout_s=30)
                    assert isinstance(item, Delivery), item
                    got[item.symbol, str(item.channel)].append(item.entry_id)
                    reader.ack(item)
            assert got == stream_ids, type(reader).__name__
    finally:
        client.close()
