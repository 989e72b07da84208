"""The server and the Redis it reads: a full Redis (``maxmemory``, writes
refused) costs the heartbeat write only, logged once per episode and
counted, while clients are served and the watchdog is fed; RESP2 and RESP3
(``?protocol=3``) work alike on every path; ``/healthz`` is not ok while a
reader fails or is gone."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from pricepipe import codec, streams
from pricepipe.config import RedisSettings
from pricepipe.embedded import RedisServer
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.ws import hub as hub_module

from .helpers import collect, ids, live, publish, recv_json, recv_type, running_server, until

T, Q = Channel.TRADES, Channel.QUOTES


def http(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), codec.decode_json(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), codec.decode_json(exc.read())


async def subscribe(port: int, message: dict[str, Any]) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/ws")
    await recv_json(ws)
    await ws.send(json.dumps({"op": "subscribe", **message}))
    await recv_type(ws, "subscribed")
    return ws


class Systemd:
    """A systemd notify socket, read by a thread as systemd reads it (a
    datagram socket's queue is short, and a full one blocks the sender)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.watchdogs = 0
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                self.watchdogs += self.sock.recv(4096) == b"WATCHDOG=1"
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    directory = Path(tempfile.mkdtemp(prefix="pp-notify-", dir="/tmp"))
    path = directory / "notify"
    listener = Systemd(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield listener
    listener.close()
    path.unlink(missing_ok=True)
    directory.rmdir()


def fill(r: redis.Redis) -> None:
    """Fill Redis past its ``maxmemory`` (noeviction) by 1 MB, so that it
    refuses every write until the fillers are deleted (what a stopped
    PostgreSQL does to the streams, faster)."""
    for n in range(30):
        r.set(f"filler:{n}", b"x" * 100_000)
    memory: Any = r.info("memory")
    used = int(memory["used_memory"])
    r.config_set("maxmemory", used - 1_000_000)
    try:
        r.set("probe", b"x")
    except redis.exceptions.OutOfMemoryError:
        return
    raise AssertionError("redis still accepts writes")


def test_a_full_redis_costs_the_heartbeat_only(
    make_redis_server: Callable[..., RedisServer], keys: Keys, systemd: Systemd,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_redis_server(maxmemory_bytes=64_000_000)
    settings = RedisSettings(url=server.url, prefix="pp", shards=4, socket_timeout_s=2)
    r = redis.Redis.from_url(server.url)
    trades = publish(r, keys, "AAPL", 3)
    caplog.set_level(logging.WARNING, logger="pricepipe.subscriber.ws.server")

    def logged(text: str) -> int:
        return sum(text in record.getMessage() for record in caplog.records)

    async def scenario() -> None:
        async with running_server(settings, heartbeat_interval_s=0.05) as ws_server:
            base = f"http://127.0.0.1:{ws_server.port}"
            first = await subscribe(ws_server.port, {"symbols": ["AAPL"], "channels": ["trades"]})
            assert [t["id"] for t in (await recv_type(first, "snapshot"))["trades"]] == trades[-1:]
            await asyncio.to_thread(fill, r)
            await until(lambda: ws_server.stats.redis_write_errors >= 5)
            beats = systemd.watchdogs
            await until(lambda: systemd.watchdogs > beats + 2)  # still fed
            status, health = await asyncio.to_thread(http, base + "/healthz")
            assert status == 200 and health["redis"] is True
            assert (health["status"], health["redis_writable"]) == ("degraded", False)
            # Reads still work: a new client is served its snapshot.
            second = await subscribe(ws_server.port, {"symbols": ["AAPL"],
                                                      "channels": ["trades"]})
            assert [t["id"] for t in (await recv_type(second, "snapshot"))["trades"]] == \
                trades[-1:]
            assert logged("refuses the heartbeat write") == 1  # once for the episode
            assert b"pricepipe_ws_redis_write_errors_total" in await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + "/metrics", timeout=5).read())
            # Room again (the persist workers trimmed): writes, then events, flow.
            fillers: Any = await asyncio.to_thread(r.keys, "filler:*")
            await asyncio.to_thread(r.delete, *fillers)
            await until(lambda: ws_server.health()["redis_writable"])
            await live(ws_server, 2)
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=10)
            for ws in (first, second):
                assert ids(await collect(ws, 2), "AAPL", T) == new
                await ws.close()
            assert logged("accepts the heartbeat write again") == 1
            assert logged("refuses the heartbeat write") == 1
            assert (await asyncio.to_thread(http, base + "/healthz"))[1]["status"] == "ok"

    try:
        asyncio.run(scenario())
    finally:
        r.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_every_path_in_resp2_and_resp3(redis_url: str, r: redis.Redis, keys: Keys,
                                       protocol: int) -> None:
    """Snapshot, replay, the exact trimmed check, live entries of both
    channels, heartbeat and health, with ``?protocol=N`` on the URL."""
    settings = RedisSettings(url=f"{redis_url}?protocol={protocol}", prefix="pp", shards=4)
    trades = publish(r, keys, "AAPL", 4)
    quotes = publish(r, keys, "AAPL", 2, channel=Q)
    old = publish(r, keys, "MSFT", 3)
    stream = keys.trades("MSFT")
    r.xgroup_destroy(stream, "persist")
    assert streams.trim_stream(r, keys, stream, window_ms=-1_000, max_age_ms=None,
                               persisted=False) == 3
    kept = publish(r, keys, "MSFT", 1, start=10)

    async def scenario() -> None:
        async with running_server(settings) as server:
            assert str(server._r.connection_pool.connection_kwargs["protocol"]) == str(protocol)
            ws = await subscribe(server.port, {
                "symbols": ["AAPL", "MSFT"], "channels": ["trades", "quotes"],
                "resume": {"AAPL": {"trades": trades[1]}, "MSFT": {"trades": old[0]}}})
            got: dict[str, list[dict[str, Any]]] = {}
            while sum(map(len, got.values())) < 3:
                msg = await recv_json(ws)
                got.setdefault(msg["type"], []).append(msg)
            (gap,) = got["unrecoverable"]
            assert (gap["symbol"], gap["reason"], gap["first_id"]) == ("MSFT", "trimmed",
                                                                        kept[0])
            (snapshot,) = got["snapshot"]
            assert [q["id"] for q in snapshot["quotes"]] == quotes[-1:]
            assert [t["id"] for t in snapshot["trades"]] == kept
            (replay,) = got["trades"]
            assert [t["id"] for t in replay["trades"]] == trades[2:]
            await live(server)
            new_trades = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=20)
            new_quotes = await asyncio.to_thread(publish, r, keys, "MSFT", 2, start=30,
                                                 channel=Q)
            got_live = await collect(ws, 4)
            assert ids(got_live, "AAPL", T) == new_trades
            assert ids(got_live, "MSFT", Q) == new_quotes
            await asyncio.sleep(0.1)
            status, health = await asyncio.to_thread(http, f"http://127.0.0.1:{server.port}"
                                                     "/healthz")
            assert status == 200 and health["status"] == "ok" and health["streams"] == 4
            (key,) = await asyncio.to_thread(lambda: list(r.scan_iter(
                match=keys.heartbeat_pattern("ws"))))
            beat: Any = r.get(key)
            assert codec.decode_json(beat)["redis"] is True
            assert server.hub is not None and server.hub.reader_errors == 0
            await ws.close()

    asyncio.run(scenario())


