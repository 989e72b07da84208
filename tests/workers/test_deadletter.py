"""Poison entries of either stream: dead-lettered with a reason, acknowledged,
never blocking their batch; listed and replayed through the CLI."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import orjson

from pricepipe import codec, streams
from pricepipe.events import Quote, Trade
from pricepipe.keys import PERSIST_GROUP, Channel, Keys
from pricepipe.workers import deadletter
from pricepipe.workers.batch import decode_entries
from pricepipe.workers.persister import PersistWorker

from .helpers import (
    BASE_TS_US,
    make_events,
    make_quotes,
    make_trades,
    pending_count,
    publish,
    row_count,
    row_counts,
)

TS = str(BASE_TS_US).encode()

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
