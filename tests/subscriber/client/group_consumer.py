"""A consumer-group strategy process for the crash test: for each delivery it
appends ``<symbol>/<channel> <entry_id> <redelivered>`` to a ledger file, then acks.

Run: ``python group_consumer.py LEDGER SYMBOL...`` with PRICEPIPE_REDIS_* set.
"""

from __future__ import annotations

import sys
import time

from pricepipe.config import RedisSettings
from pricepipe.connections import redis_client
from pricepipe.subscriber.client import Gap, GroupReader
from pricepipe.subscriber.client.settings import ClientSettings


def main(ledger_path: str, symbols: list[str]) -> int:
    settings = RedisSettings.from_env()
    r = redis_client(settings)
    keys = settings.keys
    with open(ledger_path, "a") as ledger, GroupReader(
        r, keys, symbols, group="crash-test", consumer="worker-1", start="0",
        settings=ClientSettings(block_ms=100, count=10),
    ) as reader:
        for delivery in reader:
            if isinstance(delivery, Gap):  # none expected: the test does not trim
                ledger.write(f"GAP {delivery}\n")
                continue
            ledger.write(f"{delivery.symbol}/{delivery.channel} {delivery.entry_id} "
                         f"{int(delivery.redelivered)}\n")
            ledger.flush()
            time.sleep(0.002)  # a strategy doing work: widens the crash window
            reader.ack(delivery)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
