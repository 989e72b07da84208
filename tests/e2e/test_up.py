"""The first README command, tried as a newcomer would: ``pricepipe up``
with nothing configured starts its own servers and, within a minute, trades
and quotes arrive on the websocket and in ``GET /v1/trades`` and
``GET /v1/quotes`` (with bid < ask), every symbol of ``GET /v1/symbols``
has its 52-week band (the jobs worker ran the metadata refresh), and
``pricepipe status`` lists the websocket server, the rq worker and the cron
scheduler; Ctrl-C stops everything, leaving no process behind; a second run
keeps the data."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from websockets.sync.client import connect

from pricepipe.embedded import free_port
from pricepipe.supervisor import descendants, process_parents
from tests.helpers import slow_stage

# 15-20 s of initdb and a whole pipeline: beside the soak, out of the main
# suite's 10 minutes.
pytestmark = [pytest.mark.timeout(240), slow_stage]


class Up:
    """``python -m pricepipe up`` in a subprocess, its output read by a thread."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRICEPIPE_")}
        env.update({"PRICEPIPE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pricepipe", "up", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.output)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()


def _status(data_dir: Path) -> str:
    """``pricepipe status`` in another terminal: it finds the servers
    through ``embedded.env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICEPIPE_")}
    env["PRICEPIPE_DATA_DIR"] = str(data_dir)
    done = subprocess.run([sys.executable, "-m", "pricepipe", "status"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _poll(fn: Any, timeout_s: float, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval_s)
    return last


@pytest.fixture
def data_dir() -> Any:
    path = Path(tempfile.mkdtemp(prefix="pricepipe-up-"))
    path.chmod(0o755)  # embedded PostgreSQL may run as an unprivileged user
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def test_up_runs_the_whole_pipeline_and_keeps_data(data_dir: Path) -> None:
    api_port, ws_port = free_port(), free_port()
    up = Up(data_dir, "--symbols", "3", "--rate", "20",
            "--api-port", str(api_port), "--ws-port", str(ws_port))
    try:
        up.wait_for(r"websocket\s+ws://", 120)
        api = f"http://127.0.0.1:{api_port}"
        symbols = _poll(lambda: httpx.get(f"{api}/v1/symbols", timeout=5).json(), 30)
        names = [s["symbol"] if isinstance(s, dict) else s
                 for s in (symbols["symbols"] if isinstance(symbols, dict) else symbols)]
        assert len(names) == 3
        symbol = names[0]

        # The 52-week band of every symbol: the metadata job, from stored history.
        def banded() -> list[dict[str, Any]]:
            rows = httpx.get(f"{api}/v1/symbols", timeout=5).json()["symbols"]
            ok = len(rows) == 3 and all(row["week52_high"] is not None
                                        and row["week52_low"] is not None for row in rows)
            return rows if ok else []

        rows = _poll(banded, 60)
        assert rows, httpx.get(f"{api}/v1/symbols", timeout=5).text
        assert all(row["week52_low"] <= row["week52_high"] for row in rows)

        # Another terminal's `pricepipe status` sees the websocket server,
        # the rq worker and the cron scheduler.
        def listed() -> str:
            text = _status(data_dir)
            host = socket.gethostname()
            wanted = ("websocket servers alive: 1", f"  {host}-{ws_port} ", "rq workers: 1",
                      f"  {host}-up ", "rq cron schedulers: 1")
            return text if all(w in text for w in wanted) else ""

        status = _poll(listed, 30)
        assert status, _status(data_dir)
        assert "queues pp-maintenance,pp-bulk" in status

        # Live trades and quotes on the websocket, each with its stream entry ID.
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=10) as ws:
            ws.send(orjson.dumps({"op": "subscribe", "channels": ["trades", "quotes"],
                                  "symbols": [symbol]}).decode())
            live: dict[str, list[dict[str, Any]]] = {"trades": [], "quotes": []}
            deadline = time.monotonic() + 60
            while min(map(len, live.values())) < 2 and time.monotonic() < deadline:
                message = orjson.loads(ws.recv(timeout=10))
                for channel in live:
                    if message.get("type") in (channel, "snapshot"):
                        live[channel] += [e for e in message.get(channel, [])
                                          if e["symbol"] == symbol and "id" in e]
            assert min(map(len, live.values())) >= 2, live
            assert all(q["bid"] is None or q["ask"] is None or q["bid"] < q["ask"]
                       for q in live["quotes"])

        # And persisted, served as history.
        def history(channel: str) -> list[dict[str, Any]]:
            body = httpx.get(f"{api}/v1/{channel}/{symbol}", timeout=5).json()
            rows: list[dict[str, Any]] = body[channel]
            return rows

        rows = _poll(lambda: history("trades"), 60)
        assert rows, "no persisted trades served within a minute"
        assert _poll(lambda: history("quotes"), 60), "no persisted quotes served"
        assert httpx.get(f"{api}/v1/quotes", params={"symbols": symbol},
                         timeout=5).json()["quotes"][symbol]["bid"]
        first_id = rows[0]["id"]

        # Every process under `up`, grandchildren too (rq's scheduler process
        # under the jobs worker): none may outlive Ctrl-C.
        tree = {pid: _cmdline(pid) for pid in descendants(up.proc.pid)}
        workers = [pid for pid, cmd in tree.items() if cmd and b"jobs\x00worker" in cmd]
        assert workers and any(process_parents().get(pid) in workers for pid in tree), tree
        assert up.stop() == 0
    finally:
        up.stop()
    alive = process_parents()
    left = {pid: cmd for pid, cmd in tree.items() if pid in alive and _cmdline(pid) == cmd}
    assert not left, left
    # Everything stopped: nothing listens on the ports any more.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=2)
    assert not (data_dir / "embedded.env").exists()

    # A second run finds the first run's rows.
    up2 = Up(data_dir, "--symbols", "3", "--rate", "1",
             "--api-port", str(api_port), "--ws-port", str(ws_port))
    try:
        up2.wait_for(r"HTTP API\s+http://", 120)
        body = httpx.get(f"http://127.0.0.1:{api_port}/v1/trades/{symbol}", timeout=5).json()
        rows = body["trades"]
        assert rows and rows[0]["id"] == first_id
    finally:
        assert up2.stop() == 0
