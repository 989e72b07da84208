"""What readers show of the feeds (pure, core): the staleness rule of
:func:`pricepipe.feedstatus.feed_view` and the open gaps of
:func:`pricepipe.feedstatus.open_gaps`, which ``GET /v1/feeds`` and the
websocket's status snapshot both use."""

from __future__ import annotations

from pricepipe.feedstatus import (
    STALE_NO_UPDATE,
    STALE_REPORTED,
    FeedEvent,
    FeedSnapshot,
    FeedState,
    FeedStatus,
    decode_state,
    encode_state,
    encode_status,
    feed_view,
    feed_views,
    open_gaps,
)

NOW_US = 1_767_323_045_000_000
S_US = 1_000_000


def state(feed: str = "binance-ws", kind: FeedState = FeedState.CONNECTED, *,
          age_s: float | None = 0.5) -> dict[str, object]:
    snap = FeedSnapshot(feed, feed, "binance", ["BINANCE:BTCUSDT"], 1, state=kind,
                        since_us=NOW_US - 60 * S_US, last_message_us=NOW_US - S_US)
    snap.updated_us = None if age_s is None else NOW_US - int(age_s * S_US)
    return decode_state(encode_state(snap))


def test_a_feed_that_stopped_rewriting_its_state_is_shown_stale() -> None:
    fresh = feed_view(state(age_s=9.9), now_us=NOW_US, stale_after_s=10)
    assert (fresh["state"], fresh["reported_state"], fresh["stale_reason"]) == (
        "connected", "connected", None)
    assert fresh["age_s"] == 9.9 and fresh["updated"] == "2026-01-02T03:03:55.100000Z"
    assert fresh["last_message"] == "2026-01-02T03:04:04.000000Z"
    assert fresh["counts"]["messages"] == 0 and fresh["open_gaps"] == []
    for kind in (FeedState.CONNECTED, FeedState.DISCONNECTED, FeedState.PARTIAL,
                 FeedState.CONNECTING):
        old = feed_view(state(kind=kind, age_s=10.1), now_us=NOW_US, stale_after_s=10)
        assert (old["state"], old["reported_state"], old["stale_reason"]) == (
            "stale", str(kind), STALE_NO_UPDATE)
    never = feed_view(state(age_s=None), now_us=NOW_US, stale_after_s=10)
    assert never["state"] == "stale" and never["age_s"] is None and never["updated"] is None
    # A feed that stopped cleanly is not expected to write: it stays stopped.
    stopped = feed_view(state(kind=FeedState.STOPPED, age_s=3600), now_us=NOW_US)
    assert stopped["state"] == "stopped" and stopped["stale_reason"] is None
    said = feed_view(state(kind=FeedState.STALE), now_us=NOW_US)
    assert said["state"] == "stale" and said["stale_reason"] == STALE_REPORTED


def ev(kind: FeedEvent, *, feed: str = "binance-ws", symbol: str | None = "BINANCE:BTCUSDT",
       first: int | None = None, last: int | None = None, reason: str | None = None,
       n: int = 0) -> tuple[str, FeedStatus]:
    return (f"{n}-0", FeedStatus(feed, kind, NOW_US + n, symbol, first, last, reason=reason))


def test_open_gaps_are_those_whose_last_gap_event_is_a_detection() -> None:
    D, R, U = FeedEvent.GAP_DETECTED, FeedEvent.GAP_REPAIRED, FeedEvent.GAP_UNREPAIRABLE
    assert open_gaps([ev(D, first=5, last=7, n=1), ev(R, first=5, last=7, n=2)]) == {}
    # A partial repair: lost ids, then the rest repaired.
    assert open_gaps([ev(D, first=5, last=9, n=1), ev(U, first=5, last=6, n=2),
                      ev(R, first=5, last=9, n=3)]) == {}
    got = open_gaps([ev(D, first=5, last=7, n=1), ev(R, first=5, last=7, n=2),
                     ev(D, first=20, last=None, n=3),
                     ev(D, symbol="BINANCE:ETHUSDT", first=3, last=4, n=4),
                     ev(D, feed="coinbase-ws", symbol="COINBASE:BTC-USD", first=1, last=1, n=5),
                     ev(R, feed="coinbase-ws", symbol="COINBASE:BTC-USD", first=1, last=1,
                        n=6)])
    assert got == {"binance-ws": [
        {"symbol": "BINANCE:BTCUSDT", "first_id": 20, "last_id": None, "since_us": NOW_US + 3,
         "since": "2026-01-02T03:04:05.000003Z", "id": "3-0"},
        {"symbol": "BINANCE:ETHUSDT", "first_id": 3, "last_id": 4, "since_us": NOW_US + 4,
         "since": "2026-01-02T03:04:05.000004Z", "id": "4-0"}]}
    # A stop drops the repairs in flight (the next start repairs from the stream).
    stopped = open_gaps([ev(D, first=5, last=7, n=1),
                         ev(FeedEvent.DISCONNECTED, symbol=None, reason="closed", n=2)])
    assert list(stopped) == ["binance-ws"]
    assert open_gaps([ev(D, first=5, last=7, n=1),
                      ev(FeedEvent.DISCONNECTED, symbol=None, reason="stop", n=2)]) == {}


def test_feed_views_from_redis_replies_skip_what_cannot_be_read() -> None:
    field, value = encode_status(ev(FeedEvent.GAP_DETECTED, first=5, last=6)[1])
    states = {b"binance-ws": encode_state(FeedSnapshot("binance-ws", "binance-ws", "binance",
                                                       [], 1, updated_us=NOW_US)),
              b"aaa": b"{broken", b"bbb": b'{"feed": "bbb", "state": "nonsense", "counts": {}}'}
    recent = [(b"1-0", {field: value}), (b"2-0", {b"s": b"not json"}), (b"3-0", [field, value])]
    views, errors = feed_views(states, recent, now_us=NOW_US)
    assert [v["feed"] for v in views] == ["binance-ws"] and sorted(errors) == ["aaa", "bbb"]
    # Both readable events name the same gap: the last detection is the open one.
    assert [g["id"] for g in views[0]["open_gaps"]] == ["3-0"]
    assert views[0]["state"] == "connecting" and views[0]["age_s"] == 0.0
