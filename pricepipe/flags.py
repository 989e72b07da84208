"""Command-line flags shared by several subcommands, and how they become
settings. Used by the command modules only (``pricepipe/cli.py`` and each
role's ``cli.py``); services take the settings objects built here.

Every ``pricepipe`` command has the global ``--data-dir`` and
``--log-level``; commands that connect add ``--redis-url`` and
``--database-url`` through :func:`add_server_flags`. A flag given wins over
the environment, which wins over a running ``pricepipe up``'s published
URLs (:func:`pricepipe.config.environment`).
"""

from __future__ import annotations

import argparse

from .config import DatabaseSettings, RedisSettings, RuntimeSettings, environment


def add_server_flags(parser: argparse.ArgumentParser, *, redis: bool = True,
                     database: bool = True) -> None:
    """``--redis-url`` / ``--database-url`` (both default to None: unset)."""
    if redis:
        parser.add_argument("--redis-url", help="Redis URL (env PRICEPIPE_REDIS_URL)")
    if database:
        parser.add_argument("--database-url",
                            help="PostgreSQL URL (env PRICEPIPE_DATABASE_URL)")
    parser.set_defaults(**({"redis_url": None} if not redis else {}),
                        **({"database_url": None} if not database else {}))


def runtime_settings(args: argparse.Namespace) -> RuntimeSettings:
    return RuntimeSettings.from_env(data_dir=args.data_dir, log_level=args.log_level)


def env(args: argparse.Namespace) -> dict[str, str]:
    """The environment this command resolves its settings from."""
    return environment(data_dir=args.data_dir)


def redis_settings(args: argparse.Namespace) -> RedisSettings:
    """Redis settings of a command with :func:`add_server_flags`."""
    return RedisSettings.from_env(env(args), url=args.redis_url)


def database_settings(args: argparse.Namespace) -> DatabaseSettings:
    """Database settings of a command with :func:`add_server_flags`."""
    return DatabaseSettings.from_env(env(args), url=args.database_url)
