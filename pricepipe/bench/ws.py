"""``pricepipe bench ws``: deliveries per second, publish-to-client latency
and server memory per connection of the websocket server, beside a bare
``websockets.broadcast`` loop measured in the same run on the same machine,
in interleaved pairs (baseline, pricepipe, ...: ``repeats``). Reports
figures; never asserts.

The default is the goal's scenario (issue 18): :data:`GOAL_CLIENTS`
(10,000) concurrent clients of one server process, each subscribed to the
trades and quotes of 10 of 100 symbols, at the event rate that offers
:data:`GOAL_DELIVERIES_PER_S` (100,000) deliveries per second (100 events/s;
:func:`scenario`); goals: p99 < 50 ms, deliveries >= 99 % of that, and at
most 30 kB (1,000 bytes) of server RSS per connection. Smaller runs (``n``
clients) publish at most :data:`MAX_EVENTS_PER_S` and report the same
figures without judging them.

Set-up, per contender (pricepipe's server, then the baseline):

* the server runs in its own process; its RSS is read once it answers and
  before any client connects, then sampled every 0.25 s while the load
  runs: ``rss_per_connection_kb`` is (peak - before) / clients (and
  ``rss_idle_per_connection_kb`` the same with the clients subscribed and
  nothing published yet);
* N clients run in client processes of at most 2,500 connections each;
  every process prints READY once its connections are subscribed, then
  waits for a ``GO`` line on its stdin (reading its sockets meanwhile), so
  that all of them record the same window;
* this process publishes R events per second in total, a realistic mix of
  :data:`QUOTES_PER_TRADE` quotes per trade for every symbol, round-robin
  over the S symbols, in pipelined batches every 10 ms, for D seconds.

What the clients measure, and how they keep their own cost low (they share
the 2 cores with the server they measure, so every microsecond they spend
is taken from it): websockets' sans-I/O protocol does each connection's
handshake; after it, one bare epoll loop reads every connection and splits
frames by their header, without an event loop's or a websocket library's
per-message machinery (see :class:`_BenchClient`). Every delivery is
counted: every trade and quote of every text frame, by its ``"ts_us":`` key,
and per type (``deliveries_trades_per_s``, ``deliveries_quotes_per_s``) by
the frame's channel: the ``type`` that heads pricepipe's frames, or for the
baseline's one bare entry per frame, its ``"bid":`` key (a quote's) or
``"price":`` key (a trade's).
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
measures something else: 1,000 such clients against pricepipe's server in
interleaved pairs, alone and then while :data:`ABUSERS` connections keep asking for
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

from pricepipe import codec, eventloop
from pricepipe.clock import now_us
from pricepipe.embedded import free_port

from .ratios import (
    DEFAULT_REPEATS,
    Ratio,
    collect,
    interleave,
    pair_ratios,
    summary_text,
    target_report,
)

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
        #: ``entries`` by type, counted per frame (a frame carries one channel).
        self.trades = 0
        self.quotes = 0
        self.frames = 0
        self.conflated = 0
        self.latencies_us: list[int] = []


#: Every trade and quote has it once (bars, which have none, are not subscribed).
_ENTRY_KEY = b'"ts_us":'
_CONFLATED = (b'{"type":"trades","conflated":true', b'{"type":"quotes","conflated":true')
#: How pricepipe's data frames start: their channel, before anything else.
_TRADES_HEAD = b'{"type":"trades"'
_QUOTES_HEAD = b'{"type":"quotes"'
#: The baseline's frame is one bare entry: only a quote has a bid, only a trade a price.
_QUOTE_KEY = b'"bid":'
_TRADE_KEY = b'"price":'


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
            # By type once per frame, never per entry: pricepipe's frame names
            # its channel in its first bytes; the baseline's bare entry needs a
            # find, quotes' key first (they are most frames). A frame of neither
            # is counted in neither, so trades + quotes < deliveries would show it.
            if data.startswith(_QUOTES_HEAD, start):
                tally.quotes += entries
            elif data.startswith(_TRADES_HEAD, start):
                tally.trades += entries
            elif data.find(_QUOTE_KEY, start, end) >= 0:
                tally.quotes += entries
            elif data.find(_TRADE_KEY, start, end) >= 0:
                tally.trades += entries
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


def _pump(by_fd: dict[int, _BenchClient], poller: Any, seconds: float,
          go_fd: int | None = None) -> bool:
    """Read every connection for ``seconds``: a bare epoll loop, one ``recv``
    into one preallocated buffer per readable connection, no event-loop
    machinery (and no 256 KiB allocation per read, which glibc serves with
    three extra system calls). With ``go_fd`` (registered in ``poller``):
    until a line ``GO`` arrives there instead; returns whether it did."""
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        for fd, _ in poller.poll(left):
            if fd == go_fd:
                line = os.read(fd, 64)
                if not line:
                    raise SystemExit("stdin closed before GO")  # the parent is gone
                if b"GO" in line:
                    return True
                continue
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
    return False


def _clients_main(url: str, clients: int, symbols: int, per_client: int,
                  duration_s: float, seed: int, sample_every: int,
                  go_on_stdin: bool = False) -> dict[str, Any]:
    """Open ``clients`` connections, print READY once they are subscribed,
    record for ``duration_s`` (from a ``GO`` line on stdin with
    ``go_on_stdin``: several client processes then start together), and
    return the tally with every latency sample (``latencies_ms``) so that a
    parent can merge the processes' percentiles."""
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
    if go_on_stdin:
        stdin = sys.stdin.fileno()
        poller.register(stdin, select.EPOLLIN)
        # Connections are read meanwhile (pings answered), nothing recorded.
        while not _pump(by_fd, poller, 3600.0, go_fd=stdin):
            pass
        poller.unregister(stdin)
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
        "trade_deliveries": tally.trades,
        "quote_deliveries": tally.quotes,
        "frames": tally.frames,
        "conflated_frames": tally.conflated,
        "latency_samples": len(tally.latencies_us),
        "elapsed_s": elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "latencies_ms": [round(v / 1000.0, 3) for v in tally.latencies_us],
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


