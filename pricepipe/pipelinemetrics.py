"""Prometheus metrics of the pipeline as Redis holds it, read at scrape time.

The persist group's backlog, dead letters, heartbeats, Redis memory and the
feeds' states are facts about Redis, not about one process: they must be
exported by something that keeps running when the process they describe
dies (a killed persist worker exports nothing). :class:`PipelineCollector`
reads them from Redis when it is scraped; the HTTP API registers it on its
``/metrics`` (the API runs on every VM, whatever else runs there), so
several APIs export the same series (alert rules aggregate with ``max``).

Series (``symbol``, ``channel`` label the persisted streams, trades and quotes):

* ``pricepipe_stream_entries_added_total{symbol,channel}`` entries ever appended;
* ``pricepipe_persist_waiting_entries{symbol,channel}`` not yet acknowledged by
  the persist group (pending + never delivered);
* ``pricepipe_persist_oldest_waiting_age_seconds{symbol,channel}`` how long the
  oldest of those has waited (0: none waits);
* ``pricepipe_persist_acknowledged_total{symbol,channel}`` acknowledged (persisted
  or dead-lettered) entries;
* ``pricepipe_pipeline_streams`` persisted streams registered, and
  ``pricepipe_pipeline_streams_exported`` how many of them have the series above
  (at most ``max_streams``, the first ones in symbol order: bounds the cost
  and the number of series);
* ``pricepipe_dead_letters{shard}`` dead letters now (``XLEN``) and
  ``pricepipe_dead_letters_added_total{shard}`` ever set aside (replays and
  deletes do not lower it), for every shard, 0 when there are none, so that a
  first dead letter is an increase;
* ``pricepipe_heartbeats{role}`` live heartbeat keys per role (``persist``,
  ``ws`` always present, 0 when none);
* ``pricepipe_redis_used_memory_bytes``, ``pricepipe_redis_maxmemory_bytes``
  (``INFO memory``; 0: no limit; on a cluster the fullest primary);
* ``pricepipe_feed_state{feed,state}`` 1 for each upstream feed's current state
  (:class:`~pricepipe.feedstatus.FeedState`), 0 for the others, and
  ``pricepipe_feed_state_updated_timestamp_seconds{feed}`` when its publisher
  last wrote it (a dead publisher stops updating it);
* ``pricepipe_pipeline_redis_up`` 1 when the last read of Redis succeeded (when it
  fails, only this and the next one are exported), and
  ``pricepipe_pipeline_collect_seconds`` how long that read took.

Cost per scrape: a fixed number of pipelined round trips (the registries,
dead letters and feed states; the backlog's two, see
:mod:`pricepipe.backlog`; ``INFO``) plus a ``SCAN`` of the heartbeat keys
(1,000 keys per call), whatever the number of streams up to the cap.
Readings are kept for ``cache_s``, so several Prometheus servers scraping
at once cost one read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .backlog import persisted_streams, read_backlog
from .backpressure import memory_usage
from .clock import US_PER_S, now_ms
from .exceptions import DecodeError
from .feedstatus import FeedState, decode_state
from .keys import Keys

log = logging.getLogger(__name__)

#: Roles that write heartbeat keys; exported even when none is alive.
HEARTBEAT_ROLES = ("persist", "ws")
#: Most streams exported one by one (500 symbols' trades and quotes).
MAX_STREAMS = 1000
#: Seconds a reading is served again before Redis is read anew.
CACHE_S = 1.0
#: Most entries counted per stream when Redis 7.0 cannot tell a group's lag
#: (after an AOF reload): the waiting count is then a lower bound.
LAG_SCAN_MAX = 100
#: Keys per ``SCAN`` call when looking for heartbeats.
SCAN_COUNT = 1000

_STREAM = ["symbol", "channel"]

_Family = GaugeMetricFamily | CounterMetricFamily


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _families() -> dict[str, _Family]:
    """Every family this collector exports, empty (:meth:`PipelineCollector.describe`)."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    families: list[_Family] = [
        counter("pricepipe_stream_entries_added", "Entries ever appended to the stream",
                labels=_STREAM),
        gauge("pricepipe_persist_waiting_entries",
              "Entries the persist group has not acknowledged (pending + not yet delivered)",
              labels=_STREAM),
        gauge("pricepipe_persist_oldest_waiting_age_seconds",
              "How long the oldest entry not yet acknowledged by the persist group has waited "
              "(0: none waits)", labels=_STREAM),
        counter("pricepipe_persist_acknowledged",
                "Entries the persist group acknowledged (persisted or dead-lettered)",
                labels=_STREAM),
        gauge("pricepipe_pipeline_streams", "Persisted streams (trades, quotes) registered"),
        gauge("pricepipe_pipeline_streams_exported",
              "Persisted streams exported one by one (the rest are beyond the cap)"),
        gauge("pricepipe_dead_letters", "Dead letters now, by shard", labels=["shard"]),
        counter("pricepipe_dead_letters_added", "Dead letters ever set aside, by shard",
                labels=["shard"]),
        gauge("pricepipe_heartbeats", "Live heartbeat keys, by role", labels=["role"]),
        gauge("pricepipe_redis_used_memory_bytes", "Redis used_memory (the fullest primary)"),
        gauge("pricepipe_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)"),
        gauge("pricepipe_feed_state", "1 for the upstream feed's current state",
              labels=["feed", "state"]),
        gauge("pricepipe_feed_state_updated_timestamp_seconds",
              "When the feed's publisher last wrote its state", labels=["feed"]),
        gauge("pricepipe_pipeline_redis_up", "1 when the last read of Redis succeeded"),
        gauge("pricepipe_pipeline_collect_seconds", "Duration of the last read of Redis"),
    ]
    return {f.name: f for f in families}


