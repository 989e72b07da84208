"""Pure reader bookkeeping: cursors over XREAD / XREADGROUP replies and
replay pacing, without any server."""

from __future__ import annotations

from pricepipe import codec
from pricepipe.keys import Keys
from pricepipe.tick import Tick
from subscriber.delivery import GroupCursor, LatestCursor, Pacer

TS = 1_767_323_045_000_000
KEYS = Keys("pp", 4)


def entry(i: int, symbol: str = "AAPL") -> tuple[bytes, dict[bytes, bytes]]:
    fields = {k: str(v).encode() for k, v in codec.encode_fields(
        Tick(symbol, TS + i, 10.0 + i)).items()}
    return f"{100 + i}-0".encode(), fields


def test_latest_cursor_advances_and_skips_bad_entries() -> None:
    stream = KEYS.stream("AAPL")
    cursor = LatestCursor(KEYS, {"AAPL": "0-0"})
    assert cursor.streams() == {stream: "0-0"}
    bad = (b"102-0", {b"sym": b"AAPL"})
    got = cursor.take([(stream.encode(), [entry(0), entry(1), bad])])
    assert [d.entry_id for d in got] == ["100-0", "101-0"]
    assert not got[0].redelivered and got[1].tick.price == 11.0
    # The bad entry is skipped, but the cursor moves past it.
    assert cursor.streams() == {stream: "102-0"}
    assert cursor.take(None) == []


def test_group_cursor_reads_own_pending_first_then_new() -> None:
    a, b = KEYS.stream("AAPL"), KEYS.stream("MSFT")
    cursor = GroupCursor(KEYS, ["AAPL", "MSFT"])
    assert cursor.recovering and cursor.streams() == {a: "0", b: "0"}
    got = cursor.take([(a.encode(), [entry(0), (b"101-0", None)]), (b.encode(), [])])
    assert [(d.entry_id, d.redelivered) for d in got] == [("100-0", True)]
    assert cursor.discard == [(a, "101-0")]  # trimmed while pending: acknowledge it
    assert cursor.streams() == {a: "101-0"}
    assert cursor.take([(a.encode(), [])]) == []
    assert not cursor.recovering and cursor.streams() == {a: ">", b: ">"}
    new = cursor.take([(b.encode(), [entry(5, "MSFT")])])
    assert [(d.symbol, d.redelivered) for d in new] == [("MSFT", False)]
    cursor.restart()
    assert cursor.streams() == {a: "0", b: "0"}


def test_pacer_maps_event_time_to_wall_time() -> None:
    pacer = Pacer(10.0)
    assert pacer.delay_s(TS, now_s=50.0) == 0.0
    assert abs(pacer.delay_s(TS + 1_000_000, now_s=50.0) - 0.1) < 1e-9  # 1 s at 10x
    assert pacer.delay_s(TS + 1_000_000, now_s=50.5) == 0.0  # already late: no wait
    assert Pacer(None).delay_s(TS + 10**9, now_s=0.0) == 0.0
