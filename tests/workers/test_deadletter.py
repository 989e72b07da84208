"""Poison entries of either stream: dead-lettered with a reason, acknowledged,
never blocking their batch; listed and replayed through the CLI."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricepipe import codec, streams
from pricepipe.clock import now_ms, us_to_datetime
from pricepipe.events import MAX_EVENT_AGE_AT_APPEND_US, MAX_EVENT_LEAD_AT_APPEND_US, Quote, Trade
from pricepipe.keys import PERSIST_GROUP, Channel, Keys
from pricepipe.workers import deadletter
from pricepipe.workers.batch import append_time_reason, decode_entries, reject_untimely
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.partitions import list_partitions
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import EventSink

from .helpers import (
    BASE_TS_US,
    US_PER_DAY,
    fast_settings,
    make_events,
    make_quotes,
    make_trades,
    pending_count,
    publish,
    row_count,
    row_counts,
)

TS = str(BASE_TS_US).encode()
DAY_US = US_PER_DAY

BAD_TRADES: list[tuple[dict[bytes, bytes], str]] = [
    ({b"t": b"yesterday 1.0 1.0 b 7 x "}, "not an unsigned integer"),
    ({b"t": TS + b" 1.0 1.0 b 7 x"}, "has 6 parts"),
    ({b"t": TS + b" -3 1.0 b 7 x "}, "positive"),
    ({b"t": TS + b" nan 1.0  7 x "}, "finite"),
    ({b"t": b"12 1.0 1.0 b 7 x "}, "outside"),
    ({b"t": TS + b" 1.0 1.0 buy 7 x "}, "not b or s"),
    ({b"q": TS + b" 1.0 1.0 2.0 1.0 x "}, "lacks the 't' field"),
    ({b"garbage": b"\xff\xfe"}, "lacks the 't' field"),
]
BAD_QUOTES: list[tuple[dict[bytes, bytes], str]] = [
    ({b"q": TS + b" 2.0 1.0 1.0 1.0 x "}, "crossed book"),
    ({b"q": TS + b"     x "}, "needs a bid or an ask"),
    ({b"q": TS + b"  1.0 2.0 1.0 x "}, "bid_size given without bid"),
    ({b"q": TS + b" 1.0 -1 2.0 1.0 x "}, ">= 0"),
    ({b"t": TS + b" 1.0 1.0 b 7 x "}, "lacks the 'q' field"),
]


def test_decoding_splits_rows_from_rejects_with_reasons() -> None:
    keys = Keys("pp", 4)
    for channel, bad in ((Channel.TRADES, BAD_TRADES), (Channel.QUOTES, BAD_QUOTES)):
        stream = keys.stream("AAPL", channel)
        good = (make_trades(1, symbols=("AAPL",)) if channel is Channel.TRADES
                else make_quotes(1, symbols=("AAPL",)))[0]
        good_fields = dict([codec.encode_event(good)])
        entries = [("1-0", {k: v.encode() for k, v in good_fields.items()}),
                   *[(f"2-{i}", f) for i, (f, _) in enumerate(bad)], ("3-0", {})]
        batch = decode_entries(keys, stream, entries)
        assert batch.row_count == 1
        assert [rej.entry_id for rej in batch.rejects] == [f"2-{i}" for i in range(len(bad))]
        for rej, (fields, want) in zip(batch.rejects, bad, strict=True):
            assert want in rej.reason and rej.fields == fields, (rej.reason, want)
        assert batch.vanished == [(stream, "3-0")]
        assert sorted(batch.ack_ids()[stream]) == sorted(
            ["1-0", "3-0"] + [f"2-{i}" for i in range(len(bad))])


def test_dead_letter_encoding_round_trips() -> None:
    fields = {b"t": b"\xff 1"}
    encoded = deadletter.encode("pp:{s1}:trades:AAPL", "5-1", fields, reason="bad px",
                                deliveries=3, failed_ms=42, consumer="w1")
    raw = {k: v if isinstance(v, bytes) else str(v).encode() for k, v in encoded.items()}
    letter = deadletter.decode(b"9-0", 1, raw)
    assert (letter.stream, letter.entry_id, letter.reason, letter.deliveries,
            letter.failed_ms, letter.consumer, letter.fields) == (
        "pp:{s1}:trades:AAPL", "5-1", "bad px", 3, 42, "w1", fields)


def test_bad_entries_go_to_dead_letters_and_the_rest_is_persisted(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    good = make_events(60, symbols=("AAPL",))
    publish(r, keys, good[:30])
    for fields, _ in BAD_TRADES:
        r.xadd(keys.trades("AAPL"), fields)
    for fields, _ in BAD_QUOTES:
        r.xadd(keys.quotes("AAPL"), fields)
    publish(r, keys, good[30:])
    worker = run_worker(batch_size=1000)
    assert row_count(db) == 60
    assert worker.stats.dead_letters == len(BAD_TRADES) + len(BAD_QUOTES)
    assert pending_count(r, keys, ("AAPL",)) == 0
    letters = deadletter.list_dead_letters(r, keys)
    assert len(letters) == len(BAD_TRADES) + len(BAD_QUOTES) == deadletter.count(r, keys)
    by_stream: dict[str, list[Any]] = {}
    for letter in letters:
        by_stream.setdefault(letter.stream, []).append(letter)
    for stream, bad in ((keys.trades("AAPL"), BAD_TRADES), (keys.quotes("AAPL"), BAD_QUOTES)):
        for letter, (fields, reason) in zip(by_stream[stream], bad, strict=True):
            assert letter.fields == fields and reason in letter.reason


def test_entry_delivered_too_often_is_dead_lettered(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_events(6, symbols=("AAPL",)))  # one trade, five quotes
    stream = keys.quotes("AAPL")
    # A poison entry that "kills" three consumers in a row (never acknowledged).
    for consumer in ("a", "b", "c"):
        if consumer == "a":
            r.xreadgroup(PERSIST_GROUP, consumer, {stream: ">"}, count=1)
        else:
            r.xautoclaim(stream, PERSIST_GROUP, consumer, 0, count=1)
    worker = run_worker("d", claim_idle_ms=0, max_deliveries=3)
    assert worker.stats.dead_letters == 1
    (letter,) = deadletter.list_dead_letters(r, keys)
    assert "delivered 4 times" in letter.reason and letter.deliveries == 4
    assert letter.stream == stream
    assert isinstance(codec.decode_entry(Channel.QUOTES, "AAPL", letter.fields), Quote)
    assert row_counts(db) == {"trades": 1, "quotes": 4}
    assert pending_count(r, keys, ("AAPL",)) == 0


def test_rows_postgresql_refuses_are_isolated_and_dead_lettered(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    # Constraints added by an operator: PostgreSQL refuses prices above 1000.
    with db.cursor() as cur:
        cur.execute("ALTER TABLE trades ADD CONSTRAINT price_cap CHECK (price < 1000)")
        cur.execute("ALTER TABLE quotes ADD CONSTRAINT ask_cap CHECK (ask < 1000)")
    trades = make_trades(30, symbols=("AAPL",))
    trades[17] = Trade("AAPL", trades[17].ts_us, 5000.0, 1.0, "test", "big")
    quotes = make_quotes(90, symbols=("AAPL",))
    quotes[40] = Quote("AAPL", quotes[40].ts_us, 1.0, None, 2000.0, 1.0, "test")
    publish(r, keys, [*trades, *quotes])
    worker = run_worker(batch_size=1000)
    assert row_counts(db) == {"trades": 29, "quotes": 89}
    letters = {letter.stream: letter for letter in deadletter.list_dead_letters(r, keys)}
    assert len(letters) == 2 and worker.stats.dead_letters == 2
    trade_letter, quote_letter = letters[keys.trades("AAPL")], letters[keys.quotes("AAPL")]
    assert "refused by postgresql" in trade_letter.reason and "price_cap" in trade_letter.reason
    assert "ask_cap" in quote_letter.reason
    assert codec.decode_entry(Channel.TRADES, "AAPL", trade_letter.fields) == trades[17]
    assert codec.decode_entry(Channel.QUOTES, "AAPL", quote_letter.fields) == quotes[40]
    assert pending_count(r, keys, ("AAPL",)) == 0
    with db.cursor() as cur:  # the refused trade is in no bar
        cur.execute("SELECT sum(trade_count), max(high) FROM bars_1m")
        assert cur.fetchone() == (29, max(t.price for t in trades if t.price < 1000))


def test_dlq_cli_lists_and_replays_after_a_fix(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]],
        run_worker: Callable[..., PersistWorker]) -> None:
    # A constraint too strict for real data: PostgreSQL refuses one trade...
    with db.cursor() as cur:
        cur.execute("ALTER TABLE trades ADD CONSTRAINT price_cap CHECK (price < 1000)")
    streams.register_symbols(r, keys, ["AAPL"])
    publish(r, keys, [Trade("AAPL", BASE_TS_US, 1500.25, None, "test")])
    run_worker()
    assert row_count(db) == 0
    listing = spawn(["dlq", "list", "--json"], env=pipeline_env)
    out = listing.communicate(timeout=60)[0]
    assert listing.returncode == 0, out
    (shown,) = orjson.loads(out.splitlines()[-1])
    assert shown["fields"]["t"].split()[:2] == [str(BASE_TS_US), "1500.25"]
    assert "price_cap" in shown["reason"]
    # ...the fix (drop the constraint), then the replay puts it back in its stream.
    with db.cursor() as cur:
        cur.execute("ALTER TABLE trades DROP CONSTRAINT price_cap")
    replay = spawn(["dlq", "replay", "--all"], env=pipeline_env)
    out = replay.communicate(timeout=60)[0]
    assert replay.returncode == 0 and b"1 dead letter(s) re-queued" in out, out
    assert deadletter.count(r, keys) == 0
    run_worker()
    with db.cursor() as cur:
        cur.execute("SELECT symbol, price FROM trades")
        assert cur.fetchall() == [("AAPL", 1500.25)]


# --- event time against append time ----------------------------------------------------------

AGE_US, LEAD_US = MAX_EVENT_AGE_AT_APPEND_US, MAX_EVENT_LEAD_AT_APPEND_US


@given(st.integers(0, 10**6), st.integers(-2 * AGE_US, 2 * LEAD_US))
def test_the_append_time_bounds_are_inclusive_and_named(seq: int, offset_us: int) -> None:
    appended_ms = 1_800_000_000_000  # 2027-01-15
    ts_us = appended_ms * 1000 + offset_us
    reason = append_time_reason(ts_us, appended_ms)
    assert (reason is None) == (-AGE_US <= offset_us <= LEAD_US)
    if offset_us > LEAD_US:
        assert reason is not None and reason.startswith("event time too far in the future")
    elif offset_us < -AGE_US:
        assert reason is not None and reason.startswith("event time too old")
    # The batch check agrees, and keeps each remaining row beside its entry.
    good = Trade("AAPL", appended_ms * 1000, 2.0, None, "x")
    odd = Trade("AAPL", ts_us, 3.0, None, "x")
    keys = Keys("pp", 4)
    batch = decode_entries(keys, keys.trades("AAPL"), [
        (f"{appended_ms}-{seq + 1}", {b"t": codec.encode_trade(odd).encode()}),
        (f"{appended_ms}-{seq + 2}", {b"t": codec.encode_trade(good).encode()}),
    ])
    assert reject_untimely(batch) == (reason is not None)
    assert [ref[1] for ref in batch.trade_ids] == (
        [f"{appended_ms}-{seq + 2}"] if reason else [f"{appended_ms}-{seq + 1}",
                                                    f"{appended_ms}-{seq + 2}"])
    assert [row[2] for row in batch.trades] == ([2.0] if reason else [3.0, 2.0])
    assert [rej.reason for rej in batch.rejects] == ([reason] if reason else [])
    assert [rej.entry_id for rej in batch.rejects] == ([f"{appended_ms}-{seq + 1}"] if reason
                                                       else [])


def test_events_too_far_from_their_append_time_are_dead_lettered_not_partitioned(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    now = now_ms() * 1000
    future = Trade("AAPL", now + 30 * DAY_US, 1.0, 1.0, "test", "future")  # no partition ahead
    old = Quote("AAPL", now - 8 * DAY_US, 1.0, 1.0, 2.0, 1.0, "test")
    inside = Trade("AAPL", now - 6 * DAY_US, 1.0, 1.0, "test", "six-days")
    publish(r, keys, [*make_events(30, symbols=("AAPL",)), future, old, inside])
    worker = run_worker()
    assert row_counts(db) == {"trades": 6, "quotes": 25}  # 5 + the six-day-old trade
    assert worker.stats.untimely == 2 == worker.stats.dead_letters
    reasons = {letter.stream: letter.reason for letter in deadletter.list_dead_letters(r, keys)}
    assert reasons[keys.trades("AAPL")].startswith("event time too far in the future")
    assert reasons[keys.quotes("AAPL")].startswith("event time too old")
    days = {name[-8:] for name in list_partitions(db)}
    assert days_of_us(inside.ts_us) in days  # six days old: a row, and its partition
    assert days_of_us(future.ts_us) not in days and days_of_us(old.ts_us) not in days
    assert pending_count(r, keys, ("AAPL",)) == 0


def days_of_us(ts_us: int) -> str:
    return us_to_datetime(ts_us).strftime("%Y%m%d")


# --- replaying never doubles a row -----------------------------------------------------------


def test_replay_skips_letters_already_persisted_and_keeps_those_it_cannot_replay(
        r: Any, keys: Keys, db: Any, database_url: str, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]],
        run_worker: Callable[..., PersistWorker]) -> None:
    class CrashAfterCommit(EventSink):
        def write(self, *args: Any, **kwargs: Any) -> Any:
            super().write(*args, **kwargs)
            raise SystemExit("crash between COMMIT and XACK")

    committed = Trade("AAPL", BASE_TS_US, 10.0, 1.0, "test")  # no venue id: only the key
    publish(r, keys, [committed])
    crashing = PersistWorker(r, CrashAfterCommit(database_url), GroupConsumer(r, keys, "w1"),
                             fast_settings(), burst=True)
    with pytest.raises(SystemExit):
        crashing.run(install_signals=False)
    assert row_counts(db)["trades"] == 1
    # Redelivered past the limit: dead-lettered, though its row is committed.
    with db.cursor() as cur:
        cur.execute("ALTER TABLE trades ADD CONSTRAINT price_cap CHECK (price < 1000)")
    refused = Trade("AAPL", BASE_TS_US + 1, 5000.0, 1.0, "test")
    too_old = Trade("AAPL", now_ms() * 1000 - 8 * DAY_US, 10.0, 1.0, "test")
    publish(r, keys, [refused, too_old])
    run_worker("w2", claim_idle_ms=0, max_deliveries=1)
    reasons = sorted(letter.reason.split(":")[0].split(" (")[0]
                     for letter in deadletter.list_dead_letters(r, keys))
    assert reasons == ["delivered 2 times without being persisted", "event time too old",
                       "refused by postgresql"]
    with db.cursor() as cur:
        cur.execute("ALTER TABLE trades DROP CONSTRAINT price_cap")
    replay = spawn(["dlq", "replay", "--all"], env=pipeline_env)
    out = replay.communicate(timeout=60)[0].decode()
    assert replay.returncode == 0, out
    assert "1 dead letter(s) re-queued, 1 already persisted (deleted), 1 kept" in out, out
    assert "already persisted" in out and "event time too old" in out
    run_worker("w3")
    with db.cursor() as cur:  # each trade once, each counted once in its bar
        cur.execute("SELECT price FROM trades ORDER BY price")
        assert cur.fetchall() == [(10.0,), (5000.0,)]
        cur.execute("SELECT sum(trade_count) FROM bars_1m")
        assert cur.fetchone() == (2,)
    (kept,) = deadletter.list_dead_letters(r, keys)
    assert kept.reason.startswith("event time too old")


def test_replay_planning_is_pure_and_checks_by_the_original_entry_id(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    trades = make_trades(3, symbols=("AAPL",))
    ids = publish(r, keys, trades)
    run_worker()
    stream = keys.trades("AAPL")

    def letter(entry_id: str, trade: Trade, n: int) -> deadletter.DeadLetter:
        return deadletter.DeadLetter(f"{n}-0", keys.shard("AAPL"), stream, entry_id,
                                     "delivered 6 times", 6, 0, "w",
                                     {b"t": codec.encode_trade(trade).encode()})

    # Same fields, another entry ID (a replay that was itself dead-lettered
    # before it got its row): not the stored row.
    letters = [letter(ids[0], trades[0], 1), letter(f"{int(ids[0].split('-')[0]) + 5}-0",
                                                    trades[0], 2),
               deadletter.DeadLetter("3-0", keys.shard("AAPL"), stream, "9-9", "bad", 0, 0, "w",
                                     {b"t": b"garbage"})]
    found = deadletter.persisted_letters(db, keys, letters)
    assert found == {"1-0"}
    plan = deadletter.plan_replay(keys, letters, found, now_ms=now_ms())
    assert [x.dlq_id for x in plan.persisted] == ["1-0"]
    assert [x.dlq_id for x in plan.replay] == ["2-0", "3-0"] and plan.kept == []
