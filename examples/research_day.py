"""Research example: a day of trades as a pandas DataFrame, resampled to
one-minute OHLC bars with volume, drawn as a PNG chart.

Needs the research extra (``pip install 'pricepipe[research]'``: pandas,
pyarrow, matplotlib). The trades come straight from PostgreSQL
(PRICEPIPE_DATABASE_READ_URL or PRICEPIPE_DATABASE_URL, else the servers of a
running ``pricepipe up``), or over the HTTP API with ``--api``::

    python examples/research_day.py --symbol AAPL --day 2026-01-05
    python examples/research_day.py --symbol AAPL --api http://127.0.0.1:8000 --out aapl.png

It prints how many trades and minutes it read, and where the chart went.
The loading is the three lines of the README::

    from pricepipe.subscriber.client import trades_frame
    trades = trades_frame(source, "AAPL", "2026-01-05", "2026-01-06")
    bars = trades["price"].resample("1min").ohlc()
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pricepipe.config import DatabaseSettings, environment
from pricepipe.connections import pg_connect
from pricepipe.subscriber.client import HttpHistory, trades_frame


def minute_bars(trades: Any) -> Any:
    """One-minute OHLC of ``price`` and the summed ``size`` as ``volume``
    (a trade without a size counts in the prices only); minutes without a
    trade are left out. Pure: a frame in, a frame out."""
    bars = trades["price"].resample("1min").ohlc()
    bars["volume"] = trades["size"].resample("1min").sum()
    bars["trades"] = trades["price"].resample("1min").count()
    return bars[bars["trades"] > 0]


def draw(bars: Any, title: str, path: str) -> None:
    """Close with the high-low range above, volume below, saved as a PNG."""
    # The figure without pyplot: no GUI backend, no global state (Agg renders).
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), layout="constrained")
    price, volume = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    times = bars.index.to_pydatetime()
    price.fill_between(times, bars["low"], bars["high"], step="mid", alpha=0.3,
                       label="high-low")
    price.plot(times, bars["close"], linewidth=1.0, label="close")
    price.set_ylabel("price")
    price.set_title(title)
    price.legend(loc="upper left")
    volume.bar(times, bars["volume"], width=1 / 1440, align="edge")
    volume.set_ylabel("volume")
    volume.set_xlabel("UTC")
    volume.xaxis.set_major_formatter(DateFormatter("%H:%M"))
    figure.savefig(path, format="png", dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbol", default="AAPL")
    parser.add_argument("--day", type=date.fromisoformat,
                        default=datetime.now(UTC).date(), help="UTC day, YYYY-MM-DD (today)")
    parser.add_argument("--api", help="the HTTP API's base URL (default: read PostgreSQL)")
    parser.add_argument("--api-key", help="X-API-Key for --api")
    parser.add_argument("--out", help="PNG path (default: SYMBOL-DAY.png)")
    args = parser.parse_args(argv)

    start = datetime(args.day.year, args.day.month, args.day.day, tzinfo=UTC)
    source: Any
    if args.api:
        source = HttpHistory(args.api, args.api_key)
    else:
        url = DatabaseSettings.from_env(environment()).require_read_url()
        source = pg_connect(url, application_name="research-day", readonly=True)
    try:
        trades = trades_frame(source, args.symbol, start, start + timedelta(days=1))
    finally:
        source.close()
    print(f"{len(trades)} trades of {args.symbol} on {args.day}")
    bars = minute_bars(trades)
    print(f"{len(bars)} minutes")
    if bars.empty:
        print("nothing to draw: no trades that day", file=sys.stderr)
        return 1
    path = args.out or f"{args.symbol}-{args.day}.png"
    draw(bars, f"{args.symbol} {args.day}: one-minute bars", path)
    print(f"chart: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
