"""The graceful stop shared by the synchronous roles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from pricepipe.stop import StopRequest


def test_wait_returns_false_on_timeout_and_true_once_set() -> None:
    stop = StopRequest()
    assert stop.wait(0.01) is False and not stop.requested
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert stop.wait(30) is True
    assert time.monotonic() - started < 30  # woken, not timed out
    assert stop.requested


def test_first_signal_requests_a_stop_and_a_second_exits_at_once() -> None:
    # A child that installs the handler, reports, then waits forever.
    code = (
        "import sys, time\n"
        "from pricepipe.stop import StopRequest\n"
        "stop = StopRequest().install()\n"
        "print('ready', flush=True)\n"
        "while not stop.wait(0.1):\n"
        "    pass\n"
        "print('stopping', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "stopping"  # graceful path taken
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
