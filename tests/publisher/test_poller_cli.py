"""``pricepipe publish --source <provider>`` as a process, against the fake upstream."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from pricepipe.codec import decode_fields
from pricepipe.keys import Keys

from .fake_upstream import FakeUpstream

Spawn = Callable[..., subprocess.Popen[bytes]]


def test_finnhub_publisher_burst(spawn: Spawn, pipeline_env: dict[str, str], r: Any,
                                 keys: Keys, fake: FakeUpstream) -> None:
    fake.set_quote("AAPL", 190.25)
    fake.set_quote("MSFT", 420.5)
    env = {**pipeline_env, "PRICEPIPE_FINNHUB_API_KEY": "test-key"}
    proc = spawn(["publish", "--source", "finnhub", "--symbols", "AAPL,MSFT,NOPE",
                  "--base-url", fake.url, "--rounds", "2", "--interval", "0.05"], env=env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    (entry,) = r.xrange(keys.stream("AAPL"))
    tick = decode_fields(entry[1])
    assert (tick.price, tick.source) == (190.25, "finnhub")
    assert len(r.xrange(keys.stream("MSFT"))) == 1
    assert r.xlen(keys.stream("NOPE")) == 0  # all-zero answer for an unknown symbol
    assert b"non_positive" in out
    # The key travelled in a header, never in the URL.
    assert all("test-key" not in path for _, path, _ in fake.log)


def test_missing_api_key_is_a_clear_error(spawn: Spawn, pipeline_env: dict[str, str],
                                          fake: FakeUpstream) -> None:
    proc = spawn(["publish", "--source", "finnhub", "--base-url", fake.url, "--rounds", "1"],
                 env=pipeline_env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"PRICEPIPE_FINNHUB_API_KEY" in out


def test_poller_keeps_running_and_stops_on_sigterm(
    spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys, fake: FakeUpstream
) -> None:
    fake.set_quote("BTCUSDT", 65000.0)
    fake.script("500", "500", "500", "500", "html", "reset")
    proc = spawn(["publish", "--source", "binance", "--symbols", "BTC-USD=BTCUSDT",
                  "--base-url", fake.url, "--interval", "0.05"],
                 env={**pipeline_env, "PRICEPIPE_POLL_RETRIES": "1",
                      "PRICEPIPE_POLL_BACKOFF_FACTOR_S": "0.01"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and r.xlen(keys.stream("BTC-USD")) < 1:
        time.sleep(0.05)
    assert r.xlen(keys.stream("BTC-USD")) == 1  # published once the upstream healed
    fake.set_quote("BTCUSDT", 65010.0)
    while time.monotonic() < deadline and r.xlen(keys.stream("BTC-USD")) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    prices = [decode_fields(f).price for _, f in r.xrange(keys.stream("BTC-USD"))]
    assert prices == [65000.0, 65010.0]
