"""CSV export of a symbol's trades (or quotes) over a time range, streamed
by ``COPY ... TO STDOUT``."""

from __future__ import annotations

from typing import IO, Any

from pricepipe.clock import us_to_datetime
from pricepipe.keys import Channel

# Values are bound by mogrify (psycopg2's own quoting), never formatted in;
# the queries differ only in constant text.
EXPORT_SQL: dict[Channel, str] = {
    Channel.TRADES: """
    COPY (
        SELECT symbol, ts, price, size, side, trade_id, source, recv_ts, entry_id
        FROM trades
        WHERE symbol = %(symbol)s AND ts >= %(start)s AND ts < %(end)s
        ORDER BY ts, entry_id
    ) TO STDOUT WITH (FORMAT csv, HEADER true)
""",
    Channel.QUOTES: """
    COPY (
        SELECT symbol, ts, bid, bid_size, ask, ask_size, source, recv_ts, entry_id
        FROM quotes
        WHERE symbol = %(symbol)s AND ts >= %(start)s AND ts < %(end)s
        ORDER BY ts, entry_id
    ) TO STDOUT WITH (FORMAT csv, HEADER true)
""",
}


def export_csv(conn: Any, out: IO[str], symbol: str, start_us: int, end_us: int, *,
               channel: Channel = Channel.TRADES) -> int:
    """Write the trades (or, with ``channel=QUOTES``, the quotes) of ``symbol``
    in ``[start_us, end_us)`` to ``out`` as CSV (header first; times ISO-8601
    in UTC; absent values empty). Returns the number of data rows."""
    if channel not in EXPORT_SQL:
        raise ValueError(f"no export of {channel}: trades or quotes")
    with conn.cursor() as cur:
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        query = cur.mogrify(EXPORT_SQL[channel], {"symbol": symbol,
                                                  "start": us_to_datetime(start_us),
                                                  "end": us_to_datetime(end_us)})
        counter = _LineCounter(out)
        cur.copy_expert(query, counter)
        conn.commit()
    return max(counter.lines - 1, 0)


class _LineCounter:
    """A file wrapper that counts the lines written through it."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lines = 0

    def write(self, data: str | bytes) -> int:
        text = data.decode() if isinstance(data, bytes) else data
        self.lines += text.count("\n")
        return self.out.write(text)
