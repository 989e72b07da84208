"""The publisher's counters (prometheus-client), one registry per publisher
so that tests and several publishers in one process do not mix counts.

``pricepipe publish --metrics-port P`` serves them in the Prometheus text
format, on 127.0.0.1 unless ``PRICEPIPE_PUBLISHER_METRICS_HOST`` says
otherwise; the periodic log line reports the main ones.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class PublisherMetrics:
    """Counters of one publisher process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.published = Counter("pricepipe_publisher_events_published",
                                 "Events appended to streams, by channel (trades, quotes)",
                                 ["channel"], registry=r)
        self.dropped = Counter("pricepipe_publisher_events_dropped",
                               "Events not published, by reason", ["reason"], registry=r)
        self.redis_errors = Counter("pricepipe_publisher_redis_errors",
                                    "Redis connection errors while appending", registry=r)
        self.backpressure = Gauge("pricepipe_publisher_backpressure",
                                  "1 while Redis memory is above the high-water mark", registry=r)
        self.skipped_periods = Counter("pricepipe_publisher_skipped_periods",
                                       "GBM periods skipped after the publisher fell behind",
                                       registry=r)
        # Pollers
        self.requests = Counter("pricepipe_publisher_requests",
                                "Upstream requests, by provider and outcome",
                                ["provider", "outcome"], registry=r)
        self.rejected = Counter("pricepipe_publisher_rejected",
                                "Upstream items (trades, quotes, answers) rejected, by "
                                "provider and reason", ["provider", "reason"], registry=r)
        self.unchanged = Counter("pricepipe_publisher_unchanged",
                                 "Trades and quotes equal to the last one, not published",
                                 ["provider", "channel"], registry=r)
        self.trades_missed = Counter("pricepipe_publisher_trades_missed",
                                     "Trades that happened between two polls but were not in "
                                     "the answer (a jump in the venue's trade ids)",
                                     ["provider"], registry=r)
        self.stale_polls = Counter("pricepipe_publisher_polls_dropped",
                                   "Polls dropped: the upstream was slower than the schedule",
                                   ["provider"], registry=r)
        # Websocket feeds
        self.feed_messages = Counter("pricepipe_feed_messages",
                                     "Websocket messages received, by feed and kind (trade, "
                                     "quote, heartbeat, control, unknown, malformed)",
                                     ["feed", "kind"], registry=r)
        self.feed_connections = Gauge("pricepipe_feed_connections",
                                      "Websocket connections open, by feed", ["feed"],
                                      registry=r)
        self.feed_reconnects = Counter("pricepipe_feed_reconnects",
                                       "Connections opened after the first, by feed", ["feed"],
                                       registry=r)
        self.feed_disconnects = Counter("pricepipe_feed_disconnects",
                                        "Connections lost or closed, by feed and reason "
                                        "(closed, error, silent, lifetime, shutdown, refused)",
                                        ["feed", "reason"], registry=r)
        self.feed_last_message = Gauge("pricepipe_feed_last_message_timestamp_seconds",
                                       "Wall-clock time of the last message, by feed", ["feed"],
                                       registry=r)
        self.feed_duplicates = Counter("pricepipe_feed_duplicates",
                                       "Trades and quotes received again and dropped, by feed",
                                       ["feed"], registry=r)
        self.feed_gaps = Counter("pricepipe_feed_gaps",
                                 "Trade-id gaps, by feed and outcome (detected, repaired, "
                                 "unrepairable)", ["feed", "outcome"], registry=r)
        self.feed_trades_repaired = Counter("pricepipe_feed_trades_repaired",
                                            "Trades recovered by REST repairs, by feed",
                                            ["feed"], registry=r)
        self.feed_trades_lost = Counter("pricepipe_feed_trades_unrepairable",
                                        "Trade ids lost for good (reported), by feed and reason",
                                        ["feed", "reason"], registry=r)
        self.feed_repair_requests = Counter("pricepipe_feed_repair_requests",
                                            "REST requests of gap repairs, by feed and outcome",
                                            ["feed", "outcome"], registry=r)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (``name`` without ``_total``), 0 if never set."""
        for suffix in ("_total", ""):
            found = self.registry.get_sample_value(name + suffix, labels)
            if found is not None:
                return found
        return 0.0

    def total(self, name: str) -> float:
        """Sum of a counter over all its label values."""
        out = 0.0
        for metric in self.registry.collect():
            if metric.name == name:
                out += sum(s.value for s in metric.samples if s.name == name + "_total")
        return out
