"""``pricepipe ws`` and ``pricepipe tail``: flags only; websockets and the
server are imported by the handlers, so ``pricepipe --help`` stays fast."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from pricepipe.flags import add_server_flags

    p: argparse.ArgumentParser = subparsers.add_parser(
        "ws", help="serve live trades, quotes and bars over websockets (endpoint /ws, "
        "health /healthz)",
        description="Websocket server. Flags override PRICEPIPE_WS_* settings "
                    "(see `pricepipe config`); the protocol is in the README (Websocket protocol).")
    add_server_flags(p, database=False)
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8765; 0: any free port)")
    p.add_argument("--allow-websocket-origin", action="append", metavar="HOST[:PORT]",
                   help="allowed browser Origin (repeatable; default: any)")
    p.set_defaults(func=_cmd_ws)

    p = subparsers.add_parser(
        "tail", help="print live trades and quotes of some symbols",
        description="Print events (trades, quotes, bars) as they are appended to the streams "
                    "(straight from Redis).")
    add_server_flags(p, database=False)
    p.add_argument("symbols", nargs="+", metavar="SYMBOL")
    p.add_argument("--channels", type=_channels, default="trades,quotes",
                   help="comma-separated: trades, quotes, bars.1m (default trades,quotes)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--last", action="store_true",
                   help="start with the latest event of each symbol and channel already in the "
                        "streams")
    p.add_argument("--count", type=int,
                   help="exit after printing this many lines (events and gap notices)")
    p.add_argument("--duration", type=float, help="exit after this many seconds")
    p.set_defaults(func=_cmd_tail)


def _cmd_ws(args: argparse.Namespace) -> int:
    from pricepipe import eventloop
    from pricepipe.flags import redis_settings

    from .ws.server import run
    from .ws.settings import WsSettings

    origins = tuple(args.allow_websocket_origin) if args.allow_websocket_origin else None
    settings = WsSettings.from_env(host=args.host, port=args.port, allowed_origins=origins)
    return eventloop.run(run(settings, redis_settings(args)))


def _cmd_tail(args: argparse.Namespace) -> int:
    from pricepipe.flags import redis_settings

    from .tail import run_tail

    return run_tail(redis_settings(args), args.symbols, channels=args.channels,
                    as_json=args.json, last=args.last, count=args.count,
                    duration_s=args.duration)


def _channels(text: str) -> list[str]:
    """argparse type of ``--channels``: known channel names, comma-separated."""
    from pricepipe.keys import Channel

    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [n for n in names if n not in set(Channel)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"want some of {', '.join(Channel)}, not {text!r}")
    return names
