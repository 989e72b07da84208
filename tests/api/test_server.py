"""``pricepipe api`` as a process: readiness, serving, graceful stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pricepipe.embedded import free_port
from tests.helpers import wait_http


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_api_process_notifies_ready_serves_and_stops_on_sigterm(
        spawn: Callable[..., subprocess.Popen[bytes]], pipeline_env: dict[str, str],
        tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(str(notify_path))
    notify_sock.settimeout(60)
    port = free_port()
    env = {**pipeline_env, "NOTIFY_SOCKET": str(notify_path)}
    try:
        proc = spawn(["api", "--host", "127.0.0.1", "--port", str(port)], env=env)
        messages = notify_sock.recv(4096).decode()
        assert "READY=1" in messages
        assert notify_sock.recv(4096).decode() == "WATCHDOG=1"
        # READY means listening: the first request must succeed without retries.
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and b'"database":"ok"' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        # STOPPING=1 was announced before exiting.
        notify_sock.settimeout(0)
        rest = []
        while True:
            try:
                rest.append(notify_sock.recv(4096).decode())
            except BlockingIOError:
                break
        assert any("STOPPING=1" in m for m in rest)
    finally:
        notify_sock.close()


def test_python_dash_m_api_runs_the_same_command(pipeline_env: dict[str, str]) -> None:
    import sys

    out = subprocess.run([sys.executable, "-m", "pricepipe.api", "--help"], env=pipeline_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "--ws-url" in out.stdout and "--port" in out.stdout


def test_second_sigterm_exits_at_once_while_a_download_is_in_flight(
        spawn: Callable[..., subprocess.Popen[bytes]], pipeline_env: dict[str, str],
        db: Any) -> None:
    from tests.api.helpers import DAY0_US, insert_trades, steady_trades

    insert_trades(db, steady_trades("SLOW", DAY0_US, 100_000, 1000))
    port = free_port()
    proc = spawn(["api", "--port", str(port)], env=pipeline_env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A tiny receive window: the server cannot push the 10 MB download into
    # socket buffers, so the response stays in flight while we do not read.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(30)
    try:
        client.connect(("127.0.0.1", port))
        client.sendall(f"GET /v1/trades/SLOW?start={DAY0_US}&end={DAY0_US + 10**9}&format=csv "
                       "HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        assert client.recv(64).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)  # graceful: waits for the download...
        # (the kernel merges a second SIGTERM still pending with the first)
        seen = _read_until(proc, b"finishing in-flight requests")
        proc.send_signal(signal.SIGTERM)  # ...unless told twice
        assert proc.wait(timeout=60) == 1
    finally:
        client.close()
    assert proc.stdout is not None
    assert b"second signal" in seen + proc.stdout.read()


def _read_until(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    import os
    import select

    assert proc.stdout is not None
    out = b""
    while marker not in out:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, out
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, out
        out += chunk
    return out


