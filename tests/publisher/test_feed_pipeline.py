"""Done-when across roles: ``pricepipe publish --source binance-ws|coinbase-ws``
as a process, against a fake venue that skips trades and drops its
connection, ends with exactly the trades the venue served in PostgreSQL
(through a persist worker in burst mode), and the status stream tells the
story. The source registry refuses a second source on the same symbols."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from typing import Any

from pricepipe.feedstatus import FeedEvent
from pricepipe.keys import Keys
from pricepipe.sources import source_of

from ..helpers import wait_until
from .fake_upstream import FakeUpstream
from .fake_venue import FakeVenue
from .helpers import in_order, read_state, read_statuses, read_trades, status_story

Spawn = Callable[..., subprocess.Popen[bytes]]

SYMBOL = {"binance": "BTCUSDT", "coinbase": "BTC-USD"}
QUALIFIED = {"binance": "BINANCE:BTCUSDT", "coinbase": "COINBASE:BTC-USD"}


def feed_env(env: dict[str, str], venue: FakeVenue, fake: FakeUpstream) -> dict[str, str]:
    prefix = f"PRICEPIPE_{venue.kind.upper()}_"
    return {**env, f"{prefix}WS_URL": venue.url, f"{prefix}BASE_URL": fake.url,
            "PRICEPIPE_FEED_RECONNECT_BASE_S": "0.05", "PRICEPIPE_FEED_RECONNECT_CAP_S": "0.3",
            "PRICEPIPE_FEED_STATE_INTERVAL_S": "0.2", "PRICEPIPE_POLL_RETRIES": "1",
            "PRICEPIPE_POLL_BACKOFF_FACTOR_S": "0.01"}


def served(fake: FakeUpstream, symbol: str) -> list[int]:
    with fake.lock:
        return [t.trade_id for t in fake.trades[symbol]]


def test_a_dropping_skipping_venue_ends_as_exactly_its_trades_in_postgresql(
        spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys, db: Any,
        venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol, local = SYMBOL[venue.kind], QUALIFIED[venue.kind]
    source = f"{venue.kind}-ws"
    proc = spawn(["publish", "--source", source, "--symbols", symbol, "--metrics-port", "0"],
                 env=feed_env(pipeline_env, venue, fake))
    wait_until(venue.subscribed, timeout_s=60, proc=proc)
    venue.quote(symbol, 99.5, 100.5)
    for i in range(5):
        venue.trade(symbol, 100.0 + i, repeat=2 if i == 2 else 1)
    skipped = [venue.trade(symbol, 110.0 + i, deliver=False) for i in range(2)]
    venue.trade(symbol, 120.0)
    wait_until(lambda: len(read_trades(r, keys, local)) == 8, timeout_s=60, proc=proc)
    venue.drop()
    away = [venue.trade(symbol, 130.0 + i, deliver=False) for i in range(3)]
    wait_until(lambda: venue.accepted >= 2 and venue.subscribed(), timeout_s=60, proc=proc)
    venue.trade(symbol, 140.0)
    venue.quote(symbol, 139.5, 140.5)
    wait_until(lambda: len(read_trades(r, keys, local)) == len(served(fake, symbol)),
               timeout_s=60, proc=proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()

    persist = spawn(["persist", "--burst"], env=pipeline_env)
    out, _ = persist.communicate(timeout=120)
    assert persist.returncode == 0, out.decode()
    with db.cursor() as cur:
        cur.execute("SELECT trade_id, source, price FROM trades WHERE symbol = %s"
                    " ORDER BY trade_id::bigint", (local,))
        rows = cur.fetchall()
        cur.execute("SELECT count(*) FROM quotes WHERE symbol = %s", (local,))
        quotes = cur.fetchone()[0]
    assert [int(row[0]) for row in rows] == served(fake, symbol)  # exactly once each
    assert {row[1] for row in rows} == {source} and quotes == 2

    statuses = read_statuses(r, keys, source)
    story = status_story(statuses)
    assert in_order(story, "connected", "gap_detected", "gap_repaired", "disconnected",
                    "connected", "gap_detected", "gap_repaired", "disconnected"), story
    gaps = [(s.first_id, s.last_id) for s in statuses if s.kind is FeedEvent.GAP_DETECTED]
    assert gaps[0] == (skipped[0], skipped[-1])
    assert gaps[1][0] == away[0] and (gaps[1][1] or 0) >= away[-1]
    assert "gap_unrepairable" not in story
    assert statuses[-1].reason == "stop"
    state = read_state(r, keys, source)
    assert state is not None and state["state"] == "stopped"
    assert state["counts"]["trades"] == len(served(fake, symbol))
    assert source_of(r, keys, local) == source


def test_the_registry_refuses_a_second_source_unless_forced(
        spawn: Spawn, pipeline_env: dict[str, str], r: Any, keys: Keys, fake: FakeUpstream
) -> None:
    fake.set_market("BTCUSDT", 65000.0)
    env = {**pipeline_env, "PRICEPIPE_BINANCE_BASE_URL": fake.url}
    first = spawn(["publish", "--source", "binance", "--symbols", "BTCUSDT", "--rounds", "1"],
                  env=env)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 0, out.decode()
    assert source_of(r, keys, "BINANCE:BTCUSDT") == "binance"  # venue-qualified by default
    # The websocket feed's ids (aggregate trades) are not the poller's: refused.
    feed = spawn(["publish", "--source", "binance-ws", "--symbols", "BTCUSDT",
                  "--ws-url", "ws://127.0.0.1:9"], env=env)
    out, _ = feed.communicate(timeout=60)
    assert feed.returncode == 2 and b"BINANCE:BTCUSDT (from binance)" in out, out.decode()
    assert b"--force-source" in out
    # A plain mapping to another name is another symbol: allowed.
    other = spawn(["publish", "--source", "binance", "--symbols", "BTC-USD=BTCUSDT",
                   "--rounds", "1"], env=env)
    assert other.wait(timeout=60) == 0
    gbm = spawn(["publish", "--source", "gbm", "--symbols", "BTC-USD", "--count", "10"],
                env=env)
    out, _ = gbm.communicate(timeout=60)
    assert gbm.returncode == 2 and b"BTC-USD (from binance)" in out, out.decode()
    forced = spawn(["publish", "--source", "gbm", "--symbols", "BTC-USD", "--count", "10",
                    "--force-source"], env=env)
    out, _ = forced.communicate(timeout=60)
    assert forced.returncode == 0, out.decode()
    assert source_of(r, keys, "BTC-USD") == "gbm"
