"""The persist group's backlog: per persisted stream, how many entries were
appended, how many the group has not acknowledged yet, and how old the
oldest of those is. Read for the ``pricepipe up`` status line, the
benchmarks' lag samples and the Prometheus metrics of
:mod:`pricepipe.pipelinemetrics`, all from this one reader.

Everything comes from Redis's own bookkeeping (Redis >= 7), so it costs no
database query and stays right while the persist workers are down:

* ``XINFO STREAM`` ``entries-added``: entries ever appended (trimming does
  not lower it, the AOF keeps it);
* ``XINFO GROUPS``: the persist group's ``pending`` (delivered to a worker,
  not yet acknowledged) and ``lag`` (not yet delivered). Redis 7.0 forgets
  ``lag`` (reports nil) after it reloads its AOF, until the group catches
  up; the entries after the group's ``last-delivered-id`` are then counted,
  up to a cap;
* the **oldest waiting entry**: the smallest pending entry (``XPENDING``
  summary), or else the first entry after ``last-delivered-id``. Its age is
  now minus the millisecond of its entry ID (Redis's acceptance of the
  ``XADD``): how long the oldest event not yet in PostgreSQL has waited.

Cost: two pipelined round trips whatever the number of streams (on a Redis
Cluster redis-py sends each pipeline as one batch per node); the second
carries at most two commands per stream, and none for a stream where
nothing waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .codec import parse_entry_id
from .keys import PERSIST_GROUP, PERSISTED, Keys

#: Most entries counted one by one when Redis cannot tell a group's lag.
LAG_SCAN_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Backlog:
    """One stream's state as the persist group sees it."""

    stream: str
    #: Entries ever appended (``entries-added``).
    added: int
    #: Whether the stream has the persist group (else nothing below is known).
    grouped: bool = False
    #: Delivered to a worker, not yet acknowledged.
    pending: int = 0
    #: Not yet delivered. A lower bound when Redis could not tell and the
    #: count reached the cap (``lag_exact`` False).
    lag: int = 0
    lag_exact: bool = True
    #: Entry-ID time (ms) of the oldest waiting entry; None when none waits.
    oldest_ms: int | None = None

    @property
    def waiting(self) -> int:
        """Entries the group has not acknowledged (pending + lag)."""
        return self.pending + self.lag

    @property
    def acknowledged(self) -> int:
        """Entries the group acknowledged: persisted or dead-lettered (the
        persist group is never trimmed past, so nothing else leaves it)."""
        return max(self.added - self.waiting, 0)

    def age_ms(self, now_ms: int) -> float:
        """How long the oldest waiting entry has waited at ``now_ms``; 0 when none waits."""
        return float(max(now_ms - self.oldest_ms, 0)) if self.oldest_ms is not None else 0.0


def persisted_streams(keys: Keys, symbols: Sequence[str]) -> list[str]:
    """The trades and quotes streams of ``symbols``."""
    return [keys.stream(s, c) for s in symbols for c in PERSISTED]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_backlog(r: Any, streams: Sequence[str], *, ages: bool = True,
                 lag_scan_max: int = LAG_SCAN_MAX) -> list[Backlog]:
    """The backlog of each of ``streams`` that exists, in the given order.

    ``ages`` False skips the oldest waiting entry (``oldest_ms`` stays None)
    and, unless a lag must be counted, the second round trip. Redis errors
    of the round trips themselves (connection lost) are raised; a stream
    that does not exist is left out.
    """
    pipe = r.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
    replies = pipe.execute(raise_on_error=False)
    found: list[tuple[str, int, dict[str, Any] | None]] = []
    for stream, info, groups in zip(streams, replies[::2], replies[1::2], strict=True):
        if isinstance(info, Exception):
            continue  # no such stream (yet)
        group = None
        if not isinstance(groups, Exception):
            group = next((g for g in groups if _text(g["name"]) == PERSIST_GROUP), None)
        found.append((stream, int(info.get("entries-added") or info.get("length") or 0), group))

    # Second round trip: what only a read of the entries tells.
    pipe = r.pipeline(transaction=False)
    asked: list[tuple[bool, int]] = []  # per grouped stream: XPENDING asked, XRANGE count
    for stream, _, group in found:
        if group is None:
            continue
        pending = ages and int(group["pending"]) > 0
        if pending:
            pipe.xpending(stream, PERSIST_GROUP)
        lag = group.get("lag")
        count = lag_scan_max if lag is None else (1 if ages and int(lag) > 0 else 0)
        if count:
            pipe.xrange(stream, min="(" + _text(group["last-delivered-id"]), max="+",
                        count=count)
        asked.append((pending, count))
    answers = iter(pipe.execute(raise_on_error=False) if any(
        p or c for p, c in asked) else ())

    out: list[Backlog] = []
    questions = iter(asked)
    for stream, added, group in found:
        if group is None:
            out.append(Backlog(stream, added))
            continue
        pending, count = next(questions)
        oldest: int | None = None
        if pending:
            summary = next(answers)
            if not isinstance(summary, Exception) and summary.get("min"):
                oldest = parse_entry_id(summary["min"])[0]
        lag = group.get("lag")
        exact = True
        if count:
            rows = next(answers)
            rows = [] if isinstance(rows, Exception) else rows
            if lag is None:
                lag, exact = len(rows), len(rows) < count
            if ages and rows:
                ms = parse_entry_id(rows[0][0])[0]
                oldest = ms if oldest is None else min(oldest, ms)
        out.append(Backlog(stream, added, grouped=True, pending=int(group["pending"]),
                           lag=int(lag or 0), lag_exact=exact, oldest_ms=oldest))
    return out
