"""``pricepipe publish --source <provider>`` as a process, against the fake upstream."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from typing import Any

from pricepipe.keys import Keys

from ..helpers import wait_until
from .fake_upstream import FakeUpstream
from .helpers import read_quotes, read_trades

Spawn = Callable[..., subprocess.Popen[bytes]]


def test_finnhub_publisher_burst(spawn: Spawn, pipeline_env: dict[str, str], r: Any,
                                 keys: Keys, fake: FakeUpstream) -> None:
    fake.add_trade("AAPL", 190.25)
    fake.add_trade("MSFT", 420.5)
    env = {**pipeline_env, "PRICEPIPE_FINNHUB_API_KEY": "test-key"}
    proc = spawn(["publish", "--source", "finnhub", "--symbols", "AAPL,MSFT,NOPE",
                  "--base-url", fake.url, "--rounds", "2", "--interval", "0.05"], env=env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    (trade,) = read_trades(r, keys, "AAPL")
    assert (trade.price, trade.source, trade.size) == (190.25, "finnhub", None)
    assert r.xlen(keys.trades("MSFT")) == 1
    assert r.xlen(keys.quotes("AAPL")) == 0  # Finnhub's quote is a last price, no book
    assert r.xlen(keys.trades("NOPE")) == 0  # all-zero answer for an unknown symbol
    assert b"unknown_symbol" in out
    assert b"2 trades and 0 quotes published" in out
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
    fake.set_market("BTCUSDT", 65000.0)
    fake.script("500", "500", "500", "500", "html", "reset")
    proc = spawn(["publish", "--source", "binance", "--symbols", "BTC-USD=BTCUSDT",
                  "--base-url", fake.url, "--interval", "0.05"],
                 env={**pipeline_env, "PRICEPIPE_POLL_RETRIES": "1",
                      "PRICEPIPE_POLL_BACKOFF_FACTOR_S": "0.01"})
    wait_until(lambda: r.xlen(keys.trades("BTC-USD")) >= 1 and
               r.xlen(keys.quotes("BTC-USD")) >= 1, timeout_s=30, proc=proc)
    fake.set_market("BTCUSDT", 65010.0)
    # Trades and the book are polled apart: the new trade may come first.
    wait_until(lambda: r.xlen(keys.trades("BTC-USD")) >= 2 and
               r.xlen(keys.quotes("BTC-USD")) >= 2, timeout_s=30, proc=proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    # Published once the upstream healed, and each update exactly once.
    assert [t.price for t in read_trades(r, keys, "BTC-USD")] == [65000.0, 65010.0]
    assert [(q.bid, q.ask) for q in read_quotes(r, keys, "BTC-USD")] == [
        (64999.99, 65000.01), (65009.99, 65010.01)]
