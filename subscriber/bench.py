"""``pricepipe bench ws``: tick deliveries per second and publish-to-client
latency of the websocket server, beside a bare ``websockets.broadcast`` loop
measured in the same run on the same machine. Reports figures; never asserts.

Set-up, per contender (pricepipe's server, then the baseline):

* the server runs in its own process;
* N clients run in another process (sharing the 2 cores fairly), each
  subscribed to M of S symbols, counting ticks and measuring
  ``receive time - tick ts_us`` (the publisher stamps ``ts_us`` with the
  publish time; same host, same clock);
* this process publishes R ticks per second in total, round-robin over the
  S symbols, in pipelined batches every 10 ms, for D seconds.

The baseline reads the same streams with ``XREAD`` and calls
``websockets.broadcast`` once per tick for that symbol's subscribers (one
frame per tick per client, no batching, no limits, no slow-consumer policy).
pricepipe encodes each tick once too, and may put several ticks into one
frame per client (see docs/subscriber.md), which is where it saves work.

Run the helpers directly: ``python -m subscriber.bench clients ...`` and
``python -m subscriber.bench baseline-server ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import urllib.request
from typing import Any

from pricepipe import codec
from pricepipe.clock import now_us
from pricepipe.embedded import free_port

BENCH_PREFIX = "ppbench"
BENCH_SHARDS = 8
PUBLISH_INTERVAL_S = 0.01


# --- client process --------------------------------------------------------------------------


async def _clients_main(url: str, clients: int, symbols: int, per_client: int,
                        duration_s: float, seed: int) -> dict[str, Any]:
    import numpy as np
    from websockets.asyncio.client import connect

    rng = random.Random(seed)
    names = [f"B{i:03d}" for i in range(symbols)]
    latencies: list[int] = []
    counts = {"ticks": 0, "frames": 0, "conflated": 0}
    recording = asyncio.Event()
    conns = []
    sem = asyncio.Semaphore(50)

    async def open_one() -> Any:
        async with sem:
            ws = await connect(url, max_size=None, open_timeout=60, ping_interval=None,
                               compression=None)
            await ws.recv()  # hello (pricepipe) or ready (baseline)
            chosen = rng.sample(names, per_client)
            await ws.send(codec.encode_json(
                {"op": "subscribe", "symbols": chosen, "snapshot": False}).decode())
            return ws

    async def reader(ws: Any) -> None:
        loads = codec.decode_json
        sample = latencies.append
        async for message in ws:
            if not recording.is_set():
                continue
            now = now_us()
            msg = loads(message)
            # pricepipe: {"type": "ticks", "ticks": [...]}; baseline: one bare tick.
            ticks = msg.get("ticks") if "ticks" in msg else [msg] if "ts_us" in msg else None
            if not ticks:
                continue
            counts["frames"] += 1
            counts["ticks"] += len(ticks)
            if msg.get("conflated"):
                counts["conflated"] += 1
            for tick in ticks:
                sample(now - tick["ts_us"])

    conns = await asyncio.gather(*(open_one() for _ in range(clients)))
    tasks = [asyncio.create_task(reader(ws)) for ws in conns]
    await asyncio.sleep(1.0)  # subscriptions settle before anything is measured
    print("READY", flush=True)
    recording.set()
    started = time.monotonic()
    await asyncio.sleep(duration_s)
    recording.clear()
    elapsed = time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    lat = np.array(latencies or [0], dtype=np.float64) / 1000.0
    return {
        "deliveries": counts["ticks"],
        "frames": counts["frames"],
        "conflated_frames": counts["conflated"],
        "elapsed_s": elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
    }


# --- baseline server -------------------------------------------------------------------------


async def _baseline_main(port: int, redis_url: str) -> None:
    """A bare fan-out: XREAD per shard, then websockets.broadcast per tick."""
    import redis.asyncio
    from websockets.asyncio.server import broadcast, serve

    from pricepipe.keys import Keys

    keys = Keys(BENCH_PREFIX, BENCH_SHARDS)
    r = redis.asyncio.Redis.from_url(redis_url)
    subs: dict[str, set[Any]] = {}
    cursors: dict[str, str] = {}

    async def handler(ws: Any) -> None:
        await ws.send('{"type":"ready"}')
        mine: list[str] = []
        try:
            async for message in ws:
                for symbol in codec.decode_json(message)["symbols"]:
                    if symbol not in cursors:
                        rows = await r.xrevrange(keys.stream(symbol), count=1)
                        cursors.setdefault(symbol, rows[0][0].decode() if rows else "0-0")
                    subs.setdefault(symbol, set()).add(ws)
                    mine.append(symbol)
        finally:
            for symbol in mine:
                subs[symbol].discard(ws)

    async def read_shard(shard: int) -> None:
        while True:
            wanted: dict[Any, Any] = {
                keys.stream(s): c for s, c in cursors.items() if keys.shard(s) == shard}
            if not wanted:
                await asyncio.sleep(0.05)
                continue
            reply = await r.xread(wanted, block=100, count=1000)
            for stream_key, entries in reply or ():
                symbol = keys.symbol_of(stream_key)
                for raw_id, fields in entries:
                    entry_id = raw_id.decode()
                    message = codec.encode_json(
                        codec.tick_to_dict(codec.decode_fields(fields), entry_id))
                    broadcast(subs.get(symbol, ()), message, text=True)
                cursors[symbol] = entries[-1][0].decode()

    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None):
        print("LISTENING", flush=True)
        await asyncio.gather(*(read_shard(s) for s in range(BENCH_SHARDS)))


# --- orchestration ---------------------------------------------------------------------------


def _wait_line(proc: subprocess.Popen[str], want: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"helper exited before {want}: {proc.wait()}")
        if line.strip() == want:
            return
    raise RuntimeError(f"helper did not print {want} in {timeout_s} s")


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    from pricepipe.procstat import CLK_TCK, read_stat

    stat = read_stat(pid)
    return 0.0 if stat is None else stat.cpu_ticks / CLK_TCK


def _publish(r: Any, keys: Any, names: list[str], rate: float, duration_s: float) -> int:
    """Publish ``rate`` ticks/s round-robin over ``names`` for ``duration_s``."""
    from pricepipe.streams import append_ticks
    from pricepipe.tick import Tick

    per_batch = max(int(round(rate * PUBLISH_INTERVAL_S)), 1)
    interval = per_batch / rate
    published = 0
    index = 0
    started = time.monotonic()
    next_at = started
    while time.monotonic() - started < duration_s:
        stamp = now_us()
        ticks = []
        for _ in range(per_batch):
            ticks.append(Tick(names[index % len(names)], stamp, 100.0 + index % 7, 1.0, "bench"))
            index += 1
        append_ticks(r, keys, ticks)
        published += len(ticks)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return published


def _contender(name: str, server_cmd: list[str], ready: tuple[str, str], *, redis_url: str,
               clients: int, symbols: int, per_client: int, rate: float, duration_s: float,
               r: Any, keys: Any, names: list[str], env: dict[str, str]) -> dict[str, Any]:
    port = int(server_cmd[server_cmd.index("--port") + 1])
    server = subprocess.Popen(server_cmd, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    client_proc: subprocess.Popen[str] | None = None
    try:
        kind, what = ready
        if kind == "http":
            _wait_http(f"http://127.0.0.1:{port}{what}", 30)
        else:
            _wait_line(server, what, 30)
        client_proc = subprocess.Popen(
            [sys.executable, "-m", "subscriber.bench", "clients", "--url",
             f"ws://127.0.0.1:{port}/ws", "--clients", str(clients), "--symbols", str(symbols),
             "--per-client", str(per_client), "--duration", str(duration_s)],
            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        _wait_line(client_proc, "READY", 120)
        cpu_before = (_cpu_s(server.pid), _cpu_s(client_proc.pid))
        started = time.monotonic()
        published = _publish(r, keys, names, rate, duration_s)
        wall = time.monotonic() - started
        cpu_after = (_cpu_s(server.pid), _cpu_s(client_proc.pid))
        out, _ = client_proc.communicate(timeout=duration_s + 120)
        result = codec.decode_json(out.strip().splitlines()[-1])
        result["server_cpu_pct"] = 100 * (cpu_after[0] - cpu_before[0]) / wall
        result["clients_cpu_pct"] = 100 * (cpu_after[1] - cpu_before[1]) / wall
        # CPU per delivery is the figure least disturbed by other load on the machine.
        result["server_cpu_us_per_delivery"] = (
            1e6 * (cpu_after[0] - cpu_before[0]) / max(result["deliveries"], 1))
    finally:
        for proc in (client_proc, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc is not None and proc.stdout:
                proc.stdout.close()
    expected = published * clients * per_client / symbols
    result["published"] = published
    result["expected_deliveries"] = expected
    result["deliveries_per_s"] = result["deliveries"] / result["elapsed_s"]
    print(f"{name:<10} {result['deliveries_per_s']:>14,.0f} {result['p50_ms']:>9.2f} "
          f"{result['p99_ms']:>9.2f} {result['max_ms']:>9.1f} "
          f"{result['deliveries'] / max(expected, 1):>9.1%} {result['frames']:>10,} "
          f"{result['server_cpu_pct']:>7.0f}% {result['clients_cpu_pct']:>7.0f}%", flush=True)
    return dict(result)


def run(*, redis_url: str, database_url: str, n: int | None = None) -> dict[str, Any]:
    """Benchmark ``n`` clients (default 1,000), each subscribed to 10 of 100
    symbols, at 1,000 ticks/s in total; pricepipe's server, then the
    ``websockets.broadcast`` baseline. ``database_url`` is not used."""
    import redis

    from pricepipe.keys import Keys
    from pricepipe.streams import register_symbols

    clients = 1000 if n is None else max(int(n), 1)
    symbols, per_client, rate = 100, 10, 1000.0
    duration_s = 10.0 if n is None or clients >= 200 else 1.0
    keys = Keys(BENCH_PREFIX, BENCH_SHARDS)
    names = [f"B{i:03d}" for i in range(symbols)]
    r = redis.Redis.from_url(redis_url)
    env = {**os.environ, "PRICEPIPE_REDIS_URL": redis_url,
           "PRICEPIPE_REDIS_PREFIX": BENCH_PREFIX, "PRICEPIPE_REDIS_SHARDS": str(BENCH_SHARDS),
           "PRICEPIPE_WS_MAX_CONNECTIONS": str(clients + 100),
           "PRICEPIPE_WS_MAX_SYMBOLS": str(symbols), "PRICEPIPE_LOG_LEVEL": "WARNING"}
    params = {"clients": clients, "symbols": symbols, "symbols_per_client": per_client,
              "ticks_per_s": rate, "duration_s": duration_s}
    expected_rate = rate * per_client / symbols * clients
    print(f"ws bench: {clients} clients x {per_client} of {symbols} symbols, "
          f"{rate:,.0f} ticks/s for {duration_s:.0f} s (~{expected_rate:,.0f} "
          "deliveries/s expected)", flush=True)
    print(f"{'server':<10} {'deliveries/s':>14} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
          f"{'delivered':>9} {'frames':>10} {'srv cpu':>8} {'cli cpu':>8}", flush=True)
    try:
        register_symbols(r, keys, names)
        common: dict[str, Any] = {
            "redis_url": redis_url, "clients": clients, "symbols": symbols,
            "per_client": per_client, "rate": rate, "duration_s": duration_s, "r": r,
            "keys": keys, "names": names, "env": env}
        port = free_port()
        ours = _contender("pricepipe", [sys.executable, "-m", "pricepipe", "ws", "--host",
                                        "127.0.0.1", "--port", str(port)],
                          ("http", "/healthz"), **common)
        port = free_port()
        base = _contender("broadcast", [sys.executable, "-m", "subscriber.bench",
                                        "baseline-server", "--port", str(port),
                                        "--redis-url", redis_url],
                          ("line", "LISTENING"), **common)
    finally:
        for name in names:
            r.delete(keys.stream(name))
        for shard in keys.all_shards():
            r.delete(keys.symbols(shard))
        r.close()
    figures = {"deliveries_per_s": ours["deliveries_per_s"], "p50_ms": ours["p50_ms"],
               "p99_ms": ours["p99_ms"], "max_ms": ours["max_ms"],
               "delivered_fraction": ours["deliveries"] / max(ours["expected_deliveries"], 1),
               "frames_per_s": ours["frames"] / ours["elapsed_s"],
               "server_cpu_pct": ours["server_cpu_pct"],
               "clients_cpu_pct": ours["clients_cpu_pct"],
               "server_cpu_us_per_delivery": ours["server_cpu_us_per_delivery"],
               "conflated_frames": ours["conflated_frames"]}
    baselines = {"deliveries_per_s": base["deliveries_per_s"], "p50_ms": base["p50_ms"],
                 "p99_ms": base["p99_ms"], "max_ms": base["max_ms"],
                 "delivered_fraction": base["deliveries"] / max(base["expected_deliveries"], 1),
                 "frames_per_s": base["frames"] / base["elapsed_s"],
               "server_cpu_pct": base["server_cpu_pct"],
               "clients_cpu_pct": base["clients_cpu_pct"],
               "server_cpu_us_per_delivery": base["server_cpu_us_per_delivery"]}
    ratios = {
        "deliveries_per_s": figures["deliveries_per_s"] / max(baselines["deliveries_per_s"], 1e-9),
        "p99_ms": figures["p99_ms"] / max(baselines["p99_ms"], 1e-9),
        "server_cpu_us_per_delivery": figures["server_cpu_us_per_delivery"]
        / max(baselines["server_cpu_us_per_delivery"], 1e-9),
    }
    print(f"pricepipe/broadcast: deliveries x{ratios['deliveries_per_s']:.2f}, "
          f"p99 x{ratios['p99_ms']:.2f}, server CPU per delivery "
          f"x{ratios['server_cpu_us_per_delivery']:.2f} "
          "(goal: ~100,000 deliveries/s, p99 < 50 ms)", flush=True)
    return {"target": "ws", "figures": figures, "baselines": baselines, "ratios": ratios,
            "params": params}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subscriber.bench")
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("clients", help="run benchmark clients; prints READY, then JSON")
    c.add_argument("--url", required=True)
    c.add_argument("--clients", type=int, default=1000)
    c.add_argument("--symbols", type=int, default=100)
    c.add_argument("--per-client", type=int, default=10)
    c.add_argument("--duration", type=float, default=10.0)
    c.add_argument("--seed", type=int, default=7)
    b = sub.add_parser("baseline-server", help="the bare websockets.broadcast fan-out")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    if args.what == "clients":
        result = asyncio.run(_clients_main(args.url, args.clients, args.symbols,
                                           args.per_client, args.duration, args.seed))
        print(codec.encode_json(result).decode(), flush=True)
    else:
        asyncio.run(_baseline_main(args.port, args.redis_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
