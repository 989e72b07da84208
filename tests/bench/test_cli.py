"""``pricepipe bench`` as a command: stopped with SIGTERM, it stops what it
started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def _descendants(pid: int) -> dict[int, bytes]:
    """The command lines of ``pid``'s descendants, by pid."""
    children: dict[int, list[int]] = {}
    cmdlines: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = cmdlines.get(child, b"")
            todo.append(child)
    return found


def _still_running(pid: int, cmdline: bytes) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline and cmdline != b""
    except OSError:
        return False


def test_sigterm_stops_the_embedded_servers_a_bench_started(tmp_path: Path) -> None:
    # The publish bench with its throwaway Redis and PostgreSQL; SIGTERM as
    # soon as it starts measuring, with both servers up.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICEPIPE_")}
    with subprocess.Popen(
            [sys.executable, "-m", "pricepipe", "bench", "publish", "--repeats", "50",
             "--out", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path) as bench:
        assert bench.stdout is not None
        try:
            seen = []
            for line in bench.stdout:
                seen.append(line)
                if line.startswith(b"== bench publish"):
                    break
            else:
                raise AssertionError(b"".join(seen).decode(errors="replace"))
            started = _descendants(bench.pid)
            names = b" ".join(started.values())
            assert b"redis-server" in names and b"postgres" in names, started
            bench.send_signal(signal.SIGTERM)
            bench.stdout.read()
            assert bench.wait(timeout=120) == 130
        finally:
            if bench.poll() is None:
                bench.kill()
    left = {pid: cmd for pid, cmd in started.items() if _still_running(pid, cmd)}
    for pid in left:  # not to outlive a failing test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the bench stopped: {left}"
