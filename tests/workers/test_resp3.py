"""RESP2 and RESP3 (``?protocol=3`` on the Redis URL): every Redis path of the
persist worker and the dead-letter commands gives the same results in both
protocols, on a real server (redis-py parses XREADGROUP, XAUTOCLAIM, XPENDING
and XINFO replies differently under RESP3). The rq commands run in both
protocols in test_service.py."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from pricepipe import streams
from pricepipe.events import Trade
from pricepipe.keys import PERSIST_GROUP, PERSISTED, Keys
from pricepipe.workers import deadletter
from pricepipe.workers.consumer import GroupConsumer

from .helpers import (
    duplicate_count,
    fast_env,
    kinds,
    make_events,
    pending_count,
    publish,
    row_counts,
)

POISON = {b"t": b"not a trade"}


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Any]:
    r = redis.Redis.from_url(f"{redis_url}?protocol={request.param}")
    info = r.execute_command("CLIENT", "INFO")
    assert f"resp={request.param}" in (info.decode() if isinstance(info, bytes) else str(info))
    yield r
    r.close()


def test_every_consumer_call_reads_alike_in_either_protocol(client: Any, keys: Keys) -> None:
    events = make_events(60, symbols=("AAPL", "MSFT"))
    publish(client, keys, events)
    stream = keys.trades("AAPL")
    poison_id = client.xadd(stream, POISON).decode()
    consumer = GroupConsumer(client, keys, "c1")
    by_shard = consumer.refresh()
    assert sorted(consumer.all_streams()) == sorted(
        keys.stream(s, c) for s in ("AAPL", "MSFT") for c in PERSISTED)
    # New entries (the raw reader), then the same again as this name's pending.
    first = [consumer.read_new(shard, count=1000) for shard in by_shard]
    assert sum(b.row_count for b in first) == len(events)
    assert [r.entry_id for b in first for r in b.rejects] == [poison_id]
    again = []
    for shard, names in by_shard.items():
        cursors = dict.fromkeys(names, "0")
        while cursors:
            again.append(consumer.read_own_pending(shard, cursors, count=7))
    assert sorted(x for b in again for x in b.trades) == sorted(x for b in first for x in b.trades)
    assert sorted(x for b in again for x in b.quotes) == sorted(x for b in first for x in b.quotes)
    # Claimed by another consumer; delivery counts; dead letter; acknowledgement.
    other = GroupConsumer(client, keys, "c2")
    claimed, cursor = other.claim_idle(stream, min_idle_ms=0, count=1000)
    aapl_trades = sum(isinstance(e, Trade) and e.symbol == "AAPL" for e in events)
    assert cursor == "0-0" and claimed.row_count == aapl_trades
    ids = claimed.ack_ids()
    counts = other.delivery_counts(ids)
    assert set(counts.values()) == {3} and len(counts) == len(claimed)  # read, pending, claim
    assert other.dead_letter(claimed.rejects, counts) == (1, [], None)
    (letter,) = deadletter.list_dead_letters(client, keys)
    assert (letter.entry_id, letter.fields, letter.deliveries) == (poison_id, POISON, 3)
    assert other.ack(claimed.row_ack_ids()) == claimed.row_count
    for b in first:
        consumer.ack(b.row_ack_ids())
    assert pending_count(client, keys, ("AAPL", "MSFT")) == 0
    # Consumers: the Lua script reads XINFO CONSUMERS (RESP2 inside scripts).
    assert consumer.forget_idle_consumers(stream, idle_ms=0) == ["c2"]
    # The heartbeat, and trimming (XINFO GROUPS, XPENDING, the trim script).
    consumer.heartbeat(30, b"{}")
    assert client.get(keys.heartbeat("persist", "c1")) == b"{}"
    assert streams.group_floors(client, stream).keys() == {PERSIST_GROUP}
    length = client.xlen(stream)
    assert streams.trim_stream(client, keys, stream, window_ms=0, max_age_ms=None,
                               persisted=True) == length
    # redis-py's own XREADGROUP parsing (a cluster client reads with it).
    publish(client, keys, make_events(3, symbols=("AAPL",), start_us=events[-1].ts_us + 1))
    parsed = client.xreadgroup(PERSIST_GROUP, "c3", {stream: ">"})
    assert [(s, len(e)) for s, e in streams.reply_streams(parsed)] == [(stream.encode(), 1)]


def _run(spawn: Callable[..., subprocess.Popen[bytes]], args: list[str], env: dict[str, str]
         ) -> str:
    proc = spawn(args, env=env)
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    return out


def test_the_worker_and_dlq_run_end_to_end_with_a_resp3_url(
        r: Any, keys: Keys, db: Any, redis_url: str, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    env = dict(fast_env(pipeline_env), PRICEPIPE_REDIS_URL=f"{redis_url}?protocol=3",
               PRICEPIPE_WORKER_STREAM_WINDOW_S="0")
    events = make_events(3000, symbols=("AAPL", "MSFT", "SPY"))
    publish(r, keys, events[:2000])
    poison_id = r.xadd(keys.trades("AAPL"), POISON).decode()
    # Entries pending for w1 (its previous life died) and for a dead consumer.
    for symbol in ("AAPL", "MSFT", "SPY"):
        r.xreadgroup(PERSIST_GROUP, "w1", {keys.quotes(symbol): ">"}, count=50)
        r.xreadgroup(PERSIST_GROUP, "dead", {keys.trades(symbol): ">"}, count=20)
    # A strategy group that has read nothing: trimming keeps all it needs.
    streams.ensure_group(r, keys.trades("SPY"), "strategy")
    publish(r, keys, events[2000:])
    out = _run(spawn, ["persist", "--burst", "--name", "w1", "--claim-idle-ms", "0"], env)
    assert row_counts(db) == kinds(events) and duplicate_count(db) == 0
    assert pending_count(r, keys, ("AAPL", "MSFT", "SPY")) == 0
    spy = r.xinfo_stream(keys.trades("SPY"))
    assert spy["length"] == spy["entries-added"]  # the strategy group's floor held
    assert r.xlen(keys.quotes("SPY")) == 0  # no group but persist: trimmed to the window
    assert "recovering" in out and "claimed" in out
    _run(spawn, ["persist", "--check", "--name", "w1"], env)
    # Dead letters, listed and replayed over RESP3.
    (shown,) = orjson.loads(_run(spawn, ["dlq", "list", "--json"], env).splitlines()[-1])
    assert shown["entry_id"] == poison_id
    replayed = _run(spawn, ["dlq", "replay", "--all"], env)
    assert "1 dead letter(s) re-queued, 0 already persisted (deleted), 0 kept" in replayed
    assert deadletter.count(r, keys) == 0
    _run(spawn, ["persist", "--burst", "--name", "w1"], env)
    (letter,) = deadletter.list_dead_letters(r, keys)  # dead-lettered again, same reason
    assert letter.fields == POISON
