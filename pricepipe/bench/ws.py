"""``pricepipe bench ws``: deliveries per second and publish-to-client
latency of the websocket server, beside a bare ``websockets.broadcast`` loop
measured in the same run on the same machine. Reports figures; never asserts.

Set-up, per contender (pricepipe's server, then the baseline):

* the server runs in its own process;
* N clients run in another process, each subscribed to the trades and quotes
  of M of S symbols;
* this process publishes R events per second in total, a realistic mix of
  :data:`QUOTES_PER_TRADE` quotes per trade for every symbol, round-robin
  over the S symbols, in pipelined batches every 10 ms, for D seconds.

What the clients measure, and how they keep their own cost low (they share
the 2 cores with the server they measure, so every microsecond they spend
is taken from it): websockets' sans-I/O protocol does each connection's
handshake; after it, one bare epoll loop reads every connection and splits
frames by their header, without an event loop's or a websocket library's
per-message machinery (see :class:`_BenchClient`). Every delivery is
counted: every trade and quote of every text frame, by its ``"ts_us":`` key.
Latency is ``time the client process read the frame - the event's ts_us``
(the publisher stamps ``ts_us`` just before appending; same host, same
clock), taken for every entry of one frame in ``SAMPLE_EVERY`` per
connection, each connection starting at a random frame: a sample of about a
tenth of the deliveries, spread evenly over connections and time. The read
time includes the client process's own queueing, so the figure errs high.

The baseline reads the same streams with ``XREAD`` (one per shard, trades
and quotes together) and calls ``websockets.broadcast`` once per entry for
that symbol's subscribers (one frame per entry per client, no batching, no
limits, no slow-consumer policy), decoding with the reference parser.
pricepipe encodes each entry once too, and puts a flush's entries into one
frame per channel per client, written together (see docs/subscriber.md),
which is where it saves work.

``--abuse`` (``python -m pricepipe.bench.ws abuse``, or ``run(abuse=True)``)
measures something else: the same clients against pricepipe's server twice,
alone and then while :data:`ABUSERS` connections keep asking for
:data:`MADE_UP_SYMBOLS` symbols that nobody publishes (what issue 13 saw turn
into 10,000 phantom XREAD keys); it reports the normal clients' p99 with and
without them and the ratio (the goal: within 2x).

Run the helpers directly: ``python -m pricepipe.bench.ws clients ...``,
``python -m pricepipe.bench.ws abusers ...`` and
``python -m pricepipe.bench.ws baseline-server ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
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
#: The mix published: this many quotes per trade, for every symbol.
QUOTES_PER_TRADE = 5
#: One data frame in this many per connection is parsed for latency.
SAMPLE_EVERY = 10
_READ_BYTES = 262_144
#: The abuse scenario: this many connections...
ABUSERS = 20
#: ...each asking, as fast as the server answers, for this many made-up symbols.
MADE_UP_SYMBOLS = 500


# --- client process --------------------------------------------------------------------------


class _Tally:
    """What every benchmark connection of the client process adds to."""

    def __init__(self, sample_every: int) -> None:
        self.recording = False
        self.sample_every = sample_every
        self.entries = 0
        self.frames = 0
        self.conflated = 0
        self.latencies_us: list[int] = []


#: Every trade and quote has it once (bars, which have none, are not subscribed).
_ENTRY_KEY = b'"ts_us":'
_CONFLATED = (b'{"type":"trades","conflated":true', b'{"type":"quotes","conflated":true')


class _BenchClient:
    """One benchmark connection, as cheap per frame as it can be made.

    :meth:`open` does the opening handshake with websockets' sans-I/O
    :class:`ClientProtocol` on a blocking socket, reads the first message
    (pricepipe's ``hello``, the baseline's ``ready``) and answers it with the
    subscribe request. From then on :meth:`received` only splits frames, with
    no websocket library's per-message machinery: a server's frames are
    unmasked and neither server fragments messages, so each frame is a 2-byte
    header, an optional 2- or 8-byte length and one whole message. Pings are
    answered, a close frame ends the connection.
    """

    def __init__(self, sock: socket.socket, ws: Any, tally: _Tally, phase: int) -> None:
        self.sock = sock
        self._ws = ws
        self._tally = tally
        self._seen = phase
        self._rest = b""
        self.open = True

    @classmethod
    def open_to(cls, uri: Any, subscribe: bytes, tally: _Tally, phase: int) -> _BenchClient:
        from websockets.client import ClientProtocol
        from websockets.frames import Frame

        sock = socket.create_connection((uri.host, uri.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = ClientProtocol(uri, max_size=None)
        ws.send_request(ws.connect())
        while True:
            for chunk in ws.data_to_send():
                sock.sendall(chunk)
            data = sock.recv(65_536)
            if not data:
                raise ConnectionError("closed before its first message")
            ws.receive_data(data)
            if ws.handshake_exc is not None:
                raise ws.handshake_exc
            if any(isinstance(event, Frame) for event in ws.events_received()):
                ws.send_text(subscribe)
                for chunk in ws.data_to_send():
                    sock.sendall(chunk)
                sock.setblocking(False)
                return cls(sock, ws, tally, phase)

    def received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        tally = self._tally
        size = len(data)
        pos = 0
        received_us = 0
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                start += 2
                length = int.from_bytes(data[pos + 2:start], "big")
            elif length == 127:
                start += 8
                length = int.from_bytes(data[pos + 2:start], "big")
            end = start + length
            if end > size:
                break  # the rest of this frame comes with the next read
            opcode = data[pos] & 0x0F
            pos = end
            if opcode != 1:  # not text
                self._control(opcode, data[start:end])
                continue
            if not tally.recording:
                continue
            entries = data.count(_ENTRY_KEY, start, end)
            if not entries:
                continue
            tally.frames += 1
            tally.entries += entries
            if data.startswith(_CONFLATED[0], start) or data.startswith(_CONFLATED[1], start):
                tally.conflated += 1
            self._seen += 1
            if self._seen % tally.sample_every == 0:
                if not received_us:
                    received_us = now_us()
                msg = codec.decode_json(data[start:end])
                # pricepipe: {"type": "trades", "trades": [...]} (or quotes);
                # baseline: one bare trade or quote.
                kind = msg.get("type")
                for entry in msg[kind] if kind in ("trades", "quotes") else (msg,):
                    tally.latencies_us.append(received_us - entry["ts_us"])
        self._rest = data[pos:] if pos < size else b""

    def _control(self, opcode: int, payload: bytes) -> None:
        from websockets.frames import Frame, Opcode

        if opcode == Opcode.PING:
            with contextlib.suppress(OSError):
                self.sock.send(Frame(Opcode.PONG, payload).serialize(mask=True))
        elif opcode == Opcode.CLOSE:
            self.open = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.open:
                self._ws.send_close()
                for chunk in self._ws.data_to_send():
                    self.sock.send(chunk)
        self.sock.close()


def _pump(by_fd: dict[int, _BenchClient], poller: Any, seconds: float) -> None:
    """Read every connection for ``seconds``: a bare epoll loop, one ``recv``
    into one preallocated buffer per readable connection, no event-loop
    machinery (and no 256 KiB allocation per read, which glibc serves with
    three extra system calls)."""
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        for fd, _ in poller.poll(left):
            client = by_fd[fd]
            try:
                n = client.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n:
                client.received(bytes(view[:n]))
            if not n or not client.open:
                poller.unregister(fd)
                client.open = False


def _clients_main(url: str, clients: int, symbols: int, per_client: int,
                  duration_s: float, seed: int, sample_every: int) -> dict[str, Any]:
    import select

    import numpy as np
    from websockets.uri import parse_uri

    rng = random.Random(seed)
    uri = parse_uri(url)
    names = [f"B{i:03d}" for i in range(symbols)]
    tally = _Tally(sample_every)
    conns = []
    for _ in range(clients):
        subscribe = codec.encode_json(
            {"op": "subscribe", "symbols": rng.sample(names, per_client),
             "channels": ["trades", "quotes"], "snapshot": False})
        conns.append(_BenchClient.open_to(uri, subscribe, tally, rng.randrange(sample_every)))
    poller = select.epoll()
    by_fd = {}
    for client in conns:
        poller.register(client.sock.fileno(), select.EPOLLIN)
        by_fd[client.sock.fileno()] = client
    _pump(by_fd, poller, 1.0)  # subscriptions settle before anything is measured
    print("READY", flush=True)
    tally.recording = True
    started = time.monotonic()
    _pump(by_fd, poller, duration_s)
    tally.recording = False
    elapsed = time.monotonic() - started
    for client in conns:
        client.close()
    poller.close()
    lat = np.array(tally.latencies_us or [0], dtype=np.float64) / 1000.0
    return {
        "deliveries": tally.entries,
        "frames": tally.frames,
        "conflated_frames": tally.conflated,
        "latency_samples": len(tally.latencies_us),
        "elapsed_s": elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
    }


# --- abusers --------------------------------------------------------------------------------


async def _abusers_main(url: str, connections: int, symbols: int) -> dict[str, Any]:
    """``connections`` clients, each sending subscribe requests of ``symbols``
    made-up symbols (20 different ones in turn) until SIGTERM, one at a time
    (the next once the answer came); the answers' codes, counted."""
    import signal

    from websockets.asyncio.client import connect

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    codes: dict[str, int] = {}
    requests = 0

    async def one(n: int) -> None:
        nonlocal requests
        # Encoded once: the abusers share the machine with what they measure.
        messages = [codec.encode_json({
            "op": "subscribe", "symbols": [f"ZZ{n}X{round_}X{i}" for i in range(symbols)],
            "channels": ["trades", "quotes", "bars.1m"]}).decode() for round_ in range(20)]
        async with connect(url, max_size=None, ping_interval=None) as ws:
            await ws.recv()  # hello
            round_ = 0
            while not stop.is_set():
                await ws.send(messages[round_ % len(messages)])
                round_ += 1
                while True:
                    msg = codec.decode_json(await ws.recv())
                    if msg.get("type") in ("error", "subscribed"):
                        break
                code = str(msg.get("code", msg["type"]))
                codes[code] = codes.get(code, 0) + 1
                requests += 1

    tasks = [asyncio.create_task(one(n)) for n in range(connections)]
    await asyncio.sleep(0.5)
    print("READY", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"requests": requests, "codes": codes}


