"""A recording strategy process for ``pricepipe soak``: the client library's
:class:`~pricepipe.subscriber.client.GroupReader` over the soak's symbols,
acknowledging every delivery, optionally filling gaps from PostgreSQL.

Each life of the process (the soak stops it past the hard cap and starts it
again under the same consumer name) appends one JSON line to ``--record``
when it is stopped (SIGTERM or SIGINT)::

    {"deliveries": [[channel, symbol, packed id, redelivered, filled], ...],
     "gaps": [[channel, symbol, after, until, reason, filled], ...],
     "errors": [...]}

in the order the reader handed them out. The soak judges them with
:func:`pricepipe.bench.soak.check_reader`.

Run: ``python -m pricepipe.bench.strategy --symbols A,B --group g --consumer c
--record FILE [--checkpoint FILE] [--fill-gaps]`` with the ``PRICEPIPE_REDIS_*`` (and, for
``--fill-gaps``, ``PRICEPIPE_DATABASE_URL``) environment.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pricepipe.codec import decode_json, encode_json, pack_entry_id


def main(argv: Sequence[str] | None = None) -> int:
    from pricepipe.config import DatabaseSettings, RedisSettings
    from pricepipe.connections import pg_connect, redis_client
    from pricepipe.subscriber.client import Gap, GroupReader, PgHistory

    parser = argparse.ArgumentParser(prog="python -m pricepipe.bench.strategy",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--checkpoint",
                        help="the reader's checkpoint file (kept across lives: a failover"
                             " while the process is stopped is reported as a gap)")
    parser.add_argument("--fill-gaps", action="store_true",
                        help="fill gaps from PostgreSQL (PRICEPIPE_DATABASE_URL)")
    args = parser.parse_args(argv)
    redis_settings = RedisSettings.from_env()
    history = None
    if args.fill_gaps:
        url = DatabaseSettings.from_env().require_url()
        history = PgHistory(connect=lambda: pg_connect(url, application_name="soak-strategy"))

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    deliveries: list[list[Any]] = []
    gaps: list[list[Any]] = []
    errors: list[str] = []
    r = redis_client(redis_settings)
    symbols = [s for s in args.symbols.split(",") if s]
    try:
        with GroupReader(r, redis_settings.keys, symbols, group=args.group,
                         consumer=args.consumer, start="$", fill_gaps=history,
                         checkpoint=args.checkpoint) as reader:
            while not stop.is_set():
                try:
                    item = reader.get(timeout_s=0.2)
                except Exception as exc:  # noqa: BLE001 - recorded: the soak judges it
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    break
                if item is None:
                    continue
                if isinstance(item, Gap):
                    gaps.append([str(item.channel), item.symbol, item.after, item.until,
                                 str(item.reason), item.filled])
                    continue
                deliveries.append([str(item.channel), item.symbol,
                                   pack_entry_id(item.entry_id), item.redelivered,
                                   item.filled])
                if not item.filled:
                    reader.ack(item)
    finally:
        r.close()
        with Path(args.record).open("ab") as out:
            out.write(encode_json({"deliveries": deliveries, "gaps": gaps,
                                   "errors": errors}) + b"\n")
    return 1 if errors else 0


def load_lives(path: Path) -> list[dict[str, Any]]:
    """Every life's record, oldest first ([] when the file is missing)."""
    if not path.exists():
        return []
    return [decode_json(line) for line in path.read_bytes().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
