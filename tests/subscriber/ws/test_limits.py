"""Bounded subscriptions: symbols that are not registered are refused (so
made-up symbols never become hub state or keys of an XREAD), connections
are limited per client address (X-Forwarded-For believed from trusted
proxies only), and while 20 connections keep asking for 500 made-up
symbols each, a normal client still gets every event and the hub reads no
more than it did."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.events import Event
from pricepipe.exceptions import ConfigError
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.ws.address import AddressLimit, TrustedProxies, client_address
from pricepipe.subscriber.ws.settings import WsSettings

from .helpers import entries_of, live, quote, recv_json, recv_type, running_server, trade

T, Q = Channel.TRADES, Channel.QUOTES


# --- the client address (pure) ---------------------------------------------------------------

TRUSTED = TrustedProxies(["127.0.0.1", "::1", "10.0.0.0/8"])


@pytest.mark.parametrize(("peer", "forwarded", "want"), [
    ("198.51.100.1", [], "198.51.100.1"),  # no proxy
    ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),  # an untrusted peer's header: ignored
    ("127.0.0.1", [], "127.0.0.1"),  # a local client
    ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),  # nginx on this host
    ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),  # the same on a dual-stack socket
    ("127.0.0.1", ["203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # two trusted hops
    ("127.0.0.1", ["6.6.6.6, 203.0.113.7"], "203.0.113.7"),  # a spoofed entry on the left
    ("127.0.0.1", ["6.6.6.6", "203.0.113.7:4711"], "203.0.113.7"),  # two headers, a port
    ("127.0.0.1", ["[2001:db8::1]:4711"], "2001:db8::1"),
    ("127.0.0.1", ["10.0.0.5"], "10.0.0.5"),  # only proxies: the left-most
    ("127.0.0.1", ["not-an-address"], "not-an-address"),
    (None, ["203.0.113.7"], None),
])
def test_client_address_believes_trusted_proxies_only(
        peer: str | None, forwarded: list[str], want: str | None) -> None:
    assert client_address(peer, forwarded, TRUSTED) == want


def test_address_limit_counts_and_releases() -> None:
    limit = AddressLimit(2)
    assert limit.acquire("a") and limit.acquire("a") and not limit.acquire("a")
    assert limit.acquire("b") and limit.count("a") == 2
    limit.release("a")
    assert limit.acquire("a")
    for _ in range(3):
        limit.release("a")
    assert limit.count("a") == 0 and limit.addresses == 1
    assert all(AddressLimit(None).acquire("x") for _ in range(1000))


def test_limit_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        WsSettings(trusted_proxies=("nginx.local",))
    with pytest.raises(ConfigError, match="PER_ADDRESS"):
        WsSettings(max_connections_per_address=0)
    with pytest.raises(ConfigError, match="PER_REQUEST"):
        WsSettings(max_replay_entries_per_request=0)
    assert WsSettings(max_connections_per_address=None).max_connections_per_address is None


# --- on a server -----------------------------------------------------------------------------


async def connect_as(port: int, forwarded_for: str | None = None) -> ClientConnection:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    ws = await connect(f"ws://127.0.0.1:{port}/ws", additional_headers=headers)
    await recv_json(ws)
    return ws


async def refused(port: int, forwarded_for: str | None = None) -> int:
    with pytest.raises(InvalidStatus) as info:
        await connect_as(port, forwarded_for)
    return int(info.value.response.status_code)


def test_connections_per_client_address(redis_settings: RedisSettings) -> None:
    async def scenario() -> None:
        async with running_server(redis_settings, max_connections_per_address=2) as server:
            port = server.port
            local = [await connect_as(port), await connect_as(port)]
            assert await refused(port) == 429
            # Behind the trusted proxy (nginx on this host), per forwarded client.
            far = [await connect_as(port, "203.0.113.7"), await connect_as(port, "203.0.113.7")]
            assert await refused(port, "203.0.113.7") == 429
            # An entry the client wrote itself does not make it someone else.
            assert await refused(port, "6.6.6.6, 203.0.113.7") == 429
            other = await connect_as(port, "203.0.113.8")
            assert server.stats.address_refusals == 3
            # A closed connection frees its place.
            await far[0].close()
            await until_count(server, "203.0.113.7", 1)
            far[0] = await connect_as(port, "203.0.113.7")
            for ws in (*local, *far, other):
                await ws.close()
            for address in ("127.0.0.1", "203.0.113.7", "203.0.113.8"):
                await until_count(server, address, 0)
            assert server.addresses.addresses == 0
        # From a peer that is not a trusted proxy, the header counts for nothing.
        async with running_server(redis_settings, max_connections_per_address=1,
                                  trusted_proxies=("10.0.0.0/8",)) as server:
            first = await connect_as(server.port, "203.0.113.9")
            assert await refused(server.port, "203.0.113.10") == 429
            await first.close()

    asyncio.run(scenario())


async def until_count(server: Any, address: str, count: int) -> None:
    for _ in range(500):
        if server.addresses.count(address) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{address} still holds {server.addresses.count(address)}")


def test_unregistered_symbols_are_refused_and_found_once_registered(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    async def scenario() -> None:
        async with running_server(redis_settings, registry_refresh_s=0.0) as server:
            ws = await connect_as(server.port)
            await ws.send('{"op":"subscribe","symbols":["AAPL","LATER"],"req":1}')
            error = await recv_type(ws, "error")
            assert error == {"type": "error", "code": "unknown_symbol", "req": 1,
                             "symbols": ["LATER"], "message": error["message"]}
            assert server.hub is not None and server.hub.streams == []
            # Once a publisher registers it (before its first event), it is found.
            await asyncio.to_thread(streams.register_symbols, r, keys, ["LATER"])
            await ws.send('{"op":"subscribe","symbols":["AAPL","LATER"],"req":2}')
            assert (await recv_type(ws, "subscribed"))["symbols"] == ["AAPL", "LATER"]
            assert len(server.hub.streams) == 4
            # Already subscribed symbols are not looked up again.
            assert server.registry is not None
            refreshes = server.registry.refreshes
            await ws.send('{"op":"subscribe","symbols":["AAPL"],"channels":["trades"]}')
            await recv_type(ws, "subscribed")
            assert server.registry.refreshes == refreshes
            await ws.close()

    asyncio.run(scenario())


class Publisher(threading.Thread):
    """A trade and a quote of AAPL every few ms, ``rounds`` times; every entry ID."""

    def __init__(self, r: redis.Redis, keys: Keys, rounds: int) -> None:
        super().__init__(daemon=True)
        self.r, self.keys, self.rounds = r, keys, rounds
        self.ids: dict[Channel, list[str]] = {T: [], Q: []}

    def run(self) -> None:
        for n in range(self.rounds):
            events: list[Event] = [trade("AAPL", n), quote("AAPL", n)]
            for channel, entry_id in zip((T, Q), streams.append_events(self.r, self.keys, events),
                                         strict=True):
                self.ids[channel].append(entry_id.decode())
            time.sleep(0.003)


def test_abusers_asking_for_made_up_symbols_cost_nothing_a_client_would_notice(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    """20 connections keep sending requests of 500 made-up symbols each (no
    subscribe rate limit to hide behind) while AAPL trades: the hub reads
    AAPL's two streams and nothing else, the registry is read once, and the
    normal client gets every trade and quote, in order, exactly once."""
    streams.register_symbols(r, keys, ["AAPL"])
    publisher = Publisher(r, keys, rounds=100)
    got: dict[Channel, list[str]] = {T: [], Q: []}

    async def abuse(port: int, n: int) -> list[str]:
        ws = await connect_as(port)
        codes: list[str] = []
        round_ = 0
        while len(codes) < 5 or publisher.is_alive():  # until the publisher is done
            round_ += 1
            made_up = [f"FAKE{n}X{round_}X{i}" for i in range(500)]
            await ws.send(json.dumps({"op": "subscribe", "symbols": made_up,
                                      "channels": ["trades", "quotes", "bars.1m"]}))
            codes.append((await recv_type(ws, "error"))["code"])
        await ws.close()
        return codes

    async def scenario() -> None:
        async with running_server(redis_settings, registry_refresh_s=60.0,
                                  subscribe_rate="1000/second") as server:
            assert server.hub is not None and server.registry is not None
            normal = await connect_as(server.port)
            await normal.send('{"op":"subscribe","symbols":["AAPL"],"snapshot":false}')
            await recv_type(normal, "subscribed")
            await live(server)
            publisher.start()
            codes = await asyncio.gather(*(abuse(server.port, n) for n in range(20)))
            assert {code for per in codes for code in per} == {"unknown_symbol"}
            assert set(server.hub.streams) == {("AAPL", T), ("AAPL", Q)}
            requests = sum(map(len, codes))
            assert server.registry.refreshes == 1
            assert server.stats.unknown_symbol_requests == requests >= 100
            await asyncio.to_thread(publisher.join)
            while got[T][-1:] != publisher.ids[T][-1:] or got[Q][-1:] != publisher.ids[Q][-1:]:
                msg = await recv_json(normal, 10)
                assert not msg.get("conflated"), msg
                for channel, entry in entries_of(msg):
                    got[channel].append(entry["id"])
            await normal.close()

    asyncio.run(scenario())
    assert got == publisher.ids  # every event, in order, once
    assert len(got[T]) == 100
