"""The nginx site install.sh renders, run for real in front of two websocket
processes and the API: websocket upgrade on ``/ws`` spread by ``least_conn``
and limited per client address, API and dashboard on ``/``, ``/metrics`` not
public.

Needs an nginx binary (``nginx`` on PATH, ``/usr/sbin/nginx`` or
``PRICEPIPE_TEST_NGINX``); without one the test is skipped and only the
rendering checks of test_install.py run."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pricepipe.embedded import free_port
from tests.helpers import wait_http

from .helpers import install, locations_snippet, nginx_binary

Spawn = Callable[..., subprocess.Popen[bytes]]
WAIT_S = 60.0
CLIENTS = 4
#: deploy/nginx's limit_conn on /ws.
NGINX_WS_CONNECTIONS = 100


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read()


def test_site_proxies_websockets_and_api(tmp_path: Path, pipeline_env: dict[str, str],
                                         spawn: Spawn) -> None:
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("no nginx binary (install nginx or set PRICEPIPE_TEST_NGINX)")
    ws_ports = [free_port(), free_port()]
    api_port, public_port = free_port(), free_port()

    env = dict(os.environ, PRICEPIPE_NGINX_DIR=str(tmp_path))
    rendered = install("--render-nginx", "--ws-ports", ",".join(map(str, ws_ports)), env=env)
    assert rendered.returncode == 0, rendered.stderr
    # Test-only changes: loopback ports instead of 80 and the API's 8000.
    site = rendered.stdout.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{api_port};")
    site = re.sub(r"listen \[::\]:80 default_server;\n", "", site)
    site = site.replace("listen 80 default_server;", f"listen 127.0.0.1:{public_port};")
    (tmp_path / "snippets").mkdir()
    access_log = tmp_path / "access.log"
    (tmp_path / "snippets" / "pricepipe-locations.conf").write_text(
        locations_snippet(access_log))
    (tmp_path / "site.conf").write_text(site)
    temp_paths = "".join(f"{kind}_temp_path {tmp_path}/{kind}; " for kind in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nmaster_process on;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\n"
        f"error_log stderr warn;\nevents {{ worker_connections 512; }}\n"
        f"http {{ access_log off; {temp_paths}include {tmp_path}/site.conf; }}\n")

    # The websocket server subscribes only to registered symbols: publish AAPL once.
    first = spawn(["publish", "--source", "gbm", "--symbols", "AAPL", "--count", "10"],
                  env=pipeline_env)
    assert first.wait(WAIT_S) == 0
    # The processes' own per-address limit above nginx's, so that nginx's is seen.
    ws_env = dict(pipeline_env, PRICEPIPE_WS_MAX_CONNECTIONS_PER_ADDRESS="1000")
    servers = [spawn(["ws", "--host", "127.0.0.1", "--port", str(p)], env=ws_env)
               for p in ws_ports]
    api = spawn(["api", "--host", "127.0.0.1", "--port", str(api_port)], env=pipeline_env)
    for port, proc in zip(ws_ports, servers, strict=True):
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    wait_http(f"http://127.0.0.1:{api_port}/healthz", api)

    proxy = subprocess.Popen([nginx, "-e", "stderr", "-p", str(tmp_path),
                              "-c", str(tmp_path / "nginx.conf")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{public_port}"
        wait_http(f"{base}/healthz", proxy)
        status, body = get(f"{base}/healthz")  # the API's health, through nginx
        assert status == 200 and orjson.loads(body)
        assert get(f"{base}/")[0] == 200  # the dashboard
        assert get(f"{base}/metrics")[0] == 404  # scraped on loopback, never public

        with ExitStack() as stack:
            clients = [stack.enter_context(connect(f"ws://127.0.0.1:{public_port}/ws",
                                                   open_timeout=10))
                       for _ in range(CLIENTS)]
            for i, ws in enumerate(clients):
                assert orjson.loads(ws.recv(timeout=10))["type"] == "hello"
                ws.send(orjson.dumps({"op": "subscribe", "symbols": ["AAPL"], "req": i}).decode())
                while (reply := orjson.loads(ws.recv(timeout=10)))["type"] != "subscribed":
                    assert reply["type"] != "error", reply
            counts = [orjson.loads(get(f"http://127.0.0.1:{p}/healthz")[1])["connections"]
                      for p in ws_ports]
            # least_conn spreads the long-lived connections over both processes.
            assert sum(counts) == CLIENTS and min(counts) >= 1, counts
            # limit_conn: a hundred websocket connections per client address.
            for _ in range(NGINX_WS_CONNECTIONS - CLIENTS):
                stack.enter_context(connect(f"ws://127.0.0.1:{public_port}/ws",
                                            open_timeout=10))
            with pytest.raises(InvalidStatus) as refused:
                connect(f"ws://127.0.0.1:{public_port}/ws", open_timeout=10)
            assert refused.value.response.status_code == 429
        # A token in the URL is refused by the servers, and never logged by nginx.
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{public_port}/ws?token=s3cr3t-in-url", open_timeout=10)
        assert refused.value.response.status_code == 400
        logged = access_log.read_text()
        assert '"GET /ws HTTP/1.1" 400' in logged and "s3cr3t" not in logged, logged[-500:]
    finally:
        proxy.terminate()
        proxy.wait(30)
        assert proxy.stdout is not None
        proxy.stdout.close()
