"""``pricepipe api`` as a process: readiness, serving, graceful stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pricepipe.embedded import free_port


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

    out = subprocess.run([sys.executable, "-m", "api", "--help"], env=pipeline_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "--ws-url" in out.stdout and "--port" in out.stdout
