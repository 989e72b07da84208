"""Settings of the persist workers (``PRICEPIPE_WORKER_*``) and of the rq jobs
(``PRICEPIPE_JOBS_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pricepipe.config import Settings, setting
from pricepipe.exceptions import ConfigError


@dataclass(frozen=True, kw_only=True, repr=False)
class WorkerSettings(Settings):
    """How a persist worker reads, writes, retries and trims."""

    env_prefix: ClassVar[str] = "PRICEPIPE_WORKER_"

    # Batching
    batch_size: int = setting(5000, "Most stream entries written to PostgreSQL per transaction")
    block_ms: int = setting(
        500, "How long an idle worker blocks in XREADGROUP, ms (also bounds how long a stop waits)"
    )
    # Recovery
    claim_idle_ms: int = setting(
        30_000, "Pending entries of another consumer idle this long are claimed (XAUTOCLAIM), ms"
    )
    claim_interval_s: float = setting(5.0, "How often to look for idle pending entries, seconds")
    max_deliveries: int = setting(
        5, "An entry delivered this many times without being persisted goes to the dead letters"
    )
    # Retries (PostgreSQL or Redis unreachable)
    retry_base_s: float = setting(0.1, "First retry delay after a connection error, seconds")
    retry_cap_s: float = setting(5.0, "Longest retry delay (capped exponential, jittered), seconds")
    # Housekeeping
    refresh_interval_s: float = setting(
        5.0, "How often the symbol registry is re-read to find new streams, seconds"
    )
    stream_window_s: int = setting(
        3600, "Acknowledged entries newer than this stay in Redis (live readers), seconds"
    )
    trim_interval_s: float = setting(10.0, "How often streams are trimmed, seconds")
    heartbeat_ttl_s: int = setting(30, "TTL of the worker's heartbeat key, seconds")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("PRICEPIPE_WORKER_BATCH_SIZE must be at least 1")
        if self.max_deliveries < 1:
            raise ConfigError("PRICEPIPE_WORKER_MAX_DELIVERIES must be at least 1")
        if self.block_ms < 1:
            raise ConfigError("PRICEPIPE_WORKER_BLOCK_MS must be at least 1")


SETTINGS = (WorkerSettings,)
