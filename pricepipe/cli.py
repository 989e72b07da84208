"""The ``pricepipe`` command.

Core subcommands live here (``up``, ``migrate``, ``status``, ``config``);
each role package contributes its own through a light ``<role>/cli.py``
module exposing ``register(subparsers)``. Those modules are imported only
here, when the parser is built, and must defer heavy imports (numpy,
FastAPI, websockets) into their handlers so that ``pricepipe --help`` stays
fast.

Every handler is ``handler(args) -> int`` (the exit code). A handler turns
its arguments into settings objects once (:mod:`pricepipe.flags`,
:mod:`pricepipe.config`) and hands those to the service it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Settings, environment
from .exceptions import PricepipeError
from .flags import add_server_flags, database_settings, redis_settings, runtime_settings
from .logs import configured_secrets, setup_logging

log = logging.getLogger("pricepipe")

#: Packages adding subcommands, each through its ``cli.py`` (imported lazily,
#: when the parser is built): the four roles, the core's ``redis-acl``, then
#: the benchmarks.
COMMAND_MODULES = (
    "pricepipe.publisher.cli", "pricepipe.workers.cli", "pricepipe.subscriber.cli",
    "pricepipe.api.cli", "pricepipe.aclcli", "pricepipe.bench.cli",
)

#: Modules with a ``SETTINGS`` tuple, listed by ``pricepipe config`` in this order.
SETTINGS_MODULES = (
    "pricepipe.publisher.settings", "pricepipe.workers.settings",
    "pricepipe.subscriber.ws.settings", "pricepipe.subscriber.client.settings",
    "pricepipe.api.settings",
)


# --- core subcommands ------------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .connections import pg_connect
    from .migrate import migrate

    conn = pg_connect(database_settings(args).require_url(), application_name="pricepipe-migrate")
    try:
        done = migrate(conn)
    finally:
        conn.close()
    print(f"applied {len(done)} migration(s)" + (f": {done}" if done else ""))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import collect, render
    from .workers.jobqueue import WORKER_OPTIONS

    report = collect(redis_settings(args), database_settings(args),
                     rq_worker_options=WORKER_OPTIONS)
    if args.json:
        from .codec import encode_json

        print(encode_json(report).decode())
    else:
        print(render(report))
    return 0


def config_markdown() -> str:
    """The README's configuration table: every variable of every settings class."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for cls in all_settings():
        for name, default, help_text in cls.documentation():
            lines.append(f"| `{name}` | `{default}` | {help_text} |")
    return "\n".join(lines)


README_TABLE_START = "<!-- config-table:start -->"
README_TABLE_END = "<!-- config-table:end -->"


def _cmd_config(args: argparse.Namespace) -> int:
    if args.update_readme:
        path = Path(args.update_readme)
        text = path.read_text()
        head, _, rest = text.partition(README_TABLE_START)
        _, _, tail = rest.partition(README_TABLE_END)
        path.write_text(f"{head}{README_TABLE_START}\n{config_markdown()}\n{README_TABLE_END}{tail}")
        print(f"updated the configuration table in {path}")
    elif args.markdown:
        print(config_markdown())
    else:
        rows = [row for cls in all_settings() for row in cls.documentation()]
        width = max(len(r[0]) for r in rows)
        for name, default, help_text in rows:
            print(f"{name:<{width}}  {default:<12}  {help_text}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from .config import DatabaseSettings, RedisSettings
    from .supervisor import UpOptions, run_up

    # Deliberately not flags.redis_settings(): a stale embedded.env of an
    # earlier run must not be mistaken for configured servers.
    return run_up(UpOptions(
        runtime=runtime_settings(args),
        redis=RedisSettings.from_env(url=args.redis_url),
        database=DatabaseSettings.from_env(url=args.database_url),
        symbols=args.symbols, rate=args.rate, api_port=args.api_port, ws_port=args.ws_port,
        duration_s=args.duration, enqueue_refresh=enqueue_metadata_refresh))


def enqueue_metadata_refresh(r: Any, keys: Any) -> Any:
    """Enqueue the schedule's metadata job as ``pricepipe jobs enqueue`` does
    (JSON, the retry policy) and return the rq job: ``up``'s refresh, here
    because only the command may reach into a role."""
    from .supervisor import METADATA_JOB
    from .workers.jobs import enqueue
    from .workers.schedule import SCHEDULE

    entry = next(e for e in SCHEDULE if e.name == METADATA_JOB)
    return enqueue(r, keys.rq_queue(entry.queue), entry.func, kwargs=dict(entry.kwargs))


def all_settings() -> list[type[Settings]]:
    """Every settings class: the core's and each role's ``SETTINGS`` tuple."""
    from .config import CORE_SETTINGS

    found: list[type[Settings]] = list(CORE_SETTINGS)
    for module_name in SETTINGS_MODULES:
        found.extend(importlib.import_module(module_name).SETTINGS)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pricepipe", description="Market-data pipeline: publish, persist, serve.")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (env PRICEPIPE_LOG_LEVEL)")
    parser.add_argument("--data-dir", help="state directory (env PRICEPIPE_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="run the whole pipeline (embedded servers unless URLs are set)")
    add_server_flags(p)
    p.add_argument("--symbols", type=int, default=10, help="number of demo GBM symbols")
    p.add_argument("--rate", type=float, default=5.0,
                   help="demo GBM events (trades and quotes) per second per symbol")
    p.add_argument("--api-port", type=int, default=None, help="HTTP port (default: free port)")
    p.add_argument("--ws-port", type=int, default=None, help="websocket port (default: free)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("migrate", help="apply database migrations (safe to run twice)")
    add_server_flags(p, redis=False)
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("status", help="streams, lag, pending, rows, jobs")
    add_server_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("config", help="list every environment variable and its default")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table")
    p.add_argument("--update-readme", metavar="PATH",
                   help="rewrite the table between the config-table markers of PATH")
    p.set_defaults(func=_cmd_config)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runtime = runtime_settings(args)
    # Every configured secret, masked in every log line (pricepipe.logs).
    setup_logging(runtime.log_level, json=runtime.log_json, secrets=configured_secrets(
        environment(data_dir=args.data_dir), all_settings(),
        values=[v for v in vars(args).values() if isinstance(v, str)]))
    try:
        code: Any = args.func(args)
    except PricepipeError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