def test_healthz_is_not_ok_while_a_reader_fails_or_is_gone(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    def unreadable(reply: Any) -> Any:
        raise ValueError("a reply of an unexpected shape")

    async def scenario() -> None:
        async with running_server(redis_settings) as server:
            healthz = f"http://127.0.0.1:{server.port}/healthz"
            ws = await subscribe(server.port, {"symbols": ["AAPL"], "snapshot": False})
            await live(server)
            assert server.hub is not None
            monkeypatch.setattr(hub_module, "reply_streams", unreadable)
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            await until(lambda: server.hub is not None and server.hub.reader_errors > 0)
            status, health = await asyncio.to_thread(http, healthz)
            assert status == 503 and health["redis"] is False
            # The reader survived it and reads on from its cursor once it can.
            monkeypatch.undo()
            assert ids(await collect(ws, 2, timeout_s=20), "AAPL", T) == new
            await until(lambda: server.health()["redis"])
            assert (await asyncio.to_thread(http, healthz))[0] == 200
            # A reader that is gone (here: cancelled) is not ok either.
            (task,) = [t for t in server.hub._readers.values() if not t.done()]
            task.cancel()
            await until(lambda: task.done())
            assert (await asyncio.to_thread(http, healthz))[0] == 503
            await ws.close()

    asyncio.run(scenario())