class PipelineCollector(Collector):
    """Reads the pipeline's state from Redis when collected (see the module doc).

    Thread-safe: concurrent scrapes wait for one read and share it. Never
    raises for Redis trouble: it reports ``pricepipe_pipeline_redis_up 0``.
    """

    def __init__(self, r: Any, keys: Keys, *, max_streams: int = MAX_STREAMS,
                 cache_s: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.r = r
        self.keys = keys
        self.max_streams = max_streams
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._read_at = 0.0
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        # Registering must not read Redis (the registry would call collect()).
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._read_at >= self.cache_s:
                self._cached = self._read()
                self._read_at = now
            return list(self._cached)

    def _read(self) -> list[Metric]:
        started = time.perf_counter()
        families = _families()
        up = families.pop("pricepipe_pipeline_redis_up")
        took = families.pop("pricepipe_pipeline_collect_seconds")
        try:
            self._fill(families)
            out = list(families.values())
            up.add_metric([], 1)
            if self._failing:
                log.warning("pipeline metrics: redis answers again")
                self._failing = False
        except (redis.RedisError, OSError) as exc:
            out = []
            up.add_metric([], 0)
            if not self._failing:  # once per outage, not once per scrape
                log.warning("pipeline metrics: cannot read redis (%s: %s)",
                            type(exc).__name__, exc)
                self._failing = True
        took.add_metric([], time.perf_counter() - started)
        return [*out, up, took]

    def _fill(self, f: dict[str, _Family]) -> None:
        keys, shards = self.keys, list(self.keys.all_shards())
        pipe = self.r.pipeline(transaction=False)
        for shard in shards:
            pipe.smembers(keys.symbols(shard))
        for shard in shards:
            pipe.xinfo_stream(keys.dead_letters(shard))
        pipe.hgetall(keys.feed_states())
        replies = pipe.execute(raise_on_error=False)
        _raise_connection_errors(replies)
        registries, letters, states = (replies[:len(shards)],
                                       replies[len(shards):2 * len(shards)], replies[-1])

        symbols: set[str] = set()
        for members in registries:
            if not isinstance(members, Exception):
                symbols.update(_text(m) for m in members)
        streams = persisted_streams(keys, sorted(symbols))
        exported = streams[:self.max_streams]
        f["pricepipe_pipeline_streams"].add_metric([], len(streams))
        f["pricepipe_pipeline_streams_exported"].add_metric([], len(exported))
        now = now_ms()
        for stream in read_backlog(self.r, exported, lag_scan_max=LAG_SCAN_MAX):
            channel, symbol = keys.parse_stream(stream.stream)
            labels = [symbol, str(channel)]
            f["pricepipe_stream_entries_added"].add_metric(labels, stream.added)
            if not stream.grouped:
                continue
            f["pricepipe_persist_waiting_entries"].add_metric(labels, stream.waiting)
            f["pricepipe_persist_oldest_waiting_age_seconds"].add_metric(
                labels, stream.age_ms(now) / 1000)
            if stream.lag_exact:  # else an overestimate, which a counter must not show
                f["pricepipe_persist_acknowledged"].add_metric(labels, stream.acknowledged)

        for shard, info in zip(shards, letters, strict=True):
            length = added = 0
            if not isinstance(info, Exception):  # else: no dead letter yet
                length = int(info.get("length") or 0)
                added = int(info.get("entries-added") or length)
            f["pricepipe_dead_letters"].add_metric([str(shard)], length)
            f["pricepipe_dead_letters_added"].add_metric([str(shard)], added)

        beats = dict.fromkeys(HEARTBEAT_ROLES, 0)
        start = keys.heartbeat_pattern().removesuffix("*:*")
        for key in self.r.scan_iter(match=keys.heartbeat_pattern(), count=SCAN_COUNT):
            role = _text(key)[len(start):].split(":", 1)[0]
            beats[role] = beats.get(role, 0) + 1
        for role, count in sorted(beats.items()):
            f["pricepipe_heartbeats"].add_metric([role], count)

        if hasattr(self.r, "get_primaries"):  # a cluster: every primary, the fullest counts
            info = self.r.info("memory", target_nodes=self.r.PRIMARIES)
        else:
            info = self.r.info("memory")
        try:
            usage = memory_usage(info)
        except ValueError:
            pass
        else:
            f["pricepipe_redis_used_memory_bytes"].add_metric([], usage.used_bytes)
            f["pricepipe_redis_maxmemory_bytes"].add_metric([], usage.max_bytes)

        for name, value in ({} if isinstance(states, Exception) else states).items():
            try:
                state = decode_state(value)
            except DecodeError:
                continue  # a writer of another version; the feeds API reports it
            feed = _text(name)
            for candidate in FeedState:
                f["pricepipe_feed_state"].add_metric(
                    [feed, str(candidate)], 1 if state["state"] == candidate else 0)
            if isinstance(state.get("updated_us"), int):
                f["pricepipe_feed_state_updated_timestamp_seconds"].add_metric(
                    [feed], state["updated_us"] / US_PER_S)


def _raise_connection_errors(replies: list[Any]) -> None:
    """A pipeline run with ``raise_on_error=False`` returns errors as values:
    a lost connection must still end the read (a missing key is just absent)."""
    for reply in replies:
        if isinstance(reply, redis.ConnectionError | redis.TimeoutError):
            raise reply
