"""Settings of the strategy client library (``PRICEPIPE_CLIENT_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pricepipe.config import Settings, setting


@dataclass(frozen=True, kw_only=True, repr=False)
class ClientSettings(Settings):
    """The strategy client library (:mod:`pricepipe.subscriber.client`)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_CLIENT_"

    block_ms: int = setting(1000, "XREAD/XREADGROUP block time, ms")
    count: int = setting(500, "Most entries fetched per stream per read")
    reconnect_base_s: float = setting(0.05, "First reconnect delay after a Redis error, seconds")
    reconnect_cap_s: float = setting(5.0, "Longest reconnect delay (exponential, jittered), s")
    fill_wait_s: float = setting(
        30.0, "fill_gaps: how long the fill of an epoch gap waits for the persist workers"
              " to store what Redis holds of it, s")
    claim_idle_ms: int | None = setting(
        None, "Group mode: also claim other consumers' entries pending longer than this, ms"
    )


SETTINGS = (ClientSettings,)
