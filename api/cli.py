"""``pricepipe api``: serve the HTTP API and dashboard. Light at import:
FastAPI and uvicorn load only when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

from pricepipe.flags import add_server_flags, database_settings, redis_settings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("api", help="serve the HTTP API and the dashboard")
    add_server_flags(p)
    p.add_argument("--read-database-url",
                   help="read-only PostgreSQL URL (env PRICEPIPE_DATABASE_READ_URL)")
    p.add_argument("--host", help="listen address (env PRICEPIPE_API_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (env PRICEPIPE_API_PORT, default 8000)")
    p.add_argument("--ws-url", help="websocket URL for the dashboard "
                   "(env PRICEPIPE_API_WS_URL; default ws(s)://<same host>/ws)")
    p.set_defaults(func=_cmd_api)


def _cmd_api(args: argparse.Namespace) -> int:
    import dataclasses

    from .app import create_app
    from .server import serve
    from .settings import ApiSettings

    settings = ApiSettings.from_env(host=args.host, port=args.port, ws_url=args.ws_url)
    db = database_settings(args)
    if args.read_database_url:
        db = dataclasses.replace(db, read_url=args.read_database_url)
    app = create_app(settings, redis_settings(args), db)
    return serve(app, host=settings.host, port=settings.port)
