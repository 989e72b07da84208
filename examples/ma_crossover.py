"""Example strategy: moving-average crossover of the quote mid, live or replayed.

It reads quotes only (a reader of quotes never decodes a trade). A BUY signal
when the fast simple moving average of a symbol's mid price ((bid + ask) / 2)
crosses above the slow one, SELL when it crosses below; a signal is acted on
only while the spread is at most ``--max-spread-bps`` of the mid (a wide
spread makes the crossing too expensive to trade). Signals are printed with
the price a market order would pay (the ask for a buy, the bid for a sell);
a real strategy would place orders.

Against the demo (``pricepipe up`` in another terminal writes the URLs into
``.pricepipe/embedded.env``; or set PRICEPIPE_REDIS_URL yourself)::

    python examples/ma_crossover.py --symbols AAPL,MSFT
    python examples/ma_crossover.py --group ma --consumer ma-1      # crash-safe
    python examples/ma_crossover.py --replay --since 2026-01-01T00:00:00Z --speed 60

``--group`` reads through a consumer group and acknowledges each quote once
handled: kill it and start it again with the same ``--consumer`` and it
carries on where it stopped. ``--replay`` reads history from PostgreSQL
(PRICEPIPE_DATABASE_URL) through the same reader interface, ``--speed`` times
faster than it happened (0: as fast as possible), for a backtest.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pricepipe.clock import format_us, now_us, parse_time_us
from pricepipe.config import DatabaseSettings, RedisSettings, environment
from pricepipe.connections import pg_connect, redis_client
from pricepipe.events import Quote
from pricepipe.streams import known_symbols
from pricepipe.subscriber.client import Delivery, Gap, GroupReader, ReplayReader, StreamReader

#: The strategy reads quotes only.
CHANNELS = ("quotes",)


@dataclass
class Crossover:
    """Fast/slow simple moving averages of one symbol. Pure: no I/O."""

    fast: int
    slow: int
    _prices: deque[float] = field(default_factory=deque)
    _above: bool | None = None

    def update(self, price: float) -> str | None:
        """Feed one price; returns "BUY" or "SELL" when the averages cross."""
        self._prices.append(price)
        if len(self._prices) > self.slow:
            self._prices.popleft()
        if len(self._prices) < self.slow:
            return None
        prices = list(self._prices)
        fast_ma = sum(prices[-self.fast:]) / self.fast
        slow_ma = sum(prices) / self.slow
        above = fast_ma > slow_ma
        crossed = self._above is not None and above != self._above
        self._above = above
        if not crossed:
            return None
        return "BUY" if above else "SELL"


def signal_of(model: Crossover, quote: Quote, max_spread_bps: float) -> tuple[str, float] | None:
    """Feed one quote; ``(signal, price to pay)`` when the averages of the mid
    cross and the spread is narrow enough, else None. One-sided books carry
    no mid and are skipped."""
    mid, spread = quote.mid, quote.spread
    if mid is None or spread is None:
        return None
    signal_name = model.update(mid)
    if signal_name is None or spread / mid * 10_000 > max_spread_bps:
        return None
    assert quote.bid is not None and quote.ask is not None
    return signal_name, quote.ask if signal_name == "BUY" else quote.bid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", help="comma-separated (default: every known symbol)")
    parser.add_argument("--fast", type=int, default=5, help="fast window, quotes")
    parser.add_argument("--slow", type=int, default=20, help="slow window, quotes")
    parser.add_argument("--max-spread-bps", type=float, default=50.0,
                        help="act only while the spread is at most this, basis points of mid")
    parser.add_argument("--group", help="consumer group name (crash-safe, acknowledged)")
    parser.add_argument("--consumer", default="ma-1", help="consumer name within the group")
    parser.add_argument("--replay", action="store_true", help="backtest on PostgreSQL history")
    parser.add_argument("--since", help="replay start (ISO time or epoch; default: 1 h ago)")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="replay speed multiple (0: as fast as possible)")
    parser.add_argument("--count", type=int, help="stop after this many quotes")
    args = parser.parse_args(argv)
    if args.fast >= args.slow:
        parser.error("--fast must be shorter than --slow")

    env = environment()  # PRICEPIPE_*, else a running `pricepipe up`'s servers
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    redis_settings = RedisSettings.from_env(env)
    keys = redis_settings.keys
    closers: list[Any] = []
    if args.symbols:
        symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    else:
        r0 = redis_client(redis_settings)
        symbols = known_symbols(r0, keys)
        r0.close()
    if not symbols:
        print("no symbols yet: start a publisher (pricepipe up) or pass --symbols",
              file=sys.stderr)
        return 1

    reader: Any
    if args.replay:
        conn = pg_connect(DatabaseSettings.from_env(env).require_read_url(),
                          application_name="ma-crossover", readonly=True)
        closers.append(conn)
        since = parse_time_us(args.since) if args.since else now_us() - 3_600_000_000
        reader = ReplayReader(conn, symbols, start_us=since, speed=args.speed or None,
                              channels=CHANNELS)
    else:
        r = redis_client(redis_settings)
        closers.append(r)
        if args.group:
            reader = GroupReader(r, keys, symbols, group=args.group, consumer=args.consumer,
                                 channels=CHANNELS)
        else:
            reader = StreamReader(r, keys, symbols, channels=CHANNELS)

    models = {s: Crossover(args.fast, args.slow) for s in symbols}
    seen = 0
    started = time.monotonic()
    print(f"watching {', '.join(symbols)} (fast {args.fast}, slow {args.slow})", flush=True)
    try:
        while not stop and (args.count is None or seen < args.count):
            delivery: Delivery | Gap | None = reader.get(timeout_s=0.5)
            if delivery is None:
                if args.replay and reader.finished:
                    break
                continue
            if isinstance(delivery, Gap):
                # Quotes may be missing: the averages would straddle the hole.
                print(f"gap in {delivery.symbol} {delivery.channel} after {delivery.after} "
                      f"({delivery.reason}): averages restart", flush=True)
                models[delivery.symbol] = Crossover(args.fast, args.slow)
                continue
            seen += 1
            quote = delivery.event
            assert isinstance(quote, Quote)
            found = signal_of(models[quote.symbol], quote, args.max_spread_bps)
            if found:
                signal_name, price = found
                print(f"{format_us(quote.ts_us)} {signal_name:<4} {quote.symbol:<10} "
                      f"{price:.4f}  (entry {delivery.entry_id})", flush=True)
            reader.ack(delivery)
    finally:
        reader.close()
        for closer in closers:
            closer.close()
    print(f"{seen} quotes in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
