"""``GET /v1/feeds`` and ``GET /v1/feeds/events`` on a real Redis, the
status written as the feeds write it (an event and the feed's new state in
one ``MULTI``): each feed's state, last message time, counts and open gaps,
a feed that stopped writing shown stale by age, the status stream paged by
entry ID, the same keys and limits as every /v1 route, and a 503 that says
Redis is down instead of a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from pricepipe.api.app import create_app
from pricepipe.api.settings import ApiSettings
from pricepipe.clock import now_us
from pricepipe.config import DatabaseSettings, RedisSettings
from pricepipe.embedded import RedisServer
from pricepipe.feedstatus import (
    FeedEvent,
    FeedSnapshot,
    FeedState,
    FeedStatus,
    decode_status,
    encode_state,
    encode_status,
    status_dict,
)
from pricepipe.keys import Keys

S_US = 1_000_000


def feed(name: str, state: FeedState = FeedState.CONNECTED, *, age_s: float = 0.0
         ) -> FeedSnapshot:
    snap = FeedSnapshot(name, name, name.split("-")[0], [f"{name.split('-')[0].upper()}:X"], 1)
    snap.state = state
    at = now_us() - int(age_s * S_US)
    snap.since_us, snap.last_message_us, snap.updated_us = at - 5 * S_US, at - S_US, at
    snap.connected = int(state is FeedState.CONNECTED)
    return snap


def write(r: Any, keys: Keys, snap: FeedSnapshot, kind: FeedEvent | None = None,
          **fields: Any) -> str | None:
    """As a feed writes: the event (if any) and its state after it, in one MULTI."""
    pipe = r.pipeline(transaction=True)
    if kind is not None:
        status = FeedStatus(snap.feed, kind, now_us(), **fields)
        field, value = encode_status(status)
        pipe.xadd(keys.feed_status(), {field: value})
    pipe.hset(keys.feed_states(), snap.feed, encode_state(snap))
    replies = pipe.execute()
    return replies[0].decode() if kind is not None else None


def test_feeds_show_state_last_message_counts_and_open_gaps(
        client: TestClient, r: Any, keys: Keys) -> None:
    empty = client.get("/v1/feeds")
    assert empty.status_code == 200 and empty.json()["feeds"] == []
    live = feed("binance-ws")
    live.counts.update(messages=120, trades=40, quotes=78, gaps_detected=2, gaps_repaired=1,
                       trades_repaired=3)
    write(r, keys, live, FeedEvent.CONNECTED, connection=0)
    write(r, keys, live, FeedEvent.GAP_DETECTED, symbol="BINANCE:X", first_id=5, last_id=7)
    write(r, keys, live, FeedEvent.GAP_REPAIRED, symbol="BINANCE:X", first_id=5, last_id=7,
          trades=3)
    still = write(r, keys, live, FeedEvent.GAP_DETECTED, symbol="BINANCE:X", first_id=20,
                  last_id=None)
    # A feed killed while connected: its state says so, but it is 60 s old.
    write(r, keys, feed("coinbase-ws", age_s=60), FeedEvent.CONNECTED, connection=0)
    # A feed that stopped cleanly an hour ago stays stopped.
    write(r, keys, feed("old-ws", FeedState.STOPPED, age_s=3600))
    # One that noticed silence itself.
    write(r, keys, feed("quiet-ws", FeedState.STALE), FeedEvent.STALE, reason="quotes")
    r.hset(keys.feed_states(), "broken-ws", b"[1, 2]")

    body = client.get("/v1/feeds").json()
    by_name = {f["feed"]: f for f in body["feeds"]}
    assert [f["feed"] for f in body["feeds"]] == sorted(by_name)
    assert sorted(by_name) == ["binance-ws", "coinbase-ws", "old-ws", "quiet-ws"]
    assert set(body["errors"]) == {"broken-ws"}
    assert body["stale_after_s"] == 10.0 and body["now_us"] >= live.updated_us
    got = by_name["binance-ws"]
    assert (got["state"], got["reported_state"], got["stale_reason"]) == (
        "connected", "connected", None)
    assert got["venue"] == "binance" and got["symbols"] == ["BINANCE:X"]
    assert got["last_message_us"] == live.last_message_us
    assert got["last_message"].endswith("Z") and 0 <= got["age_s"] < 10
    assert got["counts"]["trades"] == 40 and got["counts"]["gaps_repaired"] == 1
    assert [(g["symbol"], g["first_id"], g["last_id"], g["id"]) for g in got["open_gaps"]] == [
        ("BINANCE:X", 20, None, still)]
    assert (by_name["coinbase-ws"]["state"], by_name["coinbase-ws"]["stale_reason"]) == (
        "stale", "no_update")
    assert by_name["coinbase-ws"]["reported_state"] == "connected"
    assert by_name["coinbase-ws"]["age_s"] >= 60
    assert by_name["old-ws"]["state"] == "stopped"
    assert (by_name["quiet-ws"]["state"], by_name["quiet-ws"]["stale_reason"]) == (
        "stale", "reported")


def test_the_staleness_rule_follows_its_setting(
        make_client: Callable[..., TestClient], r: Any, keys: Keys) -> None:
    write(r, keys, feed("binance-ws", age_s=3))
    strict = make_client(ApiSettings(rate_limit=None, key_rate_limit=None,
                                     feed_stale_after_s=1.0))
    lenient = make_client(ApiSettings(rate_limit=None, key_rate_limit=None))
    assert strict.get("/v1/feeds").json()["feeds"][0]["state"] == "stale"
    assert lenient.get("/v1/feeds").json()["feeds"][0]["state"] == "connected"


def test_feed_events_are_paged_by_entry_id(client: TestClient, r: Any, keys: Keys) -> None:
    none = client.get("/v1/feeds/events").json()
    assert none == {"after": None, "count": 0, "more": False, "next_after": None,
                    "missed": None, "oldest_id": None, "events": []}
    snap = feed("binance-ws")
    ids = [write(r, keys, snap, FeedEvent.CONNECTED, connection=i) for i in range(7)]
    # Without after: the newest, oldest first.
    newest = client.get("/v1/feeds/events", params={"limit": 3}).json()
    assert [e["id"] for e in newest["events"]] == ids[-3:]
    assert newest["next_after"] == ids[-1] and newest["oldest_id"] == ids[0]
    # From the start, page by page.
    seen: list[str] = []
    after = "0-0"
    while True:
        page = client.get("/v1/feeds/events", params={"after": after, "limit": 3}).json()
        assert page["missed"] is False and page["count"] == len(page["events"])
        seen += [e["id"] for e in page["events"]]
        after = page["next_after"]
        if not page["more"]:
            break
    assert seen == ids and after == ids[-1]
    page = client.get("/v1/feeds/events", params={"after": ids[2], "limit": 1}).json()
    first = page["events"][0]
    stored = r.xrange(keys.feed_status(), min=ids[3], max=ids[3])[0][1]
    assert first["id"] == ids[3] and first["kind"] == "connected" and first["connection"] == 3
    assert first == status_dict(decode_status(stored), ids[3])
    # Trimmed (as the feeds trim it: by length): a cursor before what is left missed events.
    r.xtrim(keys.feed_status(), maxlen=3, approximate=False)
    assert client.get("/v1/feeds/events", params={"after": ids[1]}).json()["missed"] is True
    kept = client.get("/v1/feeds/events", params={"after": ids[4]}).json()
    assert kept["missed"] is False and [e["id"] for e in kept["events"]] == ids[5:]
    # Nothing new: next_after stays where it was, so a poller can pass it back.
    idle = client.get("/v1/feeds/events", params={"after": ids[-1]}).json()
    assert idle["count"] == 0 and idle["next_after"] == ids[-1] and idle["more"] is False


@pytest.mark.parametrize("query", [{"after": "yesterday"}, {"after": "1-2-3"},
                                   {"limit": "0"}, {"limit": "1001"}])
def test_bad_parameters_are_422(client: TestClient, query: dict[str, str]) -> None:
    response = client.get("/v1/feeds/events", params=query)
    assert response.status_code == 422, response.text
    assert response.json()["error"]


def test_feeds_need_the_api_key_like_every_v1_route(
        make_client: Callable[..., TestClient]) -> None:
    keyed = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, api_keys=("k1",),
                                    api_key_required=True))
    for path in ("/v1/feeds", "/v1/feeds/events"):
        assert keyed.get(path).status_code == 401
        assert keyed.get(path, headers={"X-API-Key": "k1"}).status_code == 200
    limited = make_client(ApiSettings(rate_limit="2/minute", key_rate_limit=None))
    codes = [limited.get("/v1/feeds").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_redis_down_is_a_503_saying_so(
        make_redis_server: Callable[..., RedisServer], db_settings: DatabaseSettings) -> None:
    server = make_redis_server()
    settings = RedisSettings(url=server.url, prefix="pp", shards=4, socket_timeout_s=1)
    # With the rate limiter on too: it fails open when Redis is away.
    app = create_app(ApiSettings(key_rate_limit=None), settings, db_settings)
    with TestClient(app) as client:
        assert client.get("/v1/feeds").status_code == 200
        server.stop()
        for path in ("/v1/feeds", "/v1/feeds/events"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert response.json()["error"] in ("feed status unavailable: redis is unreachable",
                                                "feed events unavailable: redis is unreachable")
            assert response.headers["Retry-After"] == "1"
        server.start()
        back = redis.Redis.from_url(server.url)
        try:
            back.ping()
        finally:
            back.close()
        assert client.get("/v1/feeds").status_code == 200
