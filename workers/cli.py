"""Subcommands of the workers package (light: heavy imports happen in handlers).

* ``pricepipe persist`` - a persist worker (``python -m workers`` is the same).
* ``pricepipe dlq list|replay|delete`` - inspect and re-queue dead letters.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)


def default_consumer_name() -> str:
    """Host and pid: unique, but not stable across restarts (pass ``--name``
    for that, so a restarted worker reads back its own pending entries at once)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _cmd_persist(args: argparse.Namespace) -> int:
    from pricepipe.cli import database_settings, redis_settings
    from pricepipe.connections import redis_client
    from pricepipe.keys import Keys

    from .consumer import GroupConsumer
    from .persister import PersistWorker
    from .settings import WorkerSettings
    from .sink import TickSink

    settings = WorkerSettings.from_env(batch_size=args.batch_size,
                                       claim_idle_ms=args.claim_idle_ms)
    rs = redis_settings(args)
    database_url = database_settings(args).require_url()
    r = redis_client(rs)
    try:
        keys = Keys(rs.prefix, rs.shards)
        name = args.name or default_consumer_name()
        worker = PersistWorker(
            r, TickSink(database_url, application_name=f"pricepipe-persist-{name}"[:63]),
            GroupConsumer(r, keys, name), settings, burst=args.burst)
        code = worker.run()
        if args.burst:
            print(f"persisted: {worker.stats.rows_inserted} new row(s), "
                  f"{worker.stats.duplicates} duplicate(s) skipped, "
                  f"{worker.stats.dead_letters} dead letter(s)")
        return code
    finally:
        r.close()


def _letters(args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    from pricepipe.cli import redis_settings
    from pricepipe.connections import redis_client
    from pricepipe.keys import Keys

    from . import deadletter

    rs = redis_settings(args)
    r = redis_client(rs)
    keys = Keys(rs.prefix, rs.shards)
    letters = deadletter.list_dead_letters(r, keys, limit=getattr(args, "limit", None))
    wanted = set(getattr(args, "ids", None) or ())
    if wanted:
        letters = [d for d in letters if d.dlq_id in wanted or d.entry_id in wanted]
    return r, keys, letters


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from pricepipe.clock import format_us
    from pricepipe.codec import encode_json

    r, _, letters = _letters(args)
    try:
        if args.json:
            print(encode_json([d.to_dict() for d in letters]).decode())
            return 0
        for d in letters:
            fields = " ".join(f"{k.decode(errors='replace')}={v.decode(errors='replace')!r}"
                              for k, v in d.fields.items())
            print(f"{d.dlq_id}  {d.stream} {d.entry_id}  deliveries={d.deliveries}  "
                  f"at {format_us(d.failed_ms * 1000)} by {d.consumer}\n"
                  f"    reason: {d.reason}\n    fields: {fields}")
        print(f"{len(letters)} dead letter(s)")
        return 0
    finally:
        r.close()


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from . import deadletter

    if not args.ids and not args.all:
        print("give dead-letter IDs (or entry IDs) to replay, or --all")
        return 2
    r, keys, letters = _letters(args)
    try:
        done = deadletter.replay(r, keys, letters)
        for stream, new_id in done:
            print(f"re-queued to {stream} as {new_id}")
        print(f"{len(done)} dead letter(s) re-queued")
        return 0
    finally:
        r.close()


def _cmd_dlq_delete(args: argparse.Namespace) -> int:
    from . import deadletter

    if not args.ids:
        print("give the dead-letter IDs (or entry IDs) to delete")
        return 2
    r, keys, letters = _letters(args)
    try:
        print(f"{deadletter.delete(r, keys, letters)} dead letter(s) deleted")
        return 0
    finally:
        r.close()


def register(subparsers: Any) -> None:
    from pricepipe.cli import add_server_flags

    p = subparsers.add_parser(
        "persist", help="persist worker: Redis Streams -> PostgreSQL (ticks and 1m bars)")
    add_server_flags(p)
    p.add_argument("--name", help="consumer name, stable across restarts (default: host-pid)")
    p.add_argument("--burst", action="store_true",
                   help="drain what is in the streams now (including pending), then exit 0")
    p.add_argument("--batch-size", type=int, default=None,
                   help="entries per transaction (env PRICEPIPE_WORKER_BATCH_SIZE)")
    p.add_argument("--claim-idle-ms", type=int, default=None,
                   help="claim other consumers' entries pending this long "
                        "(env PRICEPIPE_WORKER_CLAIM_IDLE_MS)")
    p.set_defaults(func=_cmd_persist)

    p = subparsers.add_parser("dlq", help="dead letters: entries that could not be persisted")
    dlq = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    q = dlq.add_parser("list", help="show dead letters with their reasons")
    add_server_flags(q, database=False)
    q.add_argument("--limit", type=int, default=None, help="show at most this many")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_cmd_dlq_list)
    q = dlq.add_parser("replay", help="append dead letters to their streams again (after a fix)")
    add_server_flags(q, database=False)
    q.add_argument("ids", nargs="*", help="dead-letter IDs or original entry IDs")
    q.add_argument("--all", action="store_true", help="replay every dead letter")
    q.set_defaults(func=_cmd_dlq_replay)
    q = dlq.add_parser("delete", help="drop dead letters for good")
    add_server_flags(q, database=False)
    q.add_argument("ids", nargs="+", help="dead-letter IDs or original entry IDs")
    q.set_defaults(func=_cmd_dlq_delete)
