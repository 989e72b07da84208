"""The publisher's metrics listener is on loopback unless
``PRICEPIPE_PUBLISHER_METRICS_HOST`` says otherwise (issue 16): checked on the
listening socket itself, as the kernel reports it."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pricepipe.embedded import free_port
from pricepipe.publisher.settings import PublisherSettings
from tests.helpers import wait_http


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on ``port`` (/proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, _, hex_port = fields[1].partition(":")
        if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_metrics_listen_on_loopback_unless_told_otherwise(
        host: str | None, expected: str, spawn: Callable[..., subprocess.Popen[bytes]],
        pipeline_env: dict[str, str]) -> None:
    assert PublisherSettings().metrics_host == "127.0.0.1"
    port = free_port()
    env = dict(pipeline_env)
    if host is not None:
        env["PRICEPIPE_PUBLISHER_METRICS_HOST"] = host
    proc = spawn(["publish", "--symbols", "AAPL", "--rate", "5", "--metrics-port", str(port)],
                 env=env)
    wait_http(f"http://127.0.0.1:{port}/metrics", proc)
    assert listening_addresses(port) == {expected}
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, out
