"""Episodes of writes Redis refuses because it is full. Pure: no I/O.

With ``maxmemory`` and the ``noeviction`` policy (what deploy/install.sh
configures), a full Redis refuses every command that may grow memory
(``OOM command not allowed ...``; redis-py raises ``OutOfMemoryError``) and
still serves reads, ``XACK``, ``XREADGROUP``, ``XAUTOCLAIM`` and ``XTRIM``.
The persist worker keeps running through such a stretch; each kind of
write it gives up (the heartbeat, bar messages, dead letters) is an
:class:`Episode`: logged once when the refusals start and once when the
write gets through again, counted every time, so a long stretch neither
floods the log nor goes unnoticed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field


@dataclass
class Episode:
    """One kind of write, and whether Redis is refusing it at the moment.

    Not thread-safe on its own: counts may be off by one when two threads
    report at once (they are for logs and heartbeats only).
    """

    #: What is refused, for the log ("the heartbeat", "bar messages").
    what: str
    #: What happens meanwhile, for the log ("skipped", "left pending").
    meanwhile: str
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger(__name__))
    #: Refusals in all, over every episode.
    refusals: int = 0
    #: Refusals in the current episode (0: not refused at the moment).
    current: int = 0

    @property
    def active(self) -> bool:
        return self.current > 0

    def refused(self, exc: BaseException) -> bool:
        """Count a refusal; log it if it starts an episode. Returns True then."""
        self.refusals += 1
        self.current += 1
        if self.current == 1:
            self.logger.warning("redis refuses %s (out of memory: %s); %s until it accepts "
                                "again", self.what, str(exc).strip() or type(exc).__name__,
                                self.meanwhile)
            return True
        return False

    def accepted(self) -> bool:
        """The write got through: log the end of an episode. Returns True then."""
        if not self.current:
            return False
        self.logger.warning("redis accepts %s again, after %d refusal(s)", self.what,
                            self.current)
        self.current = 0
        return True
