"""Running the API: uvicorn, programmatically, with pricepipe's process
contract.

* ``READY=1`` to systemd once uvicorn listens, ``WATCHDOG=1`` every few
  seconds from uvicorn's own main loop (so a stuck event loop stops the
  pings and systemd restarts the service).
* The first SIGTERM (or SIGINT) stops accepting connections, lets
  in-flight requests finish (up to ``graceful_timeout_s``) and exits 0; a
  second exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from pricepipe import notify

log = logging.getLogger(__name__)

#: uvicorn's main loop ticks every 0.1 s; ping the watchdog every 5 s.
_WATCHDOG_TICKS = 50

#: Exit code of a forced stop (second signal).
FORCED_EXIT_CODE = 1


class Server(uvicorn.Server):
    """uvicorn's server with readiness, watchdog and two-stage stop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.signals_seen = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version re-raises the signal once stopped, so the
        # process would die of SIGTERM instead of exiting 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self._on_signal)
                     for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals_seen += 1
        if self.signals_seen == 1:
            log.info("signal %d: finishing in-flight requests, then exiting", sig)
            notify.stopping()
            self.should_exit = True
        else:
            log.warning("second signal %d: exiting at once", sig)
            os._exit(FORCED_EXIT_CODE)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            notify.ready(f"serving on {self.config.host}:{self.config.port}")
            notify.watchdog()

    async def on_tick(self, counter: int) -> bool:
        if counter % _WATCHDOG_TICKS == 0:
            notify.watchdog()
        return await super().on_tick(counter)


def serve(app: Any, *, host: str, port: int, graceful_timeout_s: float = 20.0) -> int:
    """Serve ``app`` until stopped; returns the exit code (0 after a graceful stop)."""
    config = uvicorn.Config(
        app, host=host, port=port,
        # The app resolves X-Forwarded-For itself, from its trusted proxies.
        proxy_headers=False, server_header=False, ws="none",
        log_config=None, access_log=False,
        timeout_graceful_shutdown=int(graceful_timeout_s),
    )
    server = Server(config)
    server.run()
    if not server.started:
        log.error("the API did not start (port %d taken?)", port)
        return 1
    return 0