def _shares(clients: int, per_process: int) -> list[int]:
    """``clients`` split over as few processes as hold ``per_process`` each,
    as evenly as possible (pure)."""
    processes = max(1, -(-clients // max(per_process, 1)))
    base, extra = divmod(clients, processes)
    return [base + (1 if i < extra else 0) for i in range(processes) if base or i < extra]


def _rss_kib(pid: int) -> int:
    from pricepipe.bench.procstat import read_memory_kib

    return read_memory_kib(pid).get("VmRSS", 0)


def merge_tallies(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several client processes' (pure): counts summed,
    percentiles over every process's latency samples together."""
    from pricepipe.bench.procstat import percentile

    lat = [v for part in parts for v in part.get("latencies_ms", ())]
    return {
        "deliveries": sum(int(p["deliveries"]) for p in parts),
        "trade_deliveries": sum(int(p.get("trade_deliveries", 0)) for p in parts),
        "quote_deliveries": sum(int(p.get("quote_deliveries", 0)) for p in parts),
        "frames": sum(int(p["frames"]) for p in parts),
        "conflated_frames": sum(int(p["conflated_frames"]) for p in parts),
        "latency_samples": len(lat),
        "elapsed_s": max(float(p["elapsed_s"]) for p in parts),
        "p50_ms": percentile(lat, 50) or 0.0,
        "p99_ms": percentile(lat, 99) or 0.0,
        "max_ms": max(lat) if lat else 0.0,
        "client_processes": len(parts),
    }


def _stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _contender(name: str, server_cmd: list[str], ready: tuple[str, str], *, redis_url: str,
               clients: int, symbols: int, per_client: int, rate: float, duration_s: float,
               r: Any, keys: Any, names: list[str], env: dict[str, str],
               abusers: int = 0, clients_per_process: int = 2500) -> dict[str, Any]:
    """One server under the load: clients connect (in several processes when
    many), all start recording together, this process publishes. Its
    figures, with the server's memory before the clients and with them."""
    from pricepipe.bench.procstat import ProcessSampler

    port = int(server_cmd[server_cmd.index("--port") + 1])
    server = subprocess.Popen(server_cmd, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    client_procs: list[subprocess.Popen[str]] = []
    abuse_proc: subprocess.Popen[str] | None = None
    abused: dict[str, Any] | None = None
    sampler: ProcessSampler | None = None
    try:
        kind, what = ready
        if kind == "http":
            _wait_http(f"http://127.0.0.1:{port}{what}", 30)
        else:
            _wait_line(server, what, 30)
        rss_before_kib = _rss_kib(server.pid)
        if abusers:
            abuse_proc = subprocess.Popen(
                [sys.executable, "-m", "pricepipe.bench.ws", "abusers", "--url",
                 f"ws://127.0.0.1:{port}/ws", "--connections", str(abusers),
                 "--symbols", str(MADE_UP_SYMBOLS)],
                env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            _wait_line(abuse_proc, "READY", 60)
        for k, share in enumerate(_shares(clients, clients_per_process)):
            client_procs.append(subprocess.Popen(
                [sys.executable, "-m", "pricepipe.bench.ws", "clients", "--url",
                 f"ws://127.0.0.1:{port}/ws", "--clients", str(share),
                 "--symbols", str(symbols), "--per-client", str(per_client),
                 "--duration", str(duration_s), "--seed", str(7 + k), "--go-on-stdin"],
                env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL))
        connect_started = time.monotonic()
        for proc in client_procs:
            _wait_line(proc, "READY", 600)
        connect_s = time.monotonic() - connect_started
        rss_idle_kib = _rss_kib(server.pid)
        sampler = ProcessSampler({"server": lambda: server.pid}, interval_s=0.25).start()
        cpu_before = (_cpu_s(server.pid), sum(_cpu_s(p.pid) for p in client_procs))
        for proc in client_procs:  # every client process records from now on
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        started = time.monotonic()
        published = _publish(r, keys, names, rate, duration_s)
        wall = time.monotonic() - started
        cpu_after = (_cpu_s(server.pid), sum(_cpu_s(p.pid) for p in client_procs))
        sampler.stop()
        rss_peak_kib = max([s[2] for s in sampler.series()["server"].samples] or [0])
        outs = [proc.communicate(timeout=duration_s + 120)[0] for proc in client_procs]
        if abuse_proc is not None:
            abuse_proc.terminate()
            abuse_out, _ = abuse_proc.communicate(timeout=30)
            abused = codec.decode_json(abuse_out.strip().splitlines()[-1])
        result = merge_tallies([codec.decode_json(out.strip().splitlines()[-1])
                                for out in outs])
        result["server_cpu_pct"] = 100 * (cpu_after[0] - cpu_before[0]) / wall
        result["clients_cpu_pct"] = 100 * (cpu_after[1] - cpu_before[1]) / wall
        # CPU per delivery is the figure least disturbed by other load on the machine.
        result["server_cpu_us_per_delivery"] = (
            1e6 * (cpu_after[0] - cpu_before[0]) / max(result["deliveries"], 1))
        # kB of 1000 bytes, as the goal says; /proc counts KiB.
        result["rss_before_mib"] = rss_before_kib / 1024
        result["rss_peak_mib"] = rss_peak_kib / 1024
        result["rss_per_connection_kb"] = (
            max(rss_peak_kib - rss_before_kib, 0) * 1.024 / max(clients, 1))
        result["rss_idle_per_connection_kb"] = (
            max(rss_idle_kib - rss_before_kib, 0) * 1.024 / max(clients, 1))
        result["connect_s"] = connect_s
    finally:
        if sampler is not None:
            sampler.stop()
        procs: list[subprocess.Popen[str] | None] = [abuse_proc, *client_procs, server]
        for stopping in procs:
            _stop(stopping)
    expected = published * clients * per_client / symbols
    if abused is not None:
        result["abusers"] = abused
    result["published"] = published
    result["expected_deliveries"] = expected
    result["deliveries_per_s"] = result["deliveries"] / result["elapsed_s"]
    # Per type as the clients counted them (informative, not judged).
    result["deliveries_trades_per_s"] = result["trade_deliveries"] / result["elapsed_s"]
    result["deliveries_quotes_per_s"] = result["quote_deliveries"] / result["elapsed_s"]
    result["delivered_fraction"] = result["deliveries"] / max(expected, 1)
    result["frames_per_s"] = result["frames"] / result["elapsed_s"]
    print(f"{name:<10} {result['deliveries_per_s']:>14,.0f} {result['p50_ms']:>9.2f} "
          f"{result['p99_ms']:>9.2f} {result['max_ms']:>9.1f} "
          f"{result['delivered_fraction']:>9.1%} {result['frames']:>10,} "
          f"{result['server_cpu_pct']:>7.0f}% {result['clients_cpu_pct']:>7.0f}% "
          f"{result['rss_per_connection_kb']:>8.1f} kB", flush=True)
    return dict(result)


#: The issue's goal scenario: this many concurrent clients in one server process...
GOAL_CLIENTS = 10_000
#: ...receiving this many deliveries per second in total...
GOAL_DELIVERIES_PER_S = 100_000
#: ...with a p99 under this...
GOAL_P99_MS = 50.0
#: ...at no more server memory per connection than this (kB = 1000 bytes).
GOAL_RSS_PER_CONNECTION_KB = 30.0
#: The measured rate reads a little under the offered one (the recording
#: window's edges): judged against 99 % of it, as e2e judges its steps.
DELIVERIES_TOLERANCE = 0.99
#: Events per second published at most (the offered deliveries then fall
#: short of the goal's for small runs, which are not judged).
MAX_EVENTS_PER_S = 1000.0
#: Figures of each run kept in the report.
FIGURES = ("deliveries_per_s", "deliveries_trades_per_s", "deliveries_quotes_per_s", "p50_ms",
           "p99_ms", "max_ms", "delivered_fraction", "frames_per_s", "server_cpu_pct",
           "clients_cpu_pct", "server_cpu_us_per_delivery", "rss_per_connection_kb",
           "rss_idle_per_connection_kb", "rss_before_mib", "rss_peak_mib", "conflated_frames",
           "latency_samples", "connect_s")


def scenario(clients: int, *, symbols: int = 100, per_client: int = 10) -> dict[str, Any]:
    """The load for ``clients`` (pure): the event rate that offers the goal's
    deliveries per second (capped at :data:`MAX_EVENTS_PER_S`), and whether
    the run is the goal's scenario (then its goals are judged)."""
    rate = min(GOAL_DELIVERIES_PER_S * symbols / (max(clients, 1) * per_client),
               MAX_EVENTS_PER_S)
    offered = rate * clients * per_client / symbols
    return {"clients": clients, "symbols": symbols, "symbols_per_client": per_client,
            "events_per_s": rate, "offered_deliveries_per_s": offered,
            "goal_scenario": clients >= GOAL_CLIENTS
            and offered >= GOAL_DELIVERIES_PER_S * DELIVERIES_TOLERANCE}


def _figures(result: dict[str, Any]) -> dict[str, float]:
    return {name: float(result[name]) for name in FIGURES if name in result}


def _judged(figures: dict[str, list[float]], goal_scenario: bool) -> list[Ratio]:
    """The goal's three figures of pricepipe's runs, judged only in the goal scenario."""
    note = "" if goal_scenario else f"judged only with {GOAL_CLIENTS:,} clients"
    return [
        Ratio("deliveries_per_s", GOAL_DELIVERIES_PER_S * DELIVERIES_TOLERANCE
              if goal_scenario else None, "higher", tuple(figures["deliveries_per_s"]),
              unit="/s", note=note or f"{GOAL_DELIVERIES_PER_S:,}/s offered, judged at 99 %"),
        Ratio("p99_ms", GOAL_P99_MS if goal_scenario else None, "lower",
              tuple(figures["p99_ms"]), unit="ms", strict=True,
              note=note or "publish-to-client latency of every delivery sampled"),
        Ratio("rss_per_connection_kb", GOAL_RSS_PER_CONNECTION_KB if goal_scenario else None,
              "lower", tuple(figures["rss_per_connection_kb"]), unit="kB",
              note=note or "(server RSS peak under load - RSS before the clients) / clients"),
    ]


def run(*, redis_url: str, database_url: str, n: int | None = None,
        abuse: bool = False, repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """Benchmark ``n`` clients (default :data:`GOAL_CLIENTS`), each subscribed
    to the trades and quotes of 10 of 100 symbols, at the event rate that
    offers :data:`GOAL_DELIVERIES_PER_S` (5 quotes per trade): ``repeats``
    interleaved pairs of the ``websockets.broadcast`` baseline and
    pricepipe's server. With ``abuse`` (default 1,000 clients): pairs of
    pricepipe's server alone and with :data:`ABUSERS` abusers (see the
    module's docstring). ``database_url`` is not used."""
    import redis

    from pricepipe.keys import Keys
    from pricepipe.streams import register_symbols

    clients = (1000 if abuse else GOAL_CLIENTS) if n is None else max(int(n), 1)
    load = scenario(clients)
    symbols, per_client, rate = load["symbols"], load["symbols_per_client"], load["events_per_s"]
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
    params: dict[str, Any] = {**load, "quotes_per_trade": QUOTES_PER_TRADE,
                              "duration_s": duration_s, "repeats": max(int(repeats), 1)}
    if abuse:
        params.update(abusers=ABUSERS, made_up_symbols_per_request=MADE_UP_SYMBOLS)
    print(f"ws bench: {clients:,} clients x {per_client} of {symbols} symbols (trades and "
          f"quotes), {rate:,.0f} events/s ({QUOTES_PER_TRADE} quotes per trade) for "
          f"{duration_s:.0f} s (~{load['offered_deliveries_per_s']:,.0f} deliveries/s offered); "
          f"{params['repeats']} interleaved pairs", flush=True)
    print(f"{'server':<10} {'deliveries/s':>14} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
          f"{'delivered':>9} {'frames':>10} {'srv cpu':>8} {'cli cpu':>8} {'rss/conn':>11}",
          flush=True)
    try:
        register_symbols(r, keys, names)
        common: dict[str, Any] = {
            "redis_url": redis_url, "clients": clients, "symbols": symbols,
            "per_client": per_client, "rate": rate, "duration_s": duration_s, "r": r,
            "keys": keys, "names": names, "env": env}

        def pricepipe_ws(_: int = 0, *, with_abusers: bool = False) -> dict[str, Any]:
            cmd = [sys.executable, "-m", "pricepipe", "ws", "--host", "127.0.0.1",
                   "--port", str(free_port())]
            return _contender("abused" if with_abusers else "pricepipe", cmd,
                              ("http", "/healthz"), **common,
                              abusers=ABUSERS if with_abusers else 0)

        def broadcast(_: int) -> dict[str, Any]:
            cmd = [sys.executable, "-m", "pricepipe.bench.ws", "baseline-server",
                   "--port", str(free_port()), "--redis-url", redis_url]
            return _contender("broadcast", cmd, ("line", "LISTENING"), **common)

        if abuse:
            pairs = interleave(pricepipe_ws, lambda i: pricepipe_ws(i, with_abusers=True),
                               repeats, say=None)
            return _abuse_report(pairs, params)
        pairs = interleave(broadcast, pricepipe_ws, repeats, say=None)
    finally:
        for name in names:
            r.delete(keys.trades(name), keys.quotes(name))
        for shard in keys.all_shards():
            r.delete(keys.symbols(shard))
        r.close()
    baselines = collect([_figures(base) for base, _ in pairs])
    figures = collect([_figures(ours) for _, ours in pairs])
    ratios = [
        *_judged(figures, load["goal_scenario"]),
        *(Ratio(f"{name}_vs_broadcast", None, "lower" if name != "deliveries_per_s" else
                "higher", tuple(pair_ratios(figures[name], baselines[name])), note=note)
          for name, note in (
              ("deliveries_per_s", "pricepipe / websockets.broadcast, same pair"),
              ("p99_ms", "pricepipe / websockets.broadcast, same pair"),
              ("server_cpu_us_per_delivery", "pricepipe / websockets.broadcast, same pair"),
              ("rss_per_connection_kb", "pricepipe / websockets.broadcast, same pair"))),
    ]
    report = target_report("ws", figures=figures, baselines=baselines, ratios=ratios,
                           params=params)
    print(summary_text(report), flush=True)
    return report


def _abuse_report(pairs: list[tuple[dict[str, Any], dict[str, Any]]],
                  params: dict[str, Any]) -> dict[str, Any]:
    """The normal clients with the abusers (figures) and without (baselines)."""
    baselines = collect([_figures(alone) for alone, _ in pairs])
    figures = collect([_figures(abused) for _, abused in pairs])
    attacks = [abused.get("abusers", {}) for _, abused in pairs]
    figures["abuser_requests"] = [float(a.get("requests", 0)) for a in attacks]
    ratios = [
        Ratio("p99_ms", 2.0, "lower", tuple(pair_ratios(figures["p99_ms"],
                                                        baselines["p99_ms"])),
              note="normal clients' p99 with the abusers / alone"),
        Ratio("deliveries_per_s", None, "higher",
              tuple(pair_ratios(figures["deliveries_per_s"], baselines["deliveries_per_s"]))),
        Ratio("server_cpu_us_per_delivery", None, "lower",
              tuple(pair_ratios(figures["server_cpu_us_per_delivery"],
                                baselines["server_cpu_us_per_delivery"]))),
    ]
    report = target_report("ws-abuse", figures=figures, baselines=baselines, ratios=ratios,
                           params=params, abuser_codes=[a.get("codes", {}) for a in attacks])
    print(summary_text(report), flush=True)
    print(f"the {params['abusers']} abusers sent {sum(figures['abuser_requests']):,.0f} "
          f"requests of {params['made_up_symbols_per_request']} made-up symbols, answered "
          f"{[a.get('codes', {}) for a in attacks]}", flush=True)
    return report


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
    c.add_argument("--go-on-stdin", action="store_true",
                   help="after READY, record only once a line GO arrives on stdin")
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
                               args.duration, args.seed, max(args.sample_every, 1),
                               args.go_on_stdin)
        print(codec.encode_json(result).decode(), flush=True)
    elif args.what == "abusers":
        print(codec.encode_json(asyncio.run(_abusers_main(args.url, args.connections,
                                                          args.symbols))).decode(), flush=True)
    elif args.what == "abuse":
        print(codec.encode_json(_run_abuse(args.redis_url, args.n)).decode(), flush=True)
    else:
        # The baseline server on the loop pricepipe's server runs on
        # (pricepipe.eventloop): the ratios compare fan-outs, not loops.
        eventloop.run(_baseline_main(args.port, args.redis_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
