"""Issue 15's "done when", on separate role processes: ``pricepipe publish
--source binance-ws`` (and ``coinbase-ws``) against a fake venue that skips trade ids and drops
its connection, ``pricepipe persist`` and ``pricepipe ws`` running, and a
websocket client subscribed to the symbol's trades and to the ``status``
channel before the feed starts. PostgreSQL ends with exactly the trades the
venue served (by venue trade id, each once), the client received exactly
those live (the repaired ones included, in trade-id order, none twice), and
the status events it received tell the story in order: connected, gap
detected, gap repaired, disconnected, connected, gap detected (what the
reconnect missed), gap repaired, and the stop. ``GET /v1/feeds`` (the API
as a process too) then shows the feed stopped, with its counts."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from websockets.sync.client import connect

from pricepipe import streams
from pricepipe.embedded import free_port
from pricepipe.keys import Keys
from tests.helpers import wait_http, wait_until
from tests.publisher.fake_upstream import FakeUpstream
from tests.publisher.fake_venue import FakeVenue

pytestmark = pytest.mark.timeout(240)

Spawn = Callable[..., subprocess.Popen[bytes]]
#: Per venue: the venue's symbol, the local (venue-qualified) one.
SYMBOLS = {"binance": ("BTCUSDT", "BINANCE:BTCUSDT"), "coinbase": ("BTC-USD", "COINBASE:BTC-USD")}


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream(slow_s=0.4, timeout_s=0.8).start()
    yield server
    server.close()


@pytest.fixture(params=["binance", "coinbase"])
def venue(request: pytest.FixtureRequest, fake: FakeUpstream) -> Iterator[FakeVenue]:
    server = FakeVenue(request.param, fake).start()
    yield server
    server.close()


def served(fake: FakeUpstream, symbol: str) -> list[int]:
    with fake.lock:
        return [t.trade_id for t in fake.trades[symbol]]


class Client(threading.Thread):
    """A websocket client subscribed to the symbol's trades and to the
    status channel (one request), keeping every frame it receives."""

    def __init__(self, url: str, symbol: str, feed: str) -> None:
        super().__init__(name="ws-client", daemon=True)
        self.url, self.symbol, self.feed = url, symbol, feed
        self.frames: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=10) as ws:
                assert "status" in orjson.loads(ws.recv(timeout=10))["channels"]
                ws.send(orjson.dumps({"op": "subscribe", "symbols": [self.symbol],
                                      "channels": ["trades", "status"]}).decode())
                while not self.halt.is_set():
                    try:
                        msg = orjson.loads(ws.recv(timeout=0.2))
                    except TimeoutError:
                        continue
                    self.frames.append(msg)
                    if msg["type"] == "subscribed":
                        self.subscribed.set()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def entries(self, kind: str) -> list[dict[str, Any]]:
        return [e for msg in list(self.frames) if msg["type"] == kind for e in msg[kind]]

    def trade_ids(self) -> list[int]:
        return [int(t["trade_id"]) for t in self.entries("trades")]

    def story(self) -> list[str]:
        return [e["kind"] for e in self.entries("status") if e["feed"] == self.feed]


def in_order(story: list[str], *kinds: str) -> bool:
    it = iter(story)
    return all(kind in it for kind in kinds)


def start(spawn: Spawn, tmp_path: Path, name: str, args: list[str], env: dict[str, str]
          ) -> subprocess.Popen[bytes]:
    """``pricepipe <args>`` writing to ``<name>.log``: a long-running process's
    output in a pipe nobody reads would fill it up and block the process."""
    with (tmp_path / f"{name}.log").open("wb") as out:
        return spawn(args, env=env, stdout=out)


def test_a_dropping_skipping_venue_ends_as_exactly_its_trades_in_postgresql_and_on_the_ws(
        spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys, db: Any,
        venue: FakeVenue, fake: FakeUpstream, tmp_path: Path) -> None:
    SYMBOL, LOCAL = SYMBOLS[venue.kind]
    SOURCE, prefix = f"{venue.kind}-ws", f"PRICEPIPE_{venue.kind.upper()}_"
    env = {**pipeline_env, f"{prefix}WS_URL": venue.url,
           f"{prefix}BASE_URL": fake.url, "PRICEPIPE_FEED_RECONNECT_BASE_S": "0.05",
           "PRICEPIPE_FEED_RECONNECT_CAP_S": "0.3", "PRICEPIPE_FEED_STATE_INTERVAL_S": "0.2",
           "PRICEPIPE_POLL_RETRIES": "1", "PRICEPIPE_POLL_BACKOFF_FACTOR_S": "0.01"}
    ws_port, api_port = free_port(), free_port()
    ws = start(spawn, tmp_path, "ws", ["ws", "--port", str(ws_port)], env)
    persist = start(spawn, tmp_path, "persist", ["persist"], env)
    api = start(spawn, tmp_path, "api", ["api", "--port", str(api_port)], env)
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws)
    wait_http(f"http://127.0.0.1:{api_port}/healthz", api)
    # The websocket server refuses symbols nobody registered; the feed
    # registers its own, but this client subscribes before the feed starts.
    streams.register_symbols(r, keys, [LOCAL])
    client = Client(f"ws://127.0.0.1:{ws_port}/ws", LOCAL, SOURCE)
    client.start()
    try:
        assert client.subscribed.wait(30), client.error
        feed = start(spawn, tmp_path, "publish", ["publish", "--source", SOURCE, "--symbols",
                                                  SYMBOL, "--metrics-port", "0"], env)
        wait_until(venue.subscribed, timeout_s=60, proc=feed)
        venue.quote(SYMBOL, 99.5, 100.5)
        for i in range(5):
            venue.trade(SYMBOL, 100.0 + i, repeat=2 if i == 2 else 1)  # one sent twice
        skipped = [venue.trade(SYMBOL, 110.0 + i, deliver=False) for i in range(2)]
        venue.trade(SYMBOL, 120.0)
        wait_until(lambda: len(client.trade_ids()) == 8, timeout_s=60, proc=feed)
        venue.drop()  # no close frame; trades go on while the feed is away
        away = [venue.trade(SYMBOL, 130.0 + i, deliver=False) for i in range(3)]
        wait_until(lambda: venue.accepted >= 2 and venue.subscribed(), timeout_s=60, proc=feed)
        venue.trade(SYMBOL, 140.0)
        venue.quote(SYMBOL, 139.5, 140.5)
        want = served(fake, SYMBOL)
        wait_until(lambda: client.trade_ids() == want, timeout_s=60, proc=feed)

        def persisted() -> list[int]:
            with db.cursor() as cur:
                cur.execute("SELECT trade_id FROM trades WHERE symbol = %s"
                            " ORDER BY trade_id::bigint", (LOCAL,))
                return [int(row[0]) for row in cur.fetchall()]

        wait_until(lambda: len(persisted()) >= len(want), timeout_s=60, proc=persist)
        feed.send_signal(signal.SIGTERM)
        assert feed.wait(60) == 0, (tmp_path / "publish.log").read_text()
        wait_until(lambda: client.story()[-1:] == ["disconnected"], timeout_s=30, proc=ws)
        feeds = httpx.get(f"http://127.0.0.1:{api_port}/v1/feeds", timeout=10).json()["feeds"]
        time.sleep(0.5)  # anything still on its way to the client arrives; none must
    finally:
        client.halt.set()
        client.join(30)
    assert client.error is None, client.error
    for proc, name in ((persist, "persist"), (ws, "ws"), (api, "api")):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / f"{name}.log").read_text()

    # PostgreSQL: exactly the venue's trades, each once.
    assert persisted() == want and len(want) == 12
    with db.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT trade_id), min(source), max(source)"
                    " FROM trades WHERE symbol = %s", (LOCAL,))
        assert cur.fetchone() == (len(want), len(want), SOURCE, SOURCE)
    # The websocket: exactly those, live, in trade-id order, the repaired ones included.
    trade_frames = [m for m in client.frames if m["type"] == "trades"]
    assert all(not m.get("conflated") and not m.get("replay") for m in trade_frames)
    assert client.trade_ids() == want
    assert set(skipped) | set(away) <= set(client.trade_ids())
    assert {t["symbol"] for t in client.entries("trades")} == {LOCAL}
    # The status stream tells the story, and the client got all of it, in order.
    statuses = client.entries("status")
    stream_ids = [entry_id.decode() for entry_id, _ in r.xrange(keys.feed_status())]
    assert [e["id"] for e in statuses] == stream_ids
    story = client.story()
    assert in_order(story, "connected", "gap_detected", "gap_repaired", "disconnected",
                    "connected", "gap_detected", "gap_repaired", "disconnected"), story
    assert "gap_unrepairable" not in story
    gaps = [(e["first_id"], e["last_id"]) for e in statuses if e["kind"] == "gap_detected"]
    assert gaps[0] == (skipped[0], skipped[-1])
    assert gaps[1][0] == away[0] and (gaps[1][1] or 0) >= away[-1]
    repaired = [e for e in statuses if e["kind"] == "gap_repaired"]
    assert repaired[0]["trades"] == len(skipped)
    # Coinbase sends the last match on subscribing: the end of that gap may come live.
    # And the repair's REST page may already hold the trade sent live after the
    # reconnect (then it is published by the repair, and the live copy is the
    # duplicate dropped): at most the away trades and that one.
    assert 1 <= repaired[1]["trades"] <= len(away) + 1
    drops = [e["reason"] for e in statuses if e["kind"] == "disconnected"]
    assert drops[0] in ("closed", "error") and drops[-1] == "stop"
    # And the API agrees: the feed stopped, every trade counted.
    (state,) = [f for f in feeds if f["feed"] == SOURCE]
    assert state["state"] == "stopped" and state["open_gaps"] == []
    assert state["counts"]["trades"] == len(want) and state["counts"]["reconnects"] == 1
    assert state["counts"]["gaps_repaired"] == 2 and state["counts"]["duplicates"] >= 1
