"""What the strategy client library hands out, and the bookkeeping of where
each reader stands in its streams. Pure: no I/O (sans-I/O, as websockets
does it); :mod:`subscriber.client` runs the Redis commands these describe.

* :class:`Delivery` - one tick with its stream entry ID.
* :class:`LatestCursor` - plain ``XREAD`` from explicit per-stream IDs.
* :class:`GroupCursor` - ``XREADGROUP``: first this consumer's own pending
  entries (a crash left them unacknowledged), then new ones (``>``).
* :class:`Pacer` - when a replayed tick is due at N times real speed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pricepipe import codec
from pricepipe.keys import Keys
from pricepipe.tick import Tick

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One tick as read from a stream (or replayed from the database).

    ``redelivered`` is True when a consumer-group entry is handed out again
    because it was never acknowledged (for example after a crash): the
    strategy may have acted on it before, so its effects should be
    idempotent by ``entry_id``.
    """

    entry_id: str
    tick: Tick
    redelivered: bool = False

    @property
    def symbol(self) -> str:
        return self.tick.symbol


def _decode(stream_key: bytes | str, raw_id: bytes | str, fields: Mapping[bytes, bytes] | None,
            *, redelivered: bool) -> Delivery | None:
    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    if fields is None:
        return None  # a pending entry whose payload was trimmed away
    try:
        return Delivery(entry_id, codec.decode_fields(fields), redelivered)
    except ValueError as exc:
        # Skipped here; the entry stays in the stream for the persist workers,
        # which dead-letter it.
        log.warning("skipping bad entry %s of %r: %s", entry_id, stream_key, exc)
        return None


class LatestCursor:
    """Where a plain reader stands in each stream of one shard.

    ``start`` per symbol: ``"$"`` (only ticks appended from now on; resolved
    to the stream's last ID by the caller before the first read), ``"0"``
    (everything the stream holds) or an entry ID (resume after it).
    """

    def __init__(self, keys: Keys, starts: Mapping[str, str]) -> None:
        self._keys = keys
        self.ids: dict[str, str] = {keys.stream(s): start for s, start in starts.items()}

    def streams(self) -> dict[str, str]:
        return dict(self.ids)

    def take(self, reply: Iterable[Any] | None) -> list[Delivery]:
        """Deliveries of an ``XREAD`` reply, advancing the cursors past them."""
        out: list[Delivery] = []
        for stream_key, entries in reply or ():
            name = stream_key.decode() if isinstance(stream_key, bytes) else stream_key
            for raw_id, fields in entries:
                delivery = _decode(name, raw_id, fields, redelivered=False)
                if delivery is not None:
                    out.append(delivery)
            if entries:
                last = entries[-1][0]
                self.ids[name] = last.decode() if isinstance(last, bytes) else last
        return out


class GroupCursor:
    """Where a consumer-group reader stands in each stream of one shard.

    Starts by re-reading this consumer's pending entries list (``XREADGROUP``
    from ID ``0``): entries delivered before a crash but never acknowledged
    come back first, marked ``redelivered``. Once a stream's pending list is
    exhausted it reads new entries (``>``).
    """

    def __init__(self, keys: Keys, symbols: Iterable[str]) -> None:
        self._pending: dict[str, str] = {keys.stream(s): "0" for s in symbols}
        self._streams = list(self._pending)
        #: ``(stream, entry_id)`` to acknowledge without delivering: pending
        #: entries that were trimmed away or cannot be decoded.
        self.discard: list[tuple[str, str]] = []
        #: time.monotonic() of the last look for other consumers' idle entries.
        self.claimed_at = 0.0

    @property
    def recovering(self) -> bool:
        return bool(self._pending)

    def streams(self) -> dict[str, str]:
        if self._pending:
            return dict(self._pending)
        return dict.fromkeys(self._streams, ">")

    def restart(self) -> None:
        """Read the pending list again (after the group had to be recreated)."""
        self._pending = dict.fromkeys(self._streams, "0")

    def take(self, reply: Iterable[Any] | None) -> list[Delivery]:
        recovering = bool(self._pending)
        out: list[Delivery] = []
        seen: set[str] = set()
        for stream_key, entries in reply or ():
            name = stream_key.decode() if isinstance(stream_key, bytes) else stream_key
            seen.add(name)
            for raw_id, fields in entries:
                delivery = _decode(name, raw_id, fields, redelivered=recovering)
                if delivery is None:
                    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                    self.discard.append((name, entry_id))
                else:
                    out.append(delivery)
            if recovering and name in self._pending:
                if entries:
                    last = entries[-1][0]
                    self._pending[name] = last.decode() if isinstance(last, bytes) else last
                else:
                    del self._pending[name]  # this stream's pending list is exhausted
        if recovering:
            # Streams absent from the reply have no pending entries left.
            for name in [n for n in self._pending if n not in seen]:
                del self._pending[name]
        return out


class Pacer:
    """Replay timing: tick event times mapped onto the wall clock at ``speed``×.

    ``speed`` None (or 0) means as fast as possible. Pure: give it times,
    it answers how long to wait.
    """

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed < 0:
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.speed = speed or None
        self._origin: tuple[int, float] | None = None

    def delay_s(self, ts_us: int, now_s: float) -> float:
        """Seconds to wait, at wall time ``now_s``, before releasing a tick of ``ts_us``."""
        if self.speed is None:
            return 0.0
        if self._origin is None:
            self._origin = (ts_us, now_s)
            return 0.0
        first_ts, first_wall = self._origin
        due = first_wall + (ts_us - first_ts) / 1_000_000 / self.speed
        return max(due - now_s, 0.0)
