"""What the strategy client library hands out."""

from __future__ import annotations

from dataclasses import dataclass

from pricepipe.tick import Tick


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
