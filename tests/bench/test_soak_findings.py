"""Regressions for bugs the soak found."""

from __future__ import annotations

from typing import Any

import redis

from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.streams import persisted_floor, register_symbols, trim_stream


class _StaleGroups:
    """A client whose XINFO GROUPS answer is from before another worker acked."""

    def __init__(self, r: redis.Redis, stale: Any) -> None:
        self._r = r
        self._stale = stale

    def xinfo_groups(self, stream: str) -> Any:
        return self._stale

    def __getattr__(self, name: str) -> Any:
        return getattr(self._r, name)


def test_floor_survives_pending_acknowledged_between_calls(r: redis.Redis, keys: Keys) -> None:
    # Found by the soak: with two workers, XINFO GROUPS said 1 pending, the
    # other worker acknowledged it, XPENDING then had no "min", and the
    # floor came back as the text "None": trimming crashed the worker.
    register_symbols(r, keys, ["AAA"])
    stream = keys.trades("AAA")
    client: Any = r  # redis-py's sync/async union return types
    first = client.xadd(stream, {b"t": b"1"}).decode()
    client.xreadgroup(PERSIST_GROUP, "w1", {stream: ">"})
    stale = client.xinfo_groups(stream)
    assert stale[0]["pending"] == 1
    client.xack(stream, PERSIST_GROUP, first)
    stale_client = _StaleGroups(r, stale)
    floor = persisted_floor(stale_client, stream)
    assert floor == f"{first.split('-')[0]}-{int(first.split('-')[1]) + 1}"
    assert trim_stream(stale_client, keys, stream, window_ms=0, max_age_ms=None,
                       persisted=True) >= 0
