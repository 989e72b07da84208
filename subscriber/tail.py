"""``pricepipe tail``: live ticks in the terminal, read straight from Redis
with the client library's latest-only reader."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from pricepipe import codec
from pricepipe.clock import format_us
from pricepipe.config import RedisSettings
from pricepipe.connections import redis_client

from .client import Delivery, StreamReader
from .client.settings import ClientSettings


def format_line(delivery: Delivery, *, as_json: bool) -> str:
    """One output line: JSON (the websocket tick shape) or aligned text."""
    tick = delivery.tick
    if as_json:
        return codec.encode_json(codec.tick_to_dict(tick, delivery.entry_id)).decode()
    size = "" if tick.size is None else f"{tick.size:g}"
    return (f"{format_us(tick.ts_us)}  {tick.symbol:<12} {tick.price:>14.6f} {size:>10}  "
            f"{tick.source:<10} {delivery.entry_id}")


def run_tail(settings: RedisSettings, symbols: Iterable[str], *, as_json: bool = False,
             last: bool = False, count: int | None = None, duration_s: float | None = None,
             out: TextIO = sys.stdout) -> int:
    """Print ticks until ``count`` ticks, ``duration_s`` seconds or SIGTERM/SIGINT."""
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    r = redis_client(settings)
    keys = settings.keys
    deadline = None if duration_s is None else time.monotonic() + duration_s
    printed = 0
    try:
        with StreamReader(r, keys, symbols, start="last" if last else "$",
                          settings=ClientSettings.from_env(block_ms=200)) as reader:
            while not stop and (count is None or printed < count):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                delivery = reader.get(timeout_s=0.2)
                if delivery is None:
                    continue
                print(format_line(delivery, as_json=as_json), file=out, flush=True)
                printed += 1
    finally:
        r.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
