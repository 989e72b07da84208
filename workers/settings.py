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
    # 10,000 rather than 5,000: each commit waits for a WAL flush, and at
    # 10,000 bench persist measured ~115k rows/s instead of ~105k (20,000:
    # ~118k, for twice the redelivery after a crash; measured with the ticks
    # of issue 12, before trades and quotes).
    batch_size: int = setting(10_000, "Most stream entries written to PostgreSQL per transaction")
    linger_ms: int = setting(
        20, "After a round that found less than a batch, wait this long before the next "
        "(fewer, larger transactions at moderate rates), ms; 0: never wait")
    pipeline: bool = setting(
        True, "Commit a batch in a background thread while the next one is read and decoded")
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
    stream_max_age_s: int | None = setting(
        86_400, "Hard cap of what a stopped strategy consumer group keeps in Redis: entries it "
        "has not acknowledged are trimmed once older than this (it is told the range it "
        "lost), seconds; unset: no cap. The persist group is never capped")
    trim_interval_s: float = setting(10.0, "How often streams are trimmed, seconds")
    heartbeat_ttl_s: int = setting(30, "TTL of the worker's heartbeat key, seconds")
    partition_lock_timeout_ms: int = setting(
        200, "Longest wait for the lock that creating a day's partition takes on its table "
        "(it would queue every read and write behind it); then the batch is retried with "
        "backoff, ms")
    consumer_expiry_s: int = setting(
        86_400, "Consumers idle this long with nothing pending are removed from the group, "
        "seconds")
    # Observability
    metrics_port: int | None = setting(
        None, "Serve the worker's Prometheus metrics on this port (one per worker); unset: none")
    metrics_host: str = setting("127.0.0.1", "Address the worker's metrics endpoint listens on")
    # The bars stream
    bars_final_grace_ms: int = setting(
        2000, "A minute's bar is published final this long after the minute ended "
        "(trades still travelling are then late: they revise it), ms")
    bars_final_interval_s: float = setting(
        1.0, "How often a worker looks for ended minutes to publish final, seconds")
    bars_horizon_s: int = setting(
        3600, "Minutes older than this are final for good: the bars stream's ordering state "
        "forgets them, and a late trade of one is published as a revision, seconds")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("PRICEPIPE_WORKER_BATCH_SIZE must be at least 1")
        if self.max_deliveries < 1:
            raise ConfigError("PRICEPIPE_WORKER_MAX_DELIVERIES must be at least 1")
        if self.block_ms < 1:
            raise ConfigError("PRICEPIPE_WORKER_BLOCK_MS must be at least 1")
        if self.stream_max_age_s is not None and self.stream_max_age_s < 0:
            raise ConfigError("PRICEPIPE_WORKER_STREAM_MAX_AGE_S must be 0 or more (or unset)")
        if self.partition_lock_timeout_ms < 1:
            raise ConfigError("PRICEPIPE_WORKER_PARTITION_LOCK_TIMEOUT_MS must be at least 1")
        if self.bars_horizon_s < 60:
            raise ConfigError("PRICEPIPE_WORKER_BARS_HORIZON_S must be at least 60")


@dataclass(frozen=True, kw_only=True, repr=False)
class JobsSettings(Settings):
    """The rq jobs around persistence: partitions, retention, bars, retries."""

    env_prefix: ClassVar[str] = "PRICEPIPE_JOBS_"

    # Partitions and retention
    partitions_ahead_days: int = setting(
        7, "Daily trade and quote partitions created ahead of today")
    retention_days: int | None = setting(
        30, "Trade partitions older than this many days are dropped (unset: keep forever)")
    quotes_retention_days: int | None = setting(
        30, "Quote partitions older than this many days are dropped (unset: keep forever); "
        "quotes outnumber trades, so this is often the shorter")
    # Bars
    bars_verify_minutes: int = setting(
        60, "The scheduled bar check recomputes this many recent minutes from the trades")
    # Retries and limits
    retry_max: int = setting(3, "A failed job is retried this many times (rq Retry)")
    retry_intervals_s: tuple[int, ...] = setting(
        (30, 120, 600), "Waits before the retries of a failed job, seconds (comma-separated)")
    job_timeout_s: int = setting(3600, "A job running longer than this is stopped and failed")

    def __post_init__(self) -> None:
        if self.retention_days is not None and self.retention_days < 1:
            raise ConfigError("PRICEPIPE_JOBS_RETENTION_DAYS must be at least 1 (or unset)")
        if self.quotes_retention_days is not None and self.quotes_retention_days < 1:
            raise ConfigError("PRICEPIPE_JOBS_QUOTES_RETENTION_DAYS must be at least 1 (or unset)")
        if self.retry_max < 0:
            raise ConfigError("PRICEPIPE_JOBS_RETRY_MAX must be 0 or more")


SETTINGS = (WorkerSettings, JobsSettings)
