"""The registered symbols, as the websocket server knows them: a cached copy
of the registry sets (``keys.symbols(shard)``, what
:func:`pricepipe.streams.register_symbols` fills and
:func:`pricepipe.streams.known_symbols` reads), so that a subscribe to
symbols nobody publishes is refused without any work for Redis.

The registry only grows (publishers register a symbol before its first
event), so a symbol once seen stays known. A symbol not in the copy makes it
reload, at most once per ``refresh_s`` however many requests ask: made-up
symbols cost one read of the sets per interval per process, not one per
request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from pricepipe.keys import Keys

log = logging.getLogger(__name__)


class SymbolRegistry:
    """Which symbols are registered; :meth:`unknown` is the check."""

    def __init__(self, r: Any, keys: Keys, *, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._r = r
        self._keys = keys
        self._refresh_s = refresh_s
        self._clock = clock
        self._known: set[str] | None = None
        #: clock() of the last read (or attempt).
        self._loaded_at = float("-inf")
        self._loading: asyncio.Task[None] | None = None
        #: Reads of the registry sets (one pipelined round trip each).
        self.refreshes = 0

    @property
    def size(self) -> int:
        return len(self._known or ())

    async def unknown(self, symbols: Iterable[str]) -> list[str]:
        """The symbols of ``symbols`` that are not registered, in order.

        Reads Redis only when one of them is not known yet and the copy is
        older than ``refresh_s``. Raises a connection error only when the
        registry was never read (a stale copy is used otherwise).
        """
        missing = [s for s in symbols if self._known is None or s not in self._known]
        if not missing:
            return []
        if self._known is None or self._clock() - self._loaded_at >= self._refresh_s:
            await self._reload()
        known = self._known or set()
        return [s for s in missing if s not in known]

    async def _reload(self) -> None:
        # One read for every request that misses meanwhile (shielded: one
        # request giving up must not cancel the others' wait).
        if self._loading is None:
            self._loading = asyncio.create_task(self._read())
        task = self._loading
        try:
            await asyncio.shield(task)
        except Exception:
            if self._known is None:
                raise
            log.warning("cannot read the symbol registry; using the copy of %d symbols",
                        len(self._known), exc_info=True)

    async def _read(self) -> None:
        try:
            pipe = self._r.pipeline(transaction=False)
            for shard in self._keys.all_shards():
                pipe.smembers(self._keys.symbols(shard))
            replies = await pipe.execute()
            known: set[str] = set()
            for members in replies:
                known.update(m.decode() if isinstance(m, bytes) else str(m) for m in members)
            self.refreshes += 1
            # Kept: a symbol once registered stays valid (the registry only grows;
            # after a FLUSHALL its publisher registers it again).
            self._known = known | (self._known or set())
        finally:
            # A failed read counts too: while Redis is away, the copy is used
            # and the read tried again an interval later, not per request.
            self._loaded_at = self._clock()
            self._loading = None
