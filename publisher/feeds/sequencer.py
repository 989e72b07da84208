"""Gap detection and repair, per symbol: the state machine that makes every
trade go out exactly once, in trade-id order. Pure code, no I/O.

Venues number each instrument's trades one by one (Binance: aggregate
trade ids; Coinbase: trade ids). :class:`TradeSequencer` holds the highest
id accounted for (``last_id``: published, or declared lost) and decides,
for each trade that arrives:

* ``id <= last_id``, or already waiting: a duplicate (a repeated message,
  or a repair overlapping the live stream), dropped and counted;
* ``id == last_id + 1``: published at once;
* ``id > last_id + 1``: a gap. The trade waits; the ids between are to be
  fetched over REST (:class:`Gap`, the repair the caller must start). Live
  trades keep arriving and wait behind the gap, so output stays in id order.

A reconnect (:meth:`TradeSequencer.reconnected`) starts an open-ended
repair: every trade after ``last_id`` may have been missed while the
connection was down, even if no live trade shows a jump yet. A heartbeat
that names a last trade id above ``last_id`` twice in a row (Coinbase) is a
gap too: the trade was lost on the wire and no later trade came to show it.

When a repair ends (:meth:`TradeSequencer.repaired`), its trades and the
waiting live ones are merged by id and published in order; each id of the
gap the repair did not bring is declared lost (:class:`Lost`), with the
reason: ``not_served`` (the venue answered for that range without it),
``budget`` or ``error`` (the repair stopped before reaching it), or
``overflow`` (too many live trades waited: the gap was given up). Nothing is
hidden: every id is either published or reported lost.

Every call returns a :class:`Step`: what to do, in order (publish a trade,
report a gap detected, filled or lost) and which repair to start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Gap:
    """Trade ids ``first_id`` up to ``until_id`` (exclusive) are missing;
    ``until_id`` None: every id from ``first_id`` may be missing (after a
    reconnect). ``token`` tells one repair from another."""

    first_id: int
    until_id: int | None
    token: int = 0

    @property
    def last_id(self) -> int | None:
        """The last missing id (inclusive), or None when open-ended."""
        return None if self.until_id is None else self.until_id - 1


@dataclass(frozen=True, slots=True)
class Publish(Generic[T]):
    trade_id: int
    item: T


@dataclass(frozen=True, slots=True)
class Detected:
    """A gap was found (``last_id`` None: open-ended, after a reconnect)."""

    first_id: int
    last_id: int | None


@dataclass(frozen=True, slots=True)
class Filled:
    """A repair of ``first_id`` .. ``last_id`` ended; ``trades`` were recovered."""

    first_id: int
    last_id: int
    trades: int


@dataclass(frozen=True, slots=True)
class Lost:
    """Trade ids ``first_id`` .. ``last_id`` (inclusive) are lost for good."""

    first_id: int
    last_id: int
    reason: str

    @property
    def count(self) -> int:
        return self.last_id - self.first_id + 1


Action = Publish[T] | Detected | Filled | Lost


@dataclass(slots=True)
class Step(Generic[T]):
    """What a call decided: ``actions`` in order, ``duplicates`` dropped, and
    the repair to start (at most one runs per symbol)."""

    actions: list[Action[T]] = field(default_factory=list)
    duplicates: int = 0
    repair: Gap | None = None

    @property
    def published(self) -> list[T]:
        return [a.item for a in self.actions if isinstance(a, Publish)]


@dataclass(frozen=True, slots=True)
class RepairResult(Generic[T]):
    """What a repair of ``gap`` fetched: ``trades`` as ``(id, item)``, any
    order, possibly beyond the gap. ``[covered_lo, covered_hi)`` is the id
    range it answered for completely (every id there the venue has is in
    ``trades``); ``reason`` says why coverage stops short of the gap
    (``budget``, ``error``), None when it does not."""

    gap: Gap
    trades: Sequence[tuple[int, T]]
    covered_lo: int
    covered_hi: int
    reason: str | None = None


class TradeSequencer(Generic[T]):
    """One symbol's trade ids; see the module docstring. ``last_id`` None:
    nothing is known yet (the first trade or heartbeat sets it). At most
    ``max_waiting`` live trades wait behind a gap; beyond, the gap is given
    up (reason ``overflow``)."""

    def __init__(self, last_id: int | None = None, *, max_waiting: int = 100_000) -> None:
        self.last_id = last_id
        self.max_waiting = max_waiting
        #: live trades waiting behind a gap, by id
        self.waiting: dict[int, T] = {}
        #: the repair in progress
        self.repairing: Gap | None = None
        self._tokens = 0
        self._resync = False
        self._suspect: int | None = None

    # --- inputs ---------------------------------------------------------------------------

    def live(self, trade_id: int, item: T) -> Step[T]:
        """A trade from the live stream."""
        step: Step[T] = Step()
        if self.last_id is None:
            self.last_id = trade_id
            step.actions.append(Publish(trade_id, item))
            return step
        if trade_id <= self.last_id or trade_id in self.waiting:
            step.duplicates += 1
            return step
        self._suspect = None
        if trade_id == self.last_id + 1 and not self.waiting:
            self.last_id = trade_id
            step.actions.append(Publish(trade_id, item))
            return step
        self.waiting[trade_id] = item
        self._drain(step)
        if self.waiting:
            if self.repairing is None:
                self._start(step, self.last_id + 1, min(self.waiting), detected=True)
            elif len(self.waiting) > self.max_waiting:
                self._give_up(step)
        return step

    def reconnected(self) -> Step[T]:
        """The connection was (re)opened: catch up on what it may have missed."""
        step: Step[T] = Step()
        if self.last_id is None:
            return step
        if self.repairing is not None:
            self._resync = True  # after the repair in progress
            return step
        self._start(step, self.last_id + 1, None, detected=False)
        return step

    def heartbeat(self, last_trade_id: int) -> Step[T]:
        """The venue says its last trade is ``last_trade_id``."""
        step: Step[T] = Step()
        if self.last_id is None:
            # Trades up to here happened before this feed looked: not ours to repair.
            self.last_id = last_trade_id
            return step
        if last_trade_id <= self.last_id:
            self._suspect = None
            return step
        if self.repairing is not None or self.waiting:
            return step
        # The match may still be on its way (another channel): a gap only if
        # the next heartbeat still says so.
        if self._suspect is not None and last_trade_id >= self._suspect:
            self._suspect = None
            self._start(step, self.last_id + 1, last_trade_id + 1, detected=True)
        else:
            self._suspect = last_trade_id
        return step

    def repaired(self, result: RepairResult[T]) -> Step[T]:
        """A repair ended. A result of a repair given up (or superseded) is ignored."""
        step: Step[T] = Step()
        if result.gap != self.repairing:
            return step
        assert self.last_id is not None
        self.repairing = None
        gap = result.gap
        end = gap.until_id if gap.until_id is not None else max(result.covered_hi, gap.first_id)
        merged = dict(self.waiting)
        recovered: set[int] = set()  # ids only the repair brought
        for trade_id, item in result.trades:
            if trade_id <= self.last_id or trade_id in merged:
                step.duplicates += 1
            else:
                merged[trade_id] = item
                recovered.add(trade_id)
        walk: list[Action[T]] = []
        filled = 0
        lost = 0
        h = self.last_id + 1
        while True:
            if h in merged:
                walk.append(Publish(h, merged.pop(h)))
                if gap.first_id <= h < end and h in recovered:
                    filled += 1
                h += 1
                continue
            if h < end:
                later = [k for k in merged if k > h]
                hole_end = min(min(later), end) if later else end
                for part in self._lost_parts(h, hole_end, result):
                    walk.append(part)
                    lost += part.count
                h = hole_end
                continue
            break
        self.last_id = h - 1
        self.waiting = merged
        if gap.until_id is None and (filled or lost):
            # An open-ended catch-up found trades missing: say which.
            step.actions.append(Detected(gap.first_id, end - 1))
        step.actions.extend(walk)
        # Every gap detected is closed: repaired (maybe by late live trades
        # alone: 0 recovered) or lost, or both.
        if filled or (gap.until_id is not None and not lost):
            step.actions.append(Filled(gap.first_id, end - 1, filled))
        if self.waiting:
            self._start(step, self.last_id + 1, min(self.waiting), detected=True)
        elif self._resync:
            self._resync = False
            self._start(step, self.last_id + 1, None, detected=False)
        return step

    # --- internals ------------------------------------------------------------------------

    def _drain(self, step: Step[T]) -> None:
        assert self.last_id is not None
        while self.last_id + 1 in self.waiting:
            self.last_id += 1
            step.actions.append(Publish(self.last_id, self.waiting.pop(self.last_id)))

    def _start(self, step: Step[T], first_id: int, until_id: int | None, *,
               detected: bool) -> None:
        self._tokens += 1
        gap = Gap(first_id, until_id, self._tokens)
        self.repairing = gap
        step.repair = gap
        if detected:
            step.actions.append(Detected(first_id, gap.last_id))

    def _give_up(self, step: Step[T]) -> None:
        """Too many trades wait behind the gap: declare it lost and go on."""
        assert self.last_id is not None
        first = min(self.waiting)
        step.actions.append(Lost(self.last_id + 1, first - 1, "overflow"))
        self.last_id = first - 1
        self.repairing = None
        self._drain(step)
        if self.waiting:
            self._start(step, self.last_id + 1, min(self.waiting), detected=True)

    @staticmethod
    def _lost_parts(lo: int, hi: int, result: RepairResult[T]) -> list[Lost]:
        """``[lo, hi)`` lost: ``not_served`` where the repair covered it, else its reason."""
        parts: list[Lost] = []
        c_lo, c_hi = result.covered_lo, result.covered_hi
        outside = result.reason or "not_served"
        if lo < min(hi, c_lo):
            parts.append(Lost(lo, min(hi, c_lo) - 1, outside))
        inside_lo, inside_hi = max(lo, c_lo), min(hi, c_hi)
        if inside_lo < inside_hi:
            parts.append(Lost(inside_lo, inside_hi - 1, "not_served"))
        if max(lo, c_hi) < hi:
            parts.append(Lost(max(lo, c_hi), hi - 1, outside))
        return parts
