"""Prometheus metrics of the HTTP API, served at ``/metrics``.

Requests are counted and timed per route *template* (``/v1/trades/{symbol}``,
not the concrete path) so that the number of series stays bounded whatever
clients send; requests that match no route share the label ``unmatched``.
Each app has its own registry, so several apps in one process (tests) do
not collide.

Once the app has its Redis client, :meth:`Metrics.watch_pipeline` adds the
pipeline's Redis-side state (persist backlog, dead letters, heartbeats,
Redis memory, feed states: :mod:`pricepipe.pipelinemetrics`) to the same
``/metrics``: the API runs on every VM, so these outlive any other role.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from pricepipe.keys import Keys
from pricepipe.pipelinemetrics import PipelineCollector

#: Seconds; from a cached quote (ms) to a year of CSV (minutes).
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                     30.0, 60.0, 300.0)


class Metrics:
    """The API's collectors, in their own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pricepipe_api_requests", "HTTP requests by method, route template and status",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "pricepipe_api_request_duration_seconds",
            "Time from request to the end of the response body, by route template",
            ["method", "route"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.in_progress = Gauge(
            "pricepipe_api_requests_in_progress", "Requests being served",
            registry=self.registry)
        self.rate_limited = Counter(
            "pricepipe_api_rate_limited", "Requests refused with 429", registry=self.registry)
        self.rate_limit_errors = Counter(
            "pricepipe_api_rate_limit_errors",
            "Requests let through unchecked because Redis failed", registry=self.registry)
        self._pipeline: PipelineCollector | None = None

    def watch_pipeline(self, r: Any, keys: Keys) -> None:
        """Export the pipeline's state read from ``r`` at each scrape (see
        :class:`~pricepipe.pipelinemetrics.PipelineCollector`); reads nothing now."""
        self.unwatch_pipeline()
        self._pipeline = PipelineCollector(r, keys)
        self.registry.register(self._pipeline)

    def unwatch_pipeline(self) -> None:
        """Stop exporting the pipeline's state (before its Redis client closes)."""
        if self._pipeline is not None:
            self.registry.unregister(self._pipeline)
            self._pipeline = None

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware recording :class:`Metrics` for every HTTP request."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app raises before answering
        started = time.perf_counter()

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics = self.metrics
        metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            metrics.in_progress.dec()
            # The router stores the matched route in the scope it shares with us.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.latency.labels(method, route).observe(time.perf_counter() - started)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
