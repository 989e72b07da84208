"""Epochs: a Redis that lost entries (a failover to a replica that was
behind, a restore of an older AOF) never leaves a websocket client with a
silent gap. A live client gets ``unrecoverable`` (reason ``epoch``, after the
last entry it was sent), then a snapshot and live entries; a client resuming
with a cursor of the old epoch gets the same instead of a replay that would
skip what was lost; a cursor of the current epoch resumes as usual."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection, connect

from pricepipe import streams
from pricepipe.bench.proxy import TcpProxy
from pricepipe.config import RedisSettings
from pricepipe.embedded import RedisServer
from pricepipe.keys import Channel, Keys
from tests.helpers import wait_until

from .helpers import (
    collect,
    ids,
    live,
    publish,
    recv_json,
    recv_type,
    running_server,
    until,
)

T = Channel.TRADES


async def client(port: int, resume: dict[str, Any] | None = None,
                 snapshot: bool = True) -> tuple[ClientConnection, dict[str, Any]]:
    """A client subscribed to AAPL trades; its ``subscribed`` message."""
    ws = await connect(f"ws://127.0.0.1:{port}/ws")
    await recv_json(ws)
    request: dict[str, Any] = {"op": "subscribe", "symbols": ["AAPL"], "channels": ["trades"],
                               "snapshot": snapshot}
    if resume is not None:
        request["resume"] = {"AAPL": resume}
    await ws.send(json.dumps(request))
    return ws, await recv_type(ws, "subscribed")


async def starts_again(ws: ClientConnection, *, after: str, epoch: str, first_id: str | None,
                       snapshot_id: str, timeout_s: float = 30) -> None:
    """The pair's ``unrecoverable`` (epoch) and its snapshot in the new epoch."""
    gap = await recv_type(ws, "unrecoverable", timeout_s)
    assert gap == {"type": "unrecoverable", "symbol": "AAPL", "channel": "trades",
                   "after": after, "reason": "epoch", "first_id": first_id, "epoch": epoch}
    snapshot = await recv_type(ws, "snapshot", timeout_s)
    assert [t["id"] for t in snapshot["trades"]] == [snapshot_id]
    assert snapshot["epochs"] == {"AAPL": epoch}


def test_a_failover_to_a_replica_that_was_behind_is_an_epoch_gap(
        make_redis_server: Callable[..., RedisServer], keys: Keys) -> None:
    primary = make_redis_server()
    link = TcpProxy(primary.port)  # the replication link, paused to make the replica lag
    replica = make_redis_server(extra_args=("--replicaof", "127.0.0.1", str(link.port)))
    proxy = TcpProxy(primary.port)  # the address the websocket server knows
    settings = RedisSettings(url=primary.url_at(proxy.port), prefix="pp", shards=4,
                             socket_timeout_s=2)
    to_primary = redis.Redis.from_url(primary.url)
    to_replica = redis.Redis.from_url(replica.url)
    try:
        def link_up() -> bool:
            info: Any = to_replica.info("replication")
            return bool(info["master_link_status"] == "up")

        wait_until(link_up, timeout_s=30)
        synced = publish(to_primary, keys, "AAPL", 3)
        wait_until(lambda: to_replica.xlen(keys.trades("AAPL")) == 3, timeout_s=30)
        old_epoch = streams.epoch(to_primary, keys.trades("AAPL"))
        new_epoch = streams.epoch(to_replica, keys.trades("AAPL"))

        async def scenario() -> None:
            async with running_server(settings) as server:
                ws, ack = await client(server.port)
                assert ack["epochs"] == {"AAPL": old_epoch}
                snapshot = await recv_type(ws, "snapshot")
                assert snapshot["epochs"] == {"AAPL": old_epoch}
                await live(server)
                link.pause()  # the replica falls behind...
                unreplicated = await asyncio.to_thread(publish, to_primary, keys, "AAPL", 2,
                                                       start=10)
                assert ids(await collect(ws, 2), "AAPL", T) == unreplicated
                primary.kill()  # ...and the primary dies with what it had not sent
                link.close()
                await asyncio.to_thread(to_replica.replicaof, "NO", "ONE")
                assert to_replica.xlen(keys.trades("AAPL")) == 3  # really lost
                proxy.retarget(replica.port)
                # The live client: told, after the last trade it got (which
                # the new primary never had), then the new primary's latest.
                await starts_again(ws, after=unreplicated[-1], epoch=new_epoch,
                                   first_id=synced[0], snapshot_id=synced[-1])
                await live(server)
                after = await asyncio.to_thread(publish, to_replica, keys, "AAPL", 2, start=20)
                assert ids(await collect(ws, 2), "AAPL", T) == after
                # A client resuming with its cursor of the old epoch: the same,
                # instead of a replay of `after` that would skip nothing visible.
                other, ack = await client(server.port, {"trades": unreplicated[-1],
                                                        "epoch": old_epoch})
                assert ack["epochs"] == {"AAPL": new_epoch}
                await starts_again(other, after=unreplicated[-1], epoch=new_epoch,
                                   first_id=synced[0], snapshot_id=after[-1])
                # A cursor of the new epoch resumes.
                third, _ = await client(server.port, {"trades": synced[-1], "epoch": new_epoch})
                replay = await recv_json(third)
                assert replay["type"] == "trades" and replay["replay"] is True
                assert [t["id"] for t in replay["trades"]] == after
                assert server.hub is not None and server.hub.epoch_changes >= 1
                # Healthy again once its heartbeat got through to the new primary.
                await until(lambda: server.health()["redis"] is True)
                for conn in (ws, other, third):
                    await conn.close()

        asyncio.run(scenario())
    finally:
        to_primary.close()
        to_replica.close()
        proxy.close()
        link.close()