# --- baseline server -------------------------------------------------------------------------


async def _baseline_main(port: int, redis_url: str) -> None:
    """A bare fan-out: XREAD per shard (trades and quotes streams together),
    then websockets.broadcast per entry."""
    import redis.asyncio
    from websockets.asyncio.server import broadcast, serve

    from pricepipe.keys import Channel, Keys

    keys = Keys(BENCH_PREFIX, BENCH_SHARDS)
    channels = (Channel.TRADES, Channel.QUOTES)
    r = redis.asyncio.Redis.from_url(redis_url)
    subs: dict[str, set[Any]] = {}
    cursors: dict[int, dict[str, str]] = {}  # shard -> stream key -> last entry ID read

    async def handler(ws: Any) -> None:
        await ws.send('{"type":"ready"}')
        mine: list[str] = []
        try:
            async for message in ws:
                for symbol in codec.decode_json(message)["symbols"]:
                    shard_cursors = cursors.setdefault(keys.shard(symbol), {})
                    for channel in channels:
                        stream = keys.stream(symbol, channel)
                        if stream not in shard_cursors:
                            rows = await r.xrevrange(stream, count=1)
                            shard_cursors.setdefault(stream, rows[0][0].decode() if rows else "0-0")
                    subs.setdefault(symbol, set()).add(ws)
                    mine.append(symbol)
        finally:
            for symbol in mine:
                subs[symbol].discard(ws)

    async def read_shard(shard: int) -> None:
        while True:
            wanted = cursors.get(shard)
            if not wanted:
                await asyncio.sleep(0.05)
                continue
            streams: dict[Any, Any] = dict(wanted)
            reply = await r.xread(streams, block=100, count=1000)
            for stream_key, entries in reply or ():
                channel, symbol = keys.parse_stream(stream_key)
                for raw_id, fields in entries:
                    entry_id = raw_id.decode()
                    message = codec.encode_json(codec.event_to_dict(
                        codec.decode_entry(channel, symbol, fields), entry_id))
                    broadcast(subs.get(symbol, ()), message, text=True)
                wanted[stream_key.decode()] = entries[-1][0].decode()

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
    from pricepipe.bench.procstat import CLK_TCK, read_stat

    stat = read_stat(pid)
    return 0.0 if stat is None else stat.cpu_ticks / CLK_TCK


