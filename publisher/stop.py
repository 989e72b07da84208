"""The stop request: how a publisher learns it should stop.

The first SIGTERM or SIGINT sets :attr:`StopRequest.event`: the loop finishes
its current batch and returns (exit code 0). A second one exits at once with
``os._exit`` (no cleanup, like rq's forced stop), for a stop that hangs.
Loops sleep with ``event.wait(timeout)`` so a signal wakes them at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from pricepipe import notify

log = logging.getLogger(__name__)


class StopRequest:
    """A stop flag that signal handlers (or tests) set."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True if a stop was requested."""
        return self.event.wait(max(timeout_s, 0.0))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: finishing the current batch, then stopping",
                 signal.Signals(signum).name)
        notify.stopping()
        self.event.set()

    def install(self) -> StopRequest:
        """Handle SIGTERM and SIGINT (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
