"""Fixtures of the workers tests: an in-process burst worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import TickSink

from pricepipe.keys import Keys

from .helpers import fast_settings


@pytest.fixture
def run_worker(redis_url: str, database_url: str, r: Any, keys: Keys
               ) -> Callable[..., PersistWorker]:
    """Run an in-process burst worker to completion; returns it (for its stats)."""

    def run(name: str = "w1", **overrides: Any) -> PersistWorker:
        worker = PersistWorker(r, TickSink(database_url), GroupConsumer(r, keys, name),
                               fast_settings(**overrides), burst=True)
        assert worker.run(install_signals=False) == 0
        return worker

    return run


