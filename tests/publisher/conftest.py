"""Local fixtures of the publisher tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_upstream import FakeUpstream
from .fake_venue import FakeVenue


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake upstream API on a free port (see :mod:`fake_upstream`)."""
    server = FakeUpstream(slow_s=0.4, timeout_s=0.8).start()
    yield server
    server.close()


@pytest.fixture(params=["binance", "coinbase"])
def venue(request: pytest.FixtureRequest, fake: FakeUpstream) -> Iterator[FakeVenue]:
    """A fake venue's websocket feed (each venue in turn), its REST side ``fake``."""
    server = FakeVenue(request.param, fake).start()
    yield server
    server.close()