def test_a_restart_from_an_older_aof_is_an_epoch_gap(
        make_redis_server: Callable[..., RedisServer], keys: Keys, tmp_path: Path) -> None:
    server = make_redis_server(extra_args=("--appendfsync", "always"))
    settings = RedisSettings(url=server.url, prefix="pp", shards=4, socket_timeout_s=2)
    r = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        kept = publish(r, keys, "AAPL", 3)
        old_epoch = streams.epoch(r, keys.trades("AAPL"))
        backup = tmp_path / "aof"
        shutil.copytree(server.data_dir / "appendonlydir", backup)

        async def scenario() -> None:
            async with running_server(settings) as ws_server:
                ws, _ = await client(ws_server.port, snapshot=False)
                await live(ws_server)
                lost = await asyncio.to_thread(publish, r, keys, "AAPL", 3, start=10)
                assert ids(await collect(ws, 3), "AAPL", T) == lost
                await asyncio.to_thread(server.stop)
                shutil.rmtree(server.data_dir / "appendonlydir")
                shutil.copytree(backup, server.data_dir / "appendonlydir")
                await asyncio.to_thread(server.start)
                new_epoch = streams.epoch(r, keys.trades("AAPL"))
                assert new_epoch != old_epoch
                # Redis went back to kept[-1]: the client, which had lost[-1],
                # is told the range after it may be missing.
                await starts_again(ws, after=lost[-1], epoch=new_epoch, first_id=kept[0],
                                   snapshot_id=kept[-1])
                # Resuming with a cursor of the old epoch: the same signal.
                other, _ = await client(ws_server.port, {"trades": lost[-1],
                                                         "epoch": old_epoch})
                await starts_again(other, after=lost[-1], epoch=new_epoch, first_id=kept[0],
                                   snapshot_id=kept[-1])
                # Without the epoch, the server can still tell here (the cursor
                # is beyond the restored stream), but not once new entries pass it.
                blind, _ = await client(ws_server.port, {"trades": lost[-1]})
                gap = await recv_type(blind, "unrecoverable")
                assert (gap["reason"], gap["after"]) == ("cursor_ahead", lost[-1])
                await live(ws_server)
                after = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=20)
                for conn in (ws, other):
                    assert ids(await collect(conn, 2), "AAPL", T) == after
                    await conn.close()
                await blind.close()

        asyncio.run(scenario())
    finally:
        r.close()


def test_a_cursor_of_another_epoch_is_unrecoverable_and_the_rest_resumes(
        redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    trades = publish(r, keys, "AAPL", 4)
    msft = publish(r, keys, "MSFT", 3)
    epoch = streams.epoch(r, keys.trades("AAPL"))

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({
                "op": "subscribe", "symbols": ["AAPL", "MSFT"], "channels": ["trades"],
                "resume": {"AAPL": {"trades": trades[1], "epoch": "0123456789abcdef"},
                           "MSFT": {"trades": msft[0], "epoch": epoch}}}))
            ack = await recv_type(ws, "subscribed")
            assert ack["epochs"] == {"AAPL": epoch, "MSFT": epoch}
            got: dict[str, list[dict[str, Any]]] = {}
            while len(got) < 3:
                msg = await recv_json(ws)
                got.setdefault(msg["type"], []).append(msg)
            (gap,) = got["unrecoverable"]
            assert (gap["symbol"], gap["reason"], gap["after"], gap["first_id"], gap["epoch"]) \
                == ("AAPL", "epoch", trades[1], trades[0], epoch)
            (snapshot,) = got["snapshot"]
            assert [t["id"] for t in snapshot["trades"]] == trades[-1:]
            (replay,) = got["trades"]
            assert replay["replay"] is True and [t["id"] for t in replay["trades"]] == msft[1:]
            assert server.stats.unrecoverable == 1 and server.stats.resumes == 2

    asyncio.run(scenario())
