"""Fixtures of the workers tests: an in-process burst worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pricepipe.keys import Keys
from pricepipe.workers.barfeed import BarFeed, FinalPass
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import EventSink

from .helpers import fast_settings


@pytest.fixture
def run_worker(redis_url: str, database_url: str, r: Any, keys: Keys
               ) -> Callable[..., PersistWorker]:
    """Run an in-process burst worker to completion; returns it (for its stats).

    ``feed`` replaces its bar feed (a test clock); ``final_pass=True`` gives it
    a final pass on that feed (by default it publishes only what it commits)."""

    def run(name: str = "w1", *, feed: BarFeed | None = None, final_pass: bool = False,
            **overrides: Any) -> PersistWorker:
        settings = fast_settings(**overrides)
        feed = feed or BarFeed(r, keys, grace_ms=settings.bars_final_grace_ms,
                               horizon_s=settings.bars_horizon_s)
        worker = PersistWorker(r, EventSink(database_url), GroupConsumer(r, keys, name),
                               settings, burst=True, feed=feed,
                               final_pass=FinalPass(feed, database_url) if final_pass else None)
        assert worker.run(install_signals=False) == 0
        return worker

    return run
