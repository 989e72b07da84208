"""``pricepipe bench ws`` runs end to end on a tiny load (figures are printed,
never asserted); the websocket probe of ``bench e2e`` and the soak speaks
protocol v2 and records every entry per (symbol, channel)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from pricepipe import streams
from pricepipe.bench import ws as bench
from pricepipe.bench.probe import ProbeState, frame_entries, run_probe
from pricepipe.codec import encode_json, event_to_dict, pack_entry_id
from pricepipe.config import RedisSettings
from pricepipe.events import Event, Quote, Trade
from pricepipe.keys import Keys
from pricepipe.subscriber.ws.server import WsServer
from pricepipe.subscriber.ws.settings import WsSettings
from tests.helpers import slow_stage

TS = 1_767_323_045_000_000


@slow_stage
def test_bench_smoke(redis_url: str, monkeypatch: Any) -> None:
    """Two client processes (2 connections each), one pair: the baseline,
    then pricepipe's server; the goal's figures reported, not judged (not
    the goal's 10,000 clients)."""
    real = bench._contender
    monkeypatch.setattr(bench, "_contender",
                        lambda *a, **k: real(*a, **{**k, "clients_per_process": 2}))
    report = bench.run(redis_url=redis_url, database_url="", n=4, repeats=1)
    assert report["target"] == "ws" and report["params"]["repeats"] == 1
    assert report["params"]["clients"] == 4 and report["params"]["quotes_per_trade"] == 5
    assert not report["params"]["goal_scenario"]
    for section in ("figures", "baselines"):
        assert report[section]["deliveries_per_s"] > 0
        assert report[section]["p99_ms"] > 0
        assert report[section]["delivered_fraction"] > 0.5
        assert report[section]["rss_peak_mib"] >= report[section]["rss_before_mib"] > 0
    assert set(report["ratios"]) == {
        "deliveries_per_s", "p99_ms", "rss_per_connection_kb", "deliveries_per_s_vs_broadcast",
        "p99_ms_vs_broadcast", "server_cpu_us_per_delivery_vs_broadcast",
        "rss_per_connection_kb_vs_broadcast"}
    assert report["ratios"]["p99_ms"]["goal"] is None  # judged with 10,000 clients only
    assert report["goals_met"] is None
    # Deliveries per type as the clients counted them, for both servers: every
    # delivery is a trade or a quote, and the mix (5 quotes per trade) shows.
    for section in ("figures", "baselines"):
        samples = report["samples"][section]
        for total, trades, quotes in zip(samples["deliveries_per_s"],
                                         samples["deliveries_trades_per_s"],
                                         samples["deliveries_quotes_per_s"], strict=True):
            assert trades + quotes == pytest.approx(total), section
            assert quotes > trades > 0, section
    assert not set(report["ratios"]) & {"deliveries_trades_per_s", "deliveries_quotes_per_s"}


@slow_stage
def test_bench_abuse_smoke(redis_url: str) -> None:
    """The --abuse scenario: the normal clients alone, then beside abusers
    asking for made-up symbols, whose every request was refused."""
    report = bench.run(redis_url=redis_url, database_url="", n=4, abuse=True, repeats=1)
    assert report["target"] == "ws-abuse" and report["params"]["abusers"] == bench.ABUSERS
    for section in ("figures", "baselines"):
        assert report[section]["deliveries_per_s"] > 0 and report[section]["p99_ms"] > 0
        assert report[section]["deliveries_trades_per_s"] > 0
        assert report[section]["deliveries_quotes_per_s"] > 0
    assert report["figures"]["abuser_requests"] > 0
    assert set(report["ratios"]) == {"deliveries_per_s", "p99_ms", "server_cpu_us_per_delivery"}
    assert report["ratios"]["p99_ms"]["goal"] == 2.0


def test_bench_client_counts_deliveries_per_type_of_either_server() -> None:
    """pricepipe's frames by their channel, the baseline's bare entries by
    their keys; a frame split over two reads is counted once."""
    from websockets.frames import Frame, Opcode

    def wire(message: dict[str, Any]) -> bytes:
        return Frame(Opcode.TEXT, encode_json(message)).serialize(mask=False)

    trade = Trade("B001", TS, 100.0, 1.0, "bench", recv_ts_us=TS)
    quote = Quote("B001", TS, 99.0, 3.0, 101.0, 4.0, "bench", TS)
    trade_entry, quote_entry = (event_to_dict(e, "1767323045000-0") for e in (trade, quote))
    data = b"".join([
        wire({"type": "trades", "trades": [trade_entry, trade_entry]}),
        wire({"type": "quotes", "conflated": True, "quotes": [quote_entry] * 3}),
        wire(trade_entry), wire(quote_entry), wire(quote_entry)])
    tally = bench._Tally(sample_every=1)
    tally.recording = True
    client = bench._BenchClient(None, None, tally, 0)  # type: ignore[arg-type]
    client.received(data[:7])
    client.received(data[7:])
    assert (tally.entries, tally.trades, tally.quotes, tally.frames) == (8, 3, 5, 5)
    assert tally.conflated == 1 and len(tally.latencies_us) == 8


# --- the probe -------------------------------------------------------------------------------


def _entry(symbol: str, entry_id: str) -> dict[str, Any]:
    return {"symbol": symbol, "id": entry_id, "ts_us": 1_700_000_000_000_000}


def _frame(kind: str, ids: list[str], symbol: str = "A", **extra: object) -> bytes:
    return encode_json({"type": kind, kind: [_entry(symbol, i) for i in ids], **extra})


def test_probe_measures_and_records_per_channel() -> None:
    state = ProbeState(["A", "B"], record=True)
    assert b'"channels":["trades","quotes"]' in state.subscribe_message()
    now_us = 1_700_000_000_050_000
    snapshot = encode_json({"type": "snapshot", "trades": [_entry("A", "1700000000000-0")],
                            "quotes": [_entry("B", "1700000000000-0")]})
    assert state.handle(snapshot, now_us) is None
    assert state.handle(_frame("trades", ["1700000000040-0", "1700000000040-1"]), now_us) is None
    assert state.handle(_frame("quotes", ["1700000000040-0"], "B", replay=True), now_us) is None
    assert state.received == {
        "trades": {"A": [pack_entry_id("1700000000000-0"), pack_entry_id("1700000000040-0"),
                         pack_entry_id("1700000000040-1")]},
        "quotes": {"B": [pack_entry_id("1700000000000-0"), pack_entry_id("1700000000040-0")]}}
    assert state.cursors == {"A": {"trades": "1700000000040-1"},
                             "B": {"quotes": "1700000000040-0"}}
    report = state.report(123.0)
    assert report["n"] == 5 and report["n_by_channel"] == {"trades": 3, "quotes": 2}
    assert sorted(report["lat_ms"]) == [10.0, 10.0, 10.0, 50.0, 50.0]
    assert report["event_ms"] == [50.0] * 5
    assert state.report(124.0)["n"] == 0  # a new window
    assert (b'"resume":{"A":{"trades":"1700000000040-1"},"B":{"quotes":"1700000000040-0"}}'
            in state.subscribe_message())
    assert state.summary()["by_channel"] == {"trades": 3, "quotes": 2}


def test_probe_resumes_after_any_conflated_frame_and_keeps_errors() -> None:
    state = ProbeState(["A"], record=True)
    gaps = [{"symbol": "A", "after": "1-0", "until": "5-0"}]
    assert state.handle(_frame("trades", ["5-0"], conflated=True, gaps=gaps), 10_000) \
        == "reconnect"
    assert state.handle(_frame("quotes", ["6-0"], conflated=True), 10_000) == "reconnect"
    assert state.received == {} and state.conflated_frames == 2
    state.handle(b'{"type":"unrecoverable","symbol":"A","channel":"quotes","after":"1-0",'
                 b'"reason":"trimmed","first_id":"3-0"}', 1)
    state.handle(b'{"type":"error","code":"unknown_channel","message":"x"}', 1)
    state.handle(b"not json", 1)
    assert len(state.unrecoverable) == 1 and len(state.errors) == 2
    assert state.unrecoverable[0]["channel"] == "quotes"
    assert state.unrecoverable[0]["received_index"] == 0
    # Redis dropped mid-subscribe: the documented answer is to send it again.
    assert state.handle(b'{"type":"error","code":"unavailable","message":"x"}', 1) \
        == "resubscribe"
    assert state.resubscribes == 1
    # Without recording, a conflated frame is just measured.
    assert ProbeState(["A"]).handle(_frame("quotes", ["5-0"], conflated=True), 10_000) is None


def test_probe_reads_bars_and_subsamples_big_windows() -> None:
    assert frame_entries({"type": "bars", "bars": [{"id": "1-0"}]}) == \
        [("bars.1m", [{"id": "1-0"}])]
    assert frame_entries({"type": "pong"}) == []
    state = ProbeState(["A"], max_samples=10, channels=("bars.1m",), record=True)
    state.handle(_frame("bars", ["1-0", "2-0"]), 1)
    assert state.received == {"bars.1m": {"A": [pack_entry_id("1-0"), pack_entry_id("2-0")]}}
    state.handle(_frame("quotes", [f"1700000000000-{i}" for i in range(100)]),
                 1_700_000_000_001_000)
    report = state.report(1.0)
    assert report["n"] == 102 and len(report["lat_ms"]) == 10


def test_probe_records_what_a_real_server_sends(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    """The probe against the websocket server: a snapshot, then every
    trade and quote of each symbol, recorded per channel, in stream order."""
    symbols = ["AAPL", "MSFT"]
    streams.register_symbols(r, keys, symbols)
    state = ProbeState(symbols, record=True)

    def publish(start: int) -> list[tuple[str, str, str]]:
        events: list[Event] = []
        for i in range(start, start + 30):
            for s in symbols:
                events.append(Trade(s, TS + i, 100.0, 1.0, "test") if i % 6 == 0
                              else Quote(s, TS + i, 99.0, 1.0, 101.0, 1.0, "test"))
        out = []
        for event, entry_id in zip(events, streams.append_events(r, keys, events), strict=True):
            channel = "trades" if isinstance(event, Trade) else "quotes"
            out.append((channel, event.symbol, entry_id.decode()))
        return out

    first = publish(0)
    second: list[tuple[str, str, str]] = []

    async def scenario() -> None:
        server = WsServer(WsSettings(port=0, read_block_ms=20), redis_settings)
        await server.start()
        stop = asyncio.Event()
        try:
            task = asyncio.create_task(run_probe(f"ws://127.0.0.1:{server.port}/ws", state,
                                                 report_interval_s=0.1, stop=stop))
            while state.entries_total < 4:  # the snapshot: 2 symbols x 2 channels
                await asyncio.sleep(0.02)
            while any(s._catching for s in server.sessions):
                await asyncio.sleep(0.02)
            second.extend(await asyncio.to_thread(publish, 30))
            while state.entries_total < 4 + len(second):
                await asyncio.sleep(0.02)
            stop.set()
            await task
        finally:
            await server.stop()

    asyncio.run(scenario())
    assert state.errors == [] and state.connects == 1

    def ids(batch: list[tuple[str, str, str]], channel: str, symbol: str) -> list[str]:
        return [i for c, s, i in batch if c == channel and s == symbol]

    for channel in ("trades", "quotes"):
        for symbol in symbols:
            # The snapshot's entry (the pair's last before), then everything after.
            want = [ids(first, channel, symbol)[-1], *ids(second, channel, symbol)]
            assert state.received[channel][symbol] == [pack_entry_id(i) for i in want]
