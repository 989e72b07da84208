"""Poison entries: dead-lettered with a reason, acknowledged, never blocking
their batch; listed and replayed through the CLI."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import orjson
from pricepipe.workers import deadletter
from pricepipe.workers.batch import decode_entries
from pricepipe.workers.persister import PersistWorker

from pricepipe import codec, streams
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.tick import Tick

from .helpers import BASE_TS_US, make_ticks, pending_count, publish, row_count

BAD_ENTRIES: list[tuple[dict[bytes, bytes], str]] = [
    ({b"sym": b"AAPL", b"ts": b"yesterday", b"px": b"1.0", b"src": b"x"}, "unreadable"),
    ({b"sym": b"AAPL", b"ts": str(BASE_TS_US).encode(), b"src": b"x"}, "lacks field"),
    ({b"sym": b"AAPL", b"ts": str(BASE_TS_US).encode(), b"px": b"-3", b"src": b"x"},
     "finite and positive"),
    ({b"sym": b"AAPL", b"ts": b"12", b"px": b"1.0", b"src": b"x"}, "outside"),
    ({b"sym": b"MSFT", b"ts": str(BASE_TS_US).encode(), b"px": b"1.0", b"src": b"x"},
     "does not belong"),
    ({b"garbage": b"\xff\xfe"}, "lacks field"),
]


def test_decoding_splits_rows_from_rejects_with_reasons() -> None:
    keys = Keys("pp", 4)
    stream = keys.stream("AAPL")
    good = {b"sym": b"AAPL", b"ts": str(BASE_TS_US).encode(), b"px": b"2.5", b"src": b"x"}
    entries = [("1-0", good), *[(f"2-{i}", f) for i, (f, _) in enumerate(BAD_ENTRIES)],
               ("3-0", {})]
    batch = decode_entries(keys, stream, entries)
    assert [row[0:3] for row in batch.rows] == [("AAPL", BASE_TS_US, 2.5)]
    assert [rej.entry_id for rej in batch.rejects] == [f"2-{i}" for i in range(len(BAD_ENTRIES))]
    for rej, (fields, want) in zip(batch.rejects, BAD_ENTRIES, strict=True):
        assert want in rej.reason and rej.fields == fields
    assert batch.vanished == [(stream, "3-0")]
    assert sorted(batch.ack_ids()[stream]) == sorted(["1-0", "3-0"] +
                                                     [f"2-{i}" for i in range(6)])


def test_dead_letter_encoding_round_trips() -> None:
    fields = {b"sym": b"AAPL", b"px": b"\xff"}
    encoded = deadletter.encode("pp:{s1}:ticks:AAPL", "5-1", fields, reason="bad px",
                                deliveries=3, failed_ms=42, consumer="w1")
    raw = {k: v if isinstance(v, bytes) else str(v).encode() for k, v in encoded.items()}
    letter = deadletter.decode(b"9-0", 1, raw)
    assert (letter.stream, letter.entry_id, letter.reason, letter.deliveries,
            letter.failed_ms, letter.consumer, letter.fields) == (
        "pp:{s1}:ticks:AAPL", "5-1", "bad px", 3, 42, "w1", fields)


def _append_bad(r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["AAPL"])
    for fields, _ in BAD_ENTRIES:
        r.xadd(keys.stream("AAPL"), fields)


def test_bad_entries_go_to_dead_letters_and_the_rest_is_persisted(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    good = make_ticks(40, symbols=("AAPL",))
    publish(r, keys, good[:20])
    _append_bad(r, keys)
    publish(r, keys, good[20:])
    worker = run_worker(batch_size=1000)
    assert row_count(db) == 40
    assert worker.stats.dead_letters == len(BAD_ENTRIES)
    assert pending_count(r, keys, ("AAPL",)) == 0
    letters = deadletter.list_dead_letters(r, keys)
    assert len(letters) == len(BAD_ENTRIES) == deadletter.count(r, keys)
    for letter, (fields, reason) in zip(letters, BAD_ENTRIES, strict=True):
        assert letter.stream == keys.stream("AAPL")
        assert letter.fields == fields
        assert reason in letter.reason


def test_entry_delivered_too_often_is_dead_lettered(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_ticks(3, symbols=("AAPL",)))
    stream = keys.stream("AAPL")
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
    assert row_count(db) == 2 and pending_count(r, keys, ("AAPL",)) == 0


def test_a_row_postgresql_refuses_is_isolated_and_dead_lettered(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    # A constraint added by an operator: PostgreSQL refuses prices above 1000.
    with db.cursor() as cur:
        cur.execute("ALTER TABLE ticks ADD CONSTRAINT price_cap CHECK (price < 1000)")
    ticks = make_ticks(30, symbols=("AAPL",))
    ticks[17] = Tick("AAPL", ticks[17].ts_us, 5000.0, 1.0, "test")
    publish(r, keys, ticks)
    worker = run_worker(batch_size=1000)
    assert row_count(db) == 29
    (letter,) = deadletter.list_dead_letters(r, keys)
    assert "refused by postgresql" in letter.reason and "price_cap" in letter.reason
    assert codec.decode_fields(letter.fields) == ticks[17]
    assert worker.stats.dead_letters == 1 and pending_count(r, keys, ("AAPL",)) == 0


def test_dlq_cli_lists_and_replays_after_a_fix(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]],
        run_worker: Callable[..., PersistWorker]) -> None:
    # A constraint too strict for real data: PostgreSQL refuses one tick...
    with db.cursor() as cur:
        cur.execute("ALTER TABLE ticks ADD CONSTRAINT price_cap CHECK (price < 1000)")
    publish(r, keys, [Tick("AAPL", BASE_TS_US, 1500.25, None, "test")])
    run_worker()
    assert row_count(db) == 0
    listing = spawn(["dlq", "list", "--json"], env=pipeline_env)
    out = listing.communicate(timeout=60)[0]
    assert listing.returncode == 0, out
    (shown,) = orjson.loads(out.splitlines()[-1])
    assert shown["fields"]["t"].split()[:3] == ["AAPL", str(BASE_TS_US), "1500.25"]
    assert "price_cap" in shown["reason"]
    # ...the fix (drop the constraint), then the replay puts it back in its stream.
    with db.cursor() as cur:
        cur.execute("ALTER TABLE ticks DROP CONSTRAINT price_cap")
    replay = spawn(["dlq", "replay", "--all"], env=pipeline_env)
    out = replay.communicate(timeout=60)[0]
    assert replay.returncode == 0 and b"1 dead letter(s) re-queued" in out, out
    assert deadletter.count(r, keys) == 0
    run_worker()
    with db.cursor() as cur:
        cur.execute("SELECT symbol, price FROM ticks")
        assert cur.fetchall() == [("AAPL", 1500.25)]
