"""Graceful stop for the synchronous roles (publisher, persist worker).

The first SIGTERM or SIGINT requests a stop: the loop finishes its current
batch and returns, and the process exits 0. A second one exits at once with
``os._exit(128 + signum)`` (no cleanup, like rq's forced stop), for a stop
that hangs; whatever the batch in hand held stays pending in Redis.

The signal handler only sets a flag. It must not take a lock: Python runs
handlers in the main thread between bytecodes, possibly while that very
thread holds the lock of a ``threading.Event`` (inside ``Event.wait``), and
``Event.set`` would then deadlock. Waits therefore watch the flag in short
slices (:data:`WAKE_S`) instead of relying on the signal to set an event.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from . import notify

log = logging.getLogger(__name__)

#: Longest a :meth:`StopRequest.wait` sleeps before looking at the flag again.
WAKE_S = 0.05


class StopRequest:
    """A stop flag that signal handlers, other threads or tests set."""

    def __init__(self) -> None:
        self._requested = False
        self._event = threading.Event()  # wakes waiters at once when set from a thread
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self._requested

    def set(self) -> None:
        """Request a stop (from a thread or a test; not from a signal handler)."""
        self._requested = True
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, waking within :data:`WAKE_S` of a stop
        request; True if a stop was requested."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while not self._requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._event.wait(min(left, WAKE_S))
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._requested:
            log.warning("second %s: exiting now (the batch in hand stays pending)", name)
            os._exit(128 + signum)
        log.info("%s: finishing the current batch, then stopping (signal again to exit now)",
                 name)
        notify.stopping()
        self._requested = True  # a flag only: see the module docstring

    def install(self) -> StopRequest:
        """Handle SIGTERM and SIGINT (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
