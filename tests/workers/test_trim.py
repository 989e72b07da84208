"""Trimming honours every consumer group: what the persist group has not
acknowledged stays whatever its age; what a strategy's group has not
acknowledged stays up to the hard cap ``stream_max_age_s``, past which the
group is told the range it lost. Bars streams likewise, beside the window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pricepipe import streams
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.settings import WorkerSettings

from .helpers import make_trades, pending_count, publish, row_counts

STRATEGY = "strategy"


def _gap(r: Any, keys: Keys, stream: str, group: str) -> tuple[str, str] | None:
    raw = r.hget(keys.group_gaps(keys.shard(keys.symbol_of(stream))),
                 streams.group_gap_field(stream, group))
    if raw is None:
        return None
    after, until = raw.decode().split()
    return after, until


def test_the_cap_is_a_setting_with_none_for_no_cap() -> None:
    assert WorkerSettings().stream_max_age_s == 86_400
    assert WorkerSettings.from_env({"PRICEPIPE_WORKER_STREAM_MAX_AGE_S": ""}
                                   ).stream_max_age_s is None
    assert WorkerSettings.from_env({"PRICEPIPE_WORKER_STREAM_MAX_AGE_S": "600"}
                                   ).stream_max_age_s == 600


def test_a_stopped_strategy_group_keeps_its_entries_up_to_the_cap(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    stream = keys.trades("AAPL")
    streams.register_symbols(r, keys, ["AAPL"])
    streams.ensure_group(r, stream, STRATEGY)  # a strategy's GroupReader, from the start
    ids = publish(r, keys, make_trades(400, symbols=("AAPL",), step_us=10_000))
    # The strategy read 100 entries, acknowledged 50, and stopped.
    got = r.xreadgroup(STRATEGY, "s1", {stream: ">"}, count=100)[0][1]
    r.xack(stream, STRATEGY, *[entry_id for entry_id, _ in got[:50]])
    worker = run_worker(stream_window_s=0)  # window 0: only the groups keep entries
    assert row_counts(db) == {"trades": 400, "quotes": 0}
    assert [e.decode() for e, _ in r.xrange(stream, count=1)] == [ids[50]]
    assert r.xlen(stream) == 350
    assert worker.stats.trimmed == 50 + 1  # and the bars stream's one message
    # A reader at the start learns what it missed; the group lost nothing.
    assert streams.trimmed_since(r, keys, stream, "0-0") == ids[49]
    assert _gap(r, keys, stream, STRATEGY) is None
    # Past the hard cap (0 s here) the group's entries go too, and the range
    # it lost is recorded for its readers to report.
    run_worker("w2", stream_window_s=0, stream_max_age_s=0)
    assert r.xlen(stream) == 0
    gap = _gap(r, keys, stream, STRATEGY)
    assert gap is not None
    after, until = (streams.entry_key(x) for x in gap)
    assert after < streams.entry_key(ids[50]) and until > streams.entry_key(ids[-1])
    assert pending_count(r, keys, ("AAPL",)) == 0


def test_the_persist_group_is_never_capped(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    stream = keys.trades("AAPL")
    ids = publish(r, keys, make_trades(200, symbols=("AAPL",)))
    held = r.xreadgroup(PERSIST_GROUP, "stuck", {stream: ">"}, count=1)[0][1][0][0].decode()
    assert held == ids[0]
    run_worker(stream_window_s=0, stream_max_age_s=0)
    # Not in PostgreSQL yet: the held entry and all after it stay in Redis.
    assert r.xlen(stream) == 200 and row_counts(db)["trades"] == 199
    assert _gap(r, keys, stream, PERSIST_GROUP) is None


def test_bars_streams_keep_what_a_strategy_group_needs_beside_the_window(
        r: Any, keys: Keys, run_worker: Callable[..., PersistWorker]) -> None:
    bars = keys.bars("AAPL")
    for i in range(5):  # one bar message per minute (each worker run commits one)
        publish(r, keys, make_trades(1, symbols=("AAPL",),
                                     start_us=make_trades(1)[0].ts_us + i * 61_000_000))
        run_worker(f"w{i}")
    assert r.xlen(bars) == 5
    streams.ensure_group(r, bars, STRATEGY)
    run_worker("w5", stream_window_s=0)
    assert r.xlen(bars) == 5  # the strategy has read none of them
    run_worker("w6", stream_window_s=0, stream_max_age_s=0)
    assert r.xlen(bars) == 0 and _gap(r, keys, bars, STRATEGY) is not None
