"""Secrets never in logs (issue 16): every role runs as its own process with
secrets configured (API keys, websocket tokens, passwords in the Redis and
PostgreSQL URLs, an upstream's API key sent as a query parameter), at DEBUG
so that libraries log request lines and frames, against failing upstreams
and servers and with bad requests, and every line each one writes is
searched for every secret.

Where a line carries a secret's place (a request line with ``?apikey=``, a
handshake with ``?token=``, an auth frame) the mask ``****`` must stand
there instead: the test proves a line would have leaked, not just that the
processes were quiet."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2 as httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pricepipe import streams
from pricepipe.embedded import free_port
from pricepipe.keys import Keys
from pricepipe.logs import REDACTED, url_passwords
from tests.helpers import wait_http, wait_until

pytestmark = pytest.mark.timeout(300)

Spawn = Callable[..., subprocess.Popen[bytes]]

UPSTREAM_KEY = "upstream-key-5b1e0c9a"
WS_TOKEN = "ws-token-8d2f71aa"
API_KEY = "api-key-c4e9a013"
DB_PASSWORD = "db-pass-71f3d2e8"


class _Failing(BaseHTTPRequestHandler):
    """An upstream that answers 500 to everything."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b'{"error": "internal"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _down_database_url() -> str:
    return f"postgresql://writer:{DB_PASSWORD}@127.0.0.1:{free_port()}/pricepipe"


def _output(proc: subprocess.Popen[bytes], *, stop: bool = False) -> str:
    if stop:
        proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    return out


def _read_until(proc: subprocess.Popen[bytes], mark: str, timeout_s: float = 60) -> str:
    """What ``proc`` writes until ``mark`` appears in it; the rest stays in the pipe."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while mark.encode() not in seen:
            left_s = deadline - time.monotonic()
            assert left_s > 0 and proc.poll() is None, f"no {mark!r} in:\n{seen.decode()}"
            if selector.select(timeout=min(left_s, 1.0)):
                chunk = os.read(proc.stdout.fileno(), 65536)
                seen += chunk
    return seen.decode(errors="replace")


def test_no_role_logs_a_secret(spawn: Spawn, pipeline_env: dict[str, str], r: Any,
                               keys: Keys, failing_upstream: str) -> None:
    base = {**pipeline_env, "PRICEPIPE_LOG_LEVEL": "DEBUG", "PRICEPIPE_POLL_RETRIES": "1",
            "PRICEPIPE_POLL_BACKOFF_FACTOR_S": "0.01"}
    secrets = [UPSTREAM_KEY, WS_TOKEN, API_KEY, DB_PASSWORD,
               *url_passwords(pipeline_env["PRICEPIPE_REDIS_URL"])]
    outputs: dict[str, str] = {}
    streams.register_symbols(r, keys, ["AAPL"])

    # Publisher pollers: the key as a query parameter, upstream answering 500
    # (logged request lines and retries), then refusing connections (the
    # "Max retries exceeded with url: ...?apikey=" of the issue), in JSON.
    generic = {"PRICEPIPE_GENERIC_API_KEY": UPSTREAM_KEY,
               "PRICEPIPE_GENERIC_API_KEY_PARAM": "apikey", "PRICEPIPE_GENERIC_PRICE_PATH": "p"}
    for name, url, extra in (
            ("publisher-500", failing_upstream, {}),
            ("publisher-refused", f"http://127.0.0.1:{free_port()}",
             {"PRICEPIPE_LOG_JSON": "1", "PRICEPIPE_LOG_LEVEL": "INFO"})):
        proc = spawn(["publish", "--source", "generic", "--symbols", "AAPL", "--rounds", "2",
                      "--interval", "0.05"],
                     env={**base, **generic, **extra,
                          "PRICEPIPE_GENERIC_URL": url + "/q/{symbol}"})
        outputs[name] = _output(proc)
        assert proc.returncode == 0, outputs[name]

    # Persist worker: its PostgreSQL (password in the URL) is down.
    persist = spawn(["persist", "--name", "p1"],
                    env={**base, "PRICEPIPE_DATABASE_URL": _down_database_url()})
    # Stopped only once it has said so: a SIGTERM before its first attempt
    # would leave nothing to search.
    said = _read_until(persist, "connect to postgresql failed")
    outputs["persist"] = said + _output(persist, stop=True)

    # Websocket server with tokens: URL tokens (refused), wrong and right auth.
    ws_port = free_port()
    ws = spawn(["ws", "--port", str(ws_port)], env={**base, "PRICEPIPE_WS_TOKENS": WS_TOKEN})
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws)
    url = f"ws://127.0.0.1:{ws_port}/ws"
    for query in (f"?token={WS_TOKEN}", "?token=wrong-guess"):
        with pytest.raises(InvalidStatus):
            connect(url + query).close()
    for token in ("wrong-guess", WS_TOKEN):
        with connect(url) as client:
            client.recv(timeout=10)
            client.send(json.dumps({"op": "auth", "token": token, "req": 1}))
            client.recv(timeout=10)
    outputs["ws"] = _output(ws, stop=True)

    # HTTP API with keys; its database (password in the URL) is down.
    api_port = free_port()
    api = spawn(["api", "--port", str(api_port)],
                env={**base, "PRICEPIPE_API_API_KEYS": f"{API_KEY},second-key-0000",
                     "PRICEPIPE_DATABASE_URL": _down_database_url()})
    wait_until(lambda: _answers(f"http://127.0.0.1:{api_port}/healthz"), proc=api)
    for headers in ({"X-API-Key": "wrong-guess"}, {"X-API-Key": API_KEY},
                    {"Authorization": f"Bearer {API_KEY}"}):
        httpx.get(f"http://127.0.0.1:{api_port}/v1/trades/AAPL?limit=1", headers=headers)
    outputs["api"] = _output(api, stop=True)

    # Jobs worker: a job that fails on the down database.
    jobs_env = {**base, "PRICEPIPE_DATABASE_URL": _down_database_url()}
    enqueue = spawn(["jobs", "enqueue", "partitions"], env=jobs_env)
    outputs["enqueue"] = _output(enqueue)
    worker = spawn(["jobs", "worker", "--burst"], env=jobs_env)
    outputs["jobs"] = _output(worker)
    assert worker.returncode == 0, outputs["jobs"]

    for name, out in outputs.items():
        leaked = [s for s in secrets if s in out]
        assert not leaked, f"{name} logged {leaked}:\n{out}"
    # Where the secrets would have been, the mask is (JSON lines escape quotes).
    for name, marks in (
            ("publisher-500", [f'"GET /q/AAPL?apikey={REDACTED} HTTP/1.1" 500']),
            ("publisher-refused", [f"Max retries exceeded with url: /q/AAPL?apikey={REDACTED}"]),
            ("ws", [f"GET /ws?token={REDACTED} HTTP/1.1", f'"token": "{REDACTED}"']),
            ("api", ["healthz: database unreachable"]),
            ("persist", ["connect to postgresql failed"]),
            ("jobs", ["psycopg2.OperationalError"])):
        for mark in marks:
            assert mark in outputs[name].replace('\\"', '"'), f"{name}: {mark!r}:\n{outputs[name]}"


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True
