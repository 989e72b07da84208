"""``pricepipe tail`` prints live trades and quotes; ``python -m pricepipe.subscriber``
is ``pricepipe ws``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import redis

from pricepipe import codec
from pricepipe.clock import format_us
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Keys
from pricepipe.subscriber.client import Delivery
from pricepipe.subscriber.tail import format_line

from .helpers import TS, publish


def test_tail_prints_the_latest_then_live_events(
    spawn: Callable[..., subprocess.Popen[bytes]], pipeline_env: dict[str, str],
    r: redis.Redis, keys: Keys,
) -> None:
    first = publish(r, keys, "AAPL", 2)
    proc = spawn(["tail", "AAPL", "MSFT", "--last", "--json", "--count", "3"],
                 env=pipeline_env, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the latest trade already there: the reader is live
    assert codec.decode_json(line)["id"] == first[-1]
    assert codec.decode_json(line)["channel"] == "trades"
    later = publish(r, keys, "MSFT", 2, start=10)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    events = [codec.decode_json(x) for x in out.splitlines()]
    assert [(e["symbol"], e["id"]) for e in events] == [("MSFT", i) for i in later]
    assert events[0]["price"] == 110.0


def test_text_lines_are_aligned_and_complete() -> None:
    trade = Trade("AAPL", TS, 187.25, 3.0, "gbm", "7", Side.BUY)
    assert format_line(Delivery("5-1", trade), as_json=False).split() == [
        format_us(TS), "AAPL", "trade", "187.250000", "x", "3", "buy", "gbm",
        "5-1"]
    quote = Quote("AAPL", TS, 187.2, 5.0, None, None, "gbm")
    assert format_line(Delivery("5-2", quote), as_json=False).split() == [
        format_us(TS), "AAPL", "quote", "187.200000", "/", "-", "(5", "x",
        "-)", "gbm", "5-2"]


def test_python_m_subscriber_is_pricepipe_ws() -> None:
    out = subprocess.run([sys.executable, "-m", "pricepipe.subscriber", "--help"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "--allow-websocket-origin" in out and "--port" in out