def _publish(r: Any, keys: Any, names: list[str], rate: float, duration_s: float) -> int:
    """Publish ``rate`` events/s round-robin over ``names`` for ``duration_s``:
    each symbol in turn gets a trade, then :data:`QUOTES_PER_TRADE` quotes."""
    from pricepipe.events import Event, Quote, Side, Trade
    from pricepipe.streams import append_events

    per_batch = max(int(round(rate * PUBLISH_INTERVAL_S)), 1)
    interval = per_batch / rate
    published = 0
    index = 0
    started = time.monotonic()
    next_at = started
    while time.monotonic() - started < duration_s:
        stamp = now_us()
        events: list[Event] = []
        for _ in range(per_batch):
            symbol = names[index % len(names)]
            price = 100.0 + index % 7
            if (index // len(names)) % (QUOTES_PER_TRADE + 1) == 0:
                events.append(Trade(symbol, stamp, price, 1.0, "bench", str(index),
                                    Side.BUY if index % 2 else Side.SELL, stamp))
            else:
                events.append(Quote(symbol, stamp, price - 0.01, 3.0, price + 0.01, 4.0,
                                    "bench", stamp))
            index += 1
        append_events(r, keys, events)
        published += len(events)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return published


def _contender(name: str, server_cmd: list[str], ready: tuple[str, str], *, redis_url: str,
               clients: int, symbols: int, per_client: int, rate: float, duration_s: float,
               r: Any, keys: Any, names: list[str], env: dict[str, str],
               abusers: int = 0) -> dict[str, Any]:
    port = int(server_cmd[server_cmd.index("--port") + 1])
    server = subprocess.Popen(server_cmd, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    client_proc: subprocess.Popen[str] | None = None
    abuse_proc: subprocess.Popen[str] | None = None
    abused: dict[str, Any] | None = None
    try:
        kind, what = ready
        if kind == "http":
            _wait_http(f"http://127.0.0.1:{port}{what}", 30)
        else:
            _wait_line(server, what, 30)
        if abusers:
            abuse_proc = subprocess.Popen(
                [sys.executable, "-m", "pricepipe.bench.ws", "abusers", "--url",
                 f"ws://127.0.0.1:{port}/ws", "--connections", str(abusers),
                 "--symbols", str(MADE_UP_SYMBOLS)],
                env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            _wait_line(abuse_proc, "READY", 60)
        client_proc = subprocess.Popen(
            [sys.executable, "-m", "pricepipe.bench.ws", "clients", "--url",
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
        if abuse_proc is not None:
            abuse_proc.terminate()
            abuse_out, _ = abuse_proc.communicate(timeout=30)
            abused = codec.decode_json(abuse_out.strip().splitlines()[-1])
        result = codec.decode_json(out.strip().splitlines()[-1])
        result["server_cpu_pct"] = 100 * (cpu_after[0] - cpu_before[0]) / wall
        result["clients_cpu_pct"] = 100 * (cpu_after[1] - cpu_before[1]) / wall
        # CPU per delivery is the figure least disturbed by other load on the machine.
        result["server_cpu_us_per_delivery"] = (
            1e6 * (cpu_after[0] - cpu_before[0]) / max(result["deliveries"], 1))
    finally:
        for proc in (abuse_proc, client_proc, server):
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
    if abused is not None:
        result["abusers"] = abused
    result["published"] = published
    result["expected_deliveries"] = expected
    result["deliveries_per_s"] = result["deliveries"] / result["elapsed_s"]
    print(f"{name:<10} {result['deliveries_per_s']:>14,.0f} {result['p50_ms']:>9.2f} "
          f"{result['p99_ms']:>9.2f} {result['max_ms']:>9.1f} "
          f"{result['deliveries'] / max(expected, 1):>9.1%} {result['frames']:>10,} "
          f"{result['server_cpu_pct']:>7.0f}% {result['clients_cpu_pct']:>7.0f}%", flush=True)
    return dict(result)


def run(*, redis_url: str, database_url: str, n: int | None = None,
        abuse: bool = False) -> dict[str, Any]:
    """Benchmark ``n`` clients (default 1,000), each subscribed to the trades
    and quotes of 10 of 100 symbols, at 1,000 events/s in total (5 quotes per
    trade); pricepipe's server, then the ``websockets.broadcast`` baseline.
    With ``abuse``: pricepipe's server alone, then with :data:`ABUSERS`
    abusers (see the module's docstring). ``database_url`` is not used."""
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
           # Every client connects from 127.0.0.1.
           "PRICEPIPE_WS_MAX_CONNECTIONS_PER_ADDRESS": str(clients + 100),
           # The abusers ask for as many symbols as a client may.
           "PRICEPIPE_WS_MAX_SYMBOLS": str(MADE_UP_SYMBOLS if abuse else symbols),
           "PRICEPIPE_LOG_LEVEL": "WARNING"}
    params: dict[str, Any] = {
        "clients": clients, "symbols": symbols, "symbols_per_client": per_client,
        "events_per_s": rate, "quotes_per_trade": QUOTES_PER_TRADE, "duration_s": duration_s}
    if abuse:
        params.update(abusers=ABUSERS, made_up_symbols_per_request=MADE_UP_SYMBOLS)
    expected_rate = rate * per_client / symbols * clients
    print(f"ws bench: {clients} clients x {per_client} of {symbols} symbols (trades and "
          f"quotes), {rate:,.0f} events/s ({QUOTES_PER_TRADE} quotes per trade) for "
          f"{duration_s:.0f} s (~{expected_rate:,.0f} deliveries/s expected)", flush=True)
    print(f"{'server':<10} {'deliveries/s':>14} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
          f"{'delivered':>9} {'frames':>10} {'srv cpu':>8} {'cli cpu':>8}", flush=True)
    try:
        register_symbols(r, keys, names)
        common: dict[str, Any] = {
            "redis_url": redis_url, "clients": clients, "symbols": symbols,
            "per_client": per_client, "rate": rate, "duration_s": duration_s, "r": r,
            "keys": keys, "names": names, "env": env}

        def pricepipe_ws() -> list[str]:
            return [sys.executable, "-m", "pricepipe", "ws", "--host", "127.0.0.1",
                    "--port", str(free_port())]

        if abuse:
            alone = _contender("alone", pricepipe_ws(), ("http", "/healthz"), **common)
            abused = _contender("abused", pricepipe_ws(), ("http", "/healthz"), **common,
                                abusers=ABUSERS)
            return _abuse_report(alone, abused, params)
        ours = _contender("pricepipe", pricepipe_ws(), ("http", "/healthz"), **common)
        port = free_port()
        base = _contender("broadcast", [sys.executable, "-m", "pricepipe.bench.ws",
                                        "baseline-server", "--port", str(port),
                                        "--redis-url", redis_url],
                          ("line", "LISTENING"), **common)
    finally:
        for name in names:
            r.delete(keys.trades(name), keys.quotes(name))
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
               "conflated_frames": ours["conflated_frames"],
               "latency_samples": ours["latency_samples"]}
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


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    return {"deliveries_per_s": result["deliveries_per_s"], "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "max_ms": result["max_ms"],
            "delivered_fraction": result["deliveries"] / max(result["expected_deliveries"], 1),
            "server_cpu_pct": result["server_cpu_pct"],
            "server_cpu_us_per_delivery": result["server_cpu_us_per_delivery"],
            "conflated_frames": result["conflated_frames"]}


def _abuse_report(alone: dict[str, Any], abused: dict[str, Any],
                  params: dict[str, Any]) -> dict[str, Any]:
    """The normal clients with the abusers (figures) and without (baselines)."""
    figures, baselines = _figures(abused), _figures(alone)
    attacks = abused.get("abusers", {})
    figures["abuser_requests"] = attacks.get("requests", 0)
    ratios = {
        "p99_ms": figures["p99_ms"] / max(baselines["p99_ms"], 1e-9),
        "deliveries_per_s": figures["deliveries_per_s"] / max(baselines["deliveries_per_s"], 1e-9),
        "server_cpu_us_per_delivery": figures["server_cpu_us_per_delivery"]
        / max(baselines["server_cpu_us_per_delivery"], 1e-9),
    }
    print(f"abused/alone: p99 x{ratios['p99_ms']:.2f} (goal: within 2x), deliveries "
          f"x{ratios['deliveries_per_s']:.2f}; the {params['abusers']} abusers sent "
          f"{figures['abuser_requests']:,} requests of {params['made_up_symbols_per_request']} "
          f"made-up symbols, answered {attacks.get('codes', {})}", flush=True)
    return {"target": "ws-abuse", "figures": figures, "baselines": baselines,
            "ratios": ratios, "params": params}


def _run_abuse(redis_url: str | None, n: int | None) -> dict[str, Any]:
    """``run(abuse=True)`` on ``redis_url``, or on a throwaway embedded Redis."""
    import shutil
    import tempfile
    from pathlib import Path

    from pricepipe.embedded import RedisServer

    if redis_url:
        return run(redis_url=redis_url, database_url="", n=n, abuse=True)
    tmp = Path(tempfile.mkdtemp(prefix="pricepipe-bench-"))
    server = RedisServer(tmp / "redis")
    server.start()
    try:
        return run(redis_url=server.url, database_url="", n=n, abuse=True)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pricepipe.bench.ws")
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("clients", help="run benchmark clients; prints READY, then JSON")
    c.add_argument("--url", required=True)
    c.add_argument("--clients", type=int, default=1000)
    c.add_argument("--symbols", type=int, default=100)
    c.add_argument("--per-client", type=int, default=10)
    c.add_argument("--duration", type=float, default=10.0)
    c.add_argument("--seed", type=int, default=7)
    c.add_argument("--sample-every", type=int, default=SAMPLE_EVERY,
                   help="parse one data frame in this many per connection for latency")
    a = sub.add_parser("abusers", help="connections asking for made-up symbols until SIGTERM; "
                       "prints READY, then JSON")
    a.add_argument("--url", required=True)
    a.add_argument("--connections", type=int, default=ABUSERS)
    a.add_argument("--symbols", type=int, default=MADE_UP_SYMBOLS)
    s = sub.add_parser("abuse", help="the --abuse scenario: the clients' p99 alone and with "
                       "abusers; prints the report as JSON")
    s.add_argument("--redis-url", help="use this Redis (default: a throwaway embedded one)")
    s.add_argument("--n", type=int, default=None, help="normal clients (default 1,000)")
    b = sub.add_parser("baseline-server", help="the bare websockets.broadcast fan-out")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    if args.what == "clients":
        result = _clients_main(args.url, args.clients, args.symbols, args.per_client,
                               args.duration, args.seed, max(args.sample_every, 1))
        print(codec.encode_json(result).decode(), flush=True)
    elif args.what == "abusers":
        print(codec.encode_json(asyncio.run(_abusers_main(args.url, args.connections,
                                                          args.symbols))).decode(), flush=True)
    elif args.what == "abuse":
        print(codec.encode_json(_run_abuse(args.redis_url, args.n)).decode(), flush=True)
    else:
        asyncio.run(_baseline_main(args.port, args.redis_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
