"""A persist worker's own Prometheus metrics (``pricepipe persist
--metrics-port P``, ``PRICEPIPE_WORKER_METRICS_PORT``; loopback unless
``PRICEPIPE_WORKER_METRICS_HOST``).

They are the worker's life counters (:class:`~pricepipe.workers.persister.Stats`,
the same numbers its heartbeat holds) read when scraped, and whether a full
Redis refuses one of its writes right now. What the group still has to do
(lag, oldest waiting entry, dead letters in Redis) is not here: it must
outlive the worker, so the HTTP API exports it
(:mod:`pricepipe.pipelinemetrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pricepipe.exceptions import ConfigError

if TYPE_CHECKING:
    from .persister import PersistWorker

#: Stats field -> (metric name without ``_total``, help). Every field is a count.
COUNTERS = {
    "batches": ("pricepipe_persist_batches", "Batches committed"),
    "entries": ("pricepipe_persist_entries", "Stream entries in committed batches"),
    "trades_inserted": ("pricepipe_persist_trades_inserted", "New trade rows"),
    "quotes_inserted": ("pricepipe_persist_quotes_inserted", "New quote rows"),
    "duplicates": ("pricepipe_persist_duplicates",
                   "Rows already in PostgreSQL (redeliveries), skipped"),
    "dead_letters": ("pricepipe_persist_dead_letters", "Entries set aside as dead letters"),
    "untimely": ("pricepipe_persist_untimely",
                 "Dead letters whose event time was too far from their entry's append time"),
    "dead_letters_deferred": ("pricepipe_persist_dead_letters_deferred",
                              "Rejected entries a full Redis would not take as dead letters "
                              "(left pending, counted each time)"),
    "redis_full_refusals": ("pricepipe_persist_redis_full_refusals",
                            "Writes a full Redis refused (heartbeats, dead letters, bars)"),
    "trimmed": ("pricepipe_persist_trimmed", "Entries trimmed from the streams"),
    "claimed": ("pricepipe_persist_claimed", "Entries claimed from idle consumers"),
    "retries": ("pricepipe_persist_retries", "Retries after Redis or PostgreSQL errors"),
    "bars_published": ("pricepipe_persist_bars_published", "Bar updates published"),
    "bars_final": ("pricepipe_persist_bars_final", "Bars published final"),
    "bar_errors": ("pricepipe_persist_bar_errors", "Bar publications given up"),
}


class WorkerCollector(Collector):
    """Reads a :class:`PersistWorker`'s counters when collected (no I/O)."""

    def __init__(self, worker: PersistWorker) -> None:
        self.worker = worker

    def collect(self) -> Iterable[Metric]:
        stats: dict[str, Any] = self.worker.stats.as_dict()
        for field, (name, help_text) in COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=int(stats.get(field, 0)))
        refusing = GaugeMetricFamily(
            "pricepipe_persist_redis_refusing",
            "1 while a full Redis refuses this kind of write (an episode)", labels=["write"])
        for write, episode in sorted(self.worker.refusal_episodes().items()):
            refusing.add_metric([write], 1 if episode.active else 0)
        yield refusing
        yield GaugeMetricFamily("pricepipe_persist_started_timestamp_seconds",
                                "When the worker started", value=stats["started_ms"] / 1000)


def serve_metrics(worker: PersistWorker, *, host: str, port: int) -> Any:
    """Serve ``/metrics`` from a daemon thread; returns the HTTP server
    (``shutdown()`` stops it). Raises :exc:`ConfigError` when the address
    cannot be bound: a worker asked for metrics must not run without them
    unnoticed."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(WorkerCollector(worker))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return server
