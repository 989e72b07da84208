"""Connection factories. Nothing here runs at import time: callers create
connections from settings and pass them on explicitly."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg2
import psycopg2.extensions
import redis
import redis.asyncio

from .config import RedisSettings

#: What the rest of the code accepts as "a Redis connection".
RedisClient = redis.Redis | redis.RedisCluster


def redis_client(settings: RedisSettings, **kwargs: Any) -> Any:
    """A synchronous client (``decode_responses=False``: codecs work on bytes).

    In cluster mode a :class:`redis.RedisCluster`; key names keep each
    multi-key command inside one hash slot (see :mod:`pricepipe.keys`).
    """
    url = settings.require_url()
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": min(settings.socket_timeout_s, 5.0),
        "health_check_interval": 30,
    }
    options.update(kwargs)
    if settings.cluster:
        options.pop("health_check_interval", None)
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def async_redis_client(settings: RedisSettings, **kwargs: Any) -> Any:
    """An asyncio client, same options as :func:`redis_client`."""
    url = settings.require_url()
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": min(settings.socket_timeout_s, 5.0),
    }
    options.update(kwargs)
    if settings.cluster:
        return redis.asyncio.RedisCluster.from_url(url, **options)
    return redis.asyncio.Redis.from_url(url, **options)


def honour_cancel() -> None:
    """Raise the cancellation asked of the current task, if redis-py swallowed it.

    Python 3.11's ``asyncio.wait_for`` returns its result instead of raising
    when a cancel lands just as the awaited call finishes (CPython
    gh-86296), and redis.asyncio sends every command through it when the
    client has a ``socket_timeout`` (as :func:`async_redis_client`'s do). The
    request stays counted on the task: a loop calling this after each round
    trip ends when cancelled, instead of reading on forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def raw_replies(r: Any, *commands: str) -> Any:
    """A client sharing ``r``'s connection pool whose replies to ``commands``
    (e.g. ``"XREAD"``) skip redis-py's parsing, which builds a dict per stream
    entry (~0.7 us each): the server's nested lists come back as they are, an
    entry's fields as a flat ``[name, value, ...]`` list. Works for
    ``redis.Redis`` and ``redis.asyncio.Redis``; cluster clients are returned
    unchanged (their replies stay parsed), so callers accept both shapes.
    """
    if isinstance(r, redis.asyncio.Redis):
        client: Any = redis.asyncio.Redis(connection_pool=r.connection_pool)
    elif isinstance(r, redis.Redis):
        client = redis.Redis(connection_pool=r.connection_pool)
    else:
        return r
    for command in commands:
        client.set_response_callback(command, _unparsed)
    return client


def _unparsed(response: Any, **options: Any) -> Any:
    return response


def pg_connect(
    url: str, *, application_name: str = "pricepipe", readonly: bool = False,
    statement_timeout_ms: int | None = None, connect_timeout_s: int = 5,
) -> psycopg2.extensions.connection:
    """A psycopg2 connection. ``readonly`` makes every transaction read-only
    (defence in depth beside the read-only role the API should use)."""
    options = []
    if statement_timeout_ms is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    conn = psycopg2.connect(
        url,
        application_name=application_name,
        connect_timeout=connect_timeout_s,
        options=" ".join(options) or None,
    )
    if readonly:
        conn.set_session(readonly=True)
    return conn
