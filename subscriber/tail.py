"""``pricepipe tail``: live trades and quotes in the terminal, read straight
from Redis with the client library's latest-only reader."""

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
from pricepipe.events import Quote, Trade

from .client import Delivery, Gap, StreamReader
from .client.core import DEFAULT_CHANNELS
from .client.settings import ClientSettings


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_line(delivery: Delivery | Gap, *, as_json: bool) -> str:
    """One output line: JSON (the websocket shape of the event, plus its
    ``channel``; a gap as ``{"gap": ...}``) or aligned text."""
    if isinstance(delivery, Gap):
        if as_json:
            return codec.encode_json({"gap": {
                "symbol": delivery.symbol, "channel": str(delivery.channel),
                "after": delivery.after, "until": delivery.until,
                "reason": str(delivery.reason)}}).decode()
        return (f"{'':27}  {delivery.symbol:<16} gap   entries after {delivery.after} and "
                f"before {delivery.until} of {delivery.channel} may be missing "
                f"({delivery.reason})")
    event = delivery.event
    if as_json:
        data = {"channel": str(delivery.channel),
                **codec.event_to_dict(event, delivery.entry_id)}
        return codec.encode_json(data).decode()
    if isinstance(event, Trade):
        side = "" if event.side is None else str(event.side)
        what = f"trade {event.price:>14.6f} x {_num(event.size, 'g'):<10} {side:<4}"
        ts_us = event.ts_us
    elif isinstance(event, Quote):
        what = (f"quote {_num(event.bid, '>14.6f')} / {_num(event.ask, '<14.6f')} "
                f"({_num(event.bid_size, 'g')} x {_num(event.ask_size, 'g')})")
        ts_us = event.ts_us
    else:
        what = (f"bar   o {event.open:.6f} h {event.high:.6f} l {event.low:.6f} "
                f"c {event.close:.6f} v {event.volume:g} {event.state}")
        ts_us = event.bucket_us
    source = getattr(event, "source", "")
    return f"{format_us(ts_us)}  {event.symbol:<16} {what}  {source:<10} {delivery.entry_id}"


def run_tail(settings: RedisSettings, symbols: Iterable[str], *,
             channels: Iterable[str] = DEFAULT_CHANNELS, as_json: bool = False,
             last: bool = False, count: int | None = None, duration_s: float | None = None,
             out: TextIO = sys.stdout) -> int:
    """Print events until ``count`` of them, ``duration_s`` seconds or SIGTERM/SIGINT."""
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
        with StreamReader(r, keys, symbols, channels=channels, start="last" if last else "$",
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
