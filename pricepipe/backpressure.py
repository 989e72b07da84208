"""Backpressure: how close Redis is to its memory limit. Pure code.

When the database is down for long the streams grow until Redis reaches
``maxmemory``; with the ``noeviction`` policy it then refuses writes with
``OOM command not allowed when used memory > 'maxmemory'``. Publishers
read ``INFO memory`` periodically (not per tick) and follow a
:class:`Policy` above a high-water fraction of ``maxmemory``, instead of
crashing on that error (which they also recognise, see :func:`is_oom_error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.exceptions

from .exceptions import ConfigError


class Policy(StrEnum):
    """What a publisher does while Redis is above its high-water mark."""

    #: Wait (publishing nothing, losing nothing) until memory falls below
    #: the low-water mark, then go on.
    BLOCK = "block"
    #: Keep running, discard new ticks and count them.
    DROP = "drop"

    @classmethod
    def parse(cls, text: str) -> Policy:
        try:
            return cls(text.strip().lower())
        except ValueError as exc:
            raise ConfigError(f"backpressure policy must be block or drop, not {text!r}") from exc


@dataclass(frozen=True, slots=True)
class MemoryUsage:
    """``used_memory`` and ``maxmemory`` in bytes; ``max_bytes == 0`` means no limit."""

    used_bytes: int
    max_bytes: int

    @property
    def fraction(self) -> float:
        """Used share of the limit (0.0 without a limit)."""
        return self.used_bytes / self.max_bytes if self.max_bytes > 0 else 0.0


def memory_usage(info: Mapping[str, Any]) -> MemoryUsage:
    """From redis-py's parsed ``INFO memory``. In cluster mode redis-py returns
    one such mapping per node; the fullest node is reported, since that is
    the one that refuses writes first.

    Raises ``ValueError`` when the fields are missing.
    """
    if "used_memory" not in info and info and all(isinstance(v, Mapping) for v in info.values()):
        nodes = [memory_usage(node) for node in info.values()]
        return max(nodes, key=lambda usage: usage.fraction)
    try:
        return MemoryUsage(int(info["used_memory"]), int(info.get("maxmemory", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an INFO memory reply: {exc}") from exc


def is_oom_error(exc: BaseException) -> bool:
    """True for Redis's ``OOM command not allowed ...`` error reply (redis-py
    raises it as ``OutOfMemoryError``, without the ``OOM`` prefix)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM ")
