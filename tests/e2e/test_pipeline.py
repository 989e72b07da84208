"""Issue 2's end-to-end promise on separate role processes: N ticks
published are exactly N rows, the HTTP API returns every one of them, and a
websocket client subscribed beforehand receives every one live, each under
its stream entry ID."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx2 as httpx
import orjson
import psycopg2
import pytest
from websockets.sync.client import connect

from pricepipe.embedded import free_port
from pricepipe.keys import Keys
from tests.helpers import wait_http

pytestmark = pytest.mark.timeout(180)

SYMBOLS = ["AAPL", "MSFT", "BTC-USD"]
N = 3_000


def _finish(proc: Any, timeout_s: float = 120) -> None:
    code = proc.wait(timeout_s)
    assert code == 0, proc.stdout.read().decode(errors="replace")


def test_n_published_n_persisted_n_served_n_pushed(
    spawn: Any, pipeline_env: dict[str, str], r: Any, database_url: str, keys: Keys,
) -> None:
    ws_port, api_port = free_port(), free_port()
    ws_proc = spawn(["ws", "--port", str(ws_port)], env=pipeline_env)
    api_proc = spawn(["api", "--port", str(api_port)], env=pipeline_env)
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws_proc)
    wait_http(f"http://127.0.0.1:{api_port}/healthz", api_proc)

    received: list[dict[str, Any]] = []
    subscribed = threading.Event()
    done = threading.Event()

    def listen() -> None:
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=10) as ws:
            ws.send(orjson.dumps({"op": "subscribe", "symbols": SYMBOLS,
                                  "snapshot": False}).decode())
            deadline = time.monotonic() + 90
            while len(received) < N and time.monotonic() < deadline:
                try:
                    message = orjson.loads(ws.recv(timeout=1))
                except TimeoutError:
                    continue
                if message.get("type") == "subscribed":
                    subscribed.set()
                elif message.get("type") == "ticks":
                    assert not message.get("conflated"), "a fast reader was conflated"
                    received.extend(message["ticks"])
        done.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(15), "no subscription acknowledgement"

    _finish(spawn(["publish", "--source", "gbm", "--symbols", ",".join(SYMBOLS),
                   "--count", str(N), "--seed", "7"], env=pipeline_env))
    _finish(spawn(["persist", "--burst"], env=pipeline_env))

    stream_ids = {s: [eid.decode() for eid, _ in r.xrange(keys.stream(s))] for s in SYMBOLS}
    assert sum(map(len, stream_ids.values())) == N

    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT (symbol, entry_id)) FROM ticks")
            assert cur.fetchone() == (N, N)
    finally:
        conn.close()

    api = f"http://127.0.0.1:{api_port}"
    for symbol in SYMBOLS:
        served: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"start": int(time.time()) - 3600, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            response = httpx.get(f"{api}/v1/ticks/{symbol}", params=params, timeout=10)
            assert response.status_code == 200, response.text
            body = response.json()
            served += [t["id"] for t in body["ticks"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        assert len(served) == len(stream_ids[symbol])
        assert set(served) == set(stream_ids[symbol])

    assert done.wait(100), f"websocket got {len(received)} of {N} ticks"
    for symbol in SYMBOLS:
        pushed = [t["id"] for t in received if t["symbol"] == symbol]
        assert pushed == stream_ids[symbol]  # every one, in order, no duplicate
