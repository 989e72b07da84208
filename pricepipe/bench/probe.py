"""The websocket probe: a measuring client of the websocket server, run as a
subprocess by ``pricepipe bench e2e`` and ``pricepipe soak``.

It speaks protocol v2 (the README's "Websocket protocol": ``subscribe`` by
channel with per-channel ``resume`` cursors, ``snapshot`` and ``trades`` /
``quotes`` / ``bars`` frames, ``unrecoverable``), subscribes to the trades
and quotes of its symbols (``--channels`` to change that), and

* measures publish-to-client latency of every trade and quote it receives:
  the time of receipt minus the millisecond of the entry ID (when Redis
  accepted the ``XADD``; IDs are truncated to the millisecond, so this
  over-states latency by up to 1 ms) and minus the event time ``ts_us``
  (the GBM publisher's scheduled time);
* prints one JSON line per ``report_interval_s`` on stdout:
  ``{"t": wall_s, "n": entries, "n_by_channel": {"trades": ..., "quotes": ...},
  "lat_ms": [...], "event_ms": [...], ...}`` with at most ``max_samples``
  latencies per line (a uniform subsample when more arrived), so the parent
  can compute percentiles per measuring window;
* with ``--record FILE``, keeps every received entry ID per channel and
  symbol and writes them when stopped (SIGTERM or SIGINT), so the soak can
  check each (symbol, channel) stream for gaps and duplicates. Conflated
  frames are counted but not recorded: they skip entries by design, and the
  probe answers one by reconnecting with resume cursors (its last recorded
  ID per symbol and channel) to get the skipped entries back, as a client
  that wants every entry must.

The record (:meth:`ProbeState.summary`): ``received`` is
``{channel: {symbol: [packed entry IDs in receipt order]}}``; each
``unrecoverable`` message is kept as the server sent it (it names its
``channel``) plus ``received_index``, the length of that pair's list when it
arrived (what follows it there is the snapshot that came after it).

Run: ``python -m pricepipe.bench.probe --url ws://127.0.0.1:8765/ws --symbols A,B``.
A SIGSTOP/SIGCONT pair from outside is a stalled reader.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pricepipe.codec import decode_json, encode_json, pack_entry_id, parse_entry_id
from pricepipe.exceptions import DecodeError

#: close code of a slow consumer (README, "Websocket protocol")
CLOSE_SLOW_CONSUMER = 4008

RECONNECT = "reconnect"
RESUBSCRIBE = "resubscribe"

#: What the probe subscribes to unless told otherwise.
DEFAULT_CHANNELS = ("trades", "quotes")
#: Data frame type -> channel, and the channel's list key in a snapshot.
FRAME_CHANNELS = {"trades": "trades", "quotes": "quotes", "bars": "bars.1m"}
_LIST_KEYS = {channel: key for key, channel in FRAME_CHANNELS.items()}


def frame_entries(msg: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """``(channel, entries)`` of a data frame or a snapshot; [] for anything else."""
    kind = msg.get("type")
    if kind in FRAME_CHANNELS:
        return [(FRAME_CHANNELS[kind], msg.get(kind) or [])]
    if kind == "snapshot":
        return [(channel, msg.get(key) or []) for channel, key in _LIST_KEYS.items()
                if key in msg]
    return []


@dataclass
class ProbeState:
    """What the probe has seen. Pure bookkeeping, no I/O."""

    symbols: list[str]
    record: bool = False
    max_samples: int = 2000
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    #: last recorded entry ID per symbol and channel: the resume cursors
    cursors: dict[str, dict[str, str]] = field(default_factory=dict)
    #: every recorded entry ID (packed) per channel and symbol, in receipt order
    received: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # counters since the start
    entries_total: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    conflated_frames: int = 0
    unrecoverable: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connects: int = 0
    slow_closes: int = 0
    resubscribes: int = 0
    # window since the last report
    window_n: int = 0
    window_by_channel: dict[str, int] = field(default_factory=dict)
    window_lat_ms: list[float] = field(default_factory=list)
    window_event_ms: list[float] = field(default_factory=list)

    def subscribe_message(self) -> bytes:
        """Subscribe to every symbol on every channel, resuming the pairs
        with a cursor (the others start with a snapshot)."""
        msg: dict[str, Any] = {"op": "subscribe", "symbols": self.symbols,
                               "channels": list(self.channels), "snapshot": True}
        if self.cursors:
            msg["resume"] = {symbol: dict(cursors) for symbol, cursors in self.cursors.items()}
        return encode_json(msg)

    def handle(self, raw: str | bytes, now_us: int) -> str | None:
        """Account for one server frame. Returns what the probe must do next:
        ``"reconnect"`` after a conflated frame while recording (resume to get
        the skipped entries), ``"resubscribe"`` after an ``unavailable`` error
        (Redis dropped mid-subscribe: the protocol says send it again), else
        None."""
        try:
            msg = decode_json(raw)
        except DecodeError as exc:
            self.errors.append(f"undecodable frame: {exc}")
            return None
        if not isinstance(msg, dict):
            self.errors.append("frame is not an object")
            return None
        kind = msg.get("type")
        if kind == "unrecoverable":
            # A snapshot and live entries of the pair follow: what is skipped
            # runs up to the next entry recorded for it.
            channel, symbol = str(msg.get("channel")), str(msg.get("symbol"))
            msg["received_index"] = len(self.received.get(channel, {}).get(symbol, []))
            self.unrecoverable.append(msg)
        elif kind == "error":
            self.errors.append(f"{msg.get('code')}: {msg.get('message')}")
            if msg.get("code") == "unavailable":
                self.resubscribes += 1
                return RESUBSCRIBE
        else:
            parts = frame_entries(msg)
            for channel, entries in parts:
                self._measure(channel, entries, now_us)
            if msg.get("conflated"):
                self.conflated_frames += 1
                return RECONNECT if self.record else None
            if self.record:
                for channel, entries in parts:
                    self._record(channel, entries)
        return None

    def _measure(self, channel: str, entries: Iterable[dict[str, Any]], now_us: int) -> None:
        now_ms = now_us / 1000.0
        lat = self.window_lat_ms
        event = self.window_event_ms
        count = 0
        for entry in entries:
            count += 1
            if channel == "bars.1m":
                continue  # a bar has no event time of its own
            try:
                ms, _ = parse_entry_id(entry["id"])
                lat.append(now_ms - ms)
                event.append((now_us - int(entry["ts_us"])) / 1000.0)
            except (KeyError, TypeError, ValueError):
                self.errors.append(f"entry without a readable id or ts_us: {entry!r}"[:200])
        self.window_n += count
        self.entries_total += count
        self.window_by_channel[channel] = self.window_by_channel.get(channel, 0) + count
        self.by_channel[channel] = self.by_channel.get(channel, 0) + count

    def _record(self, channel: str, entries: Iterable[dict[str, Any]]) -> None:
        received = self.received.setdefault(channel, {})
        for entry in entries:
            try:
                symbol, entry_id = entry["symbol"], entry["id"]
                packed = pack_entry_id(entry_id)
            except (KeyError, TypeError, ValueError):
                continue
            received.setdefault(symbol, []).append(packed)
            self.cursors.setdefault(symbol, {})[channel] = entry_id

    def report(self, wall_s: float) -> dict[str, Any]:
        """The window's figures (subsampled latencies); starts a new window."""
        lat, event = self.window_lat_ms, self.window_event_ms
        if len(lat) > self.max_samples:
            picks = sorted(random.sample(range(len(lat)), self.max_samples))
            lat = [lat[i] for i in picks]
            event = [event[i] for i in picks]
        out = {"t": wall_s, "n": self.window_n, "n_by_channel": dict(self.window_by_channel),
               "lat_ms": [round(v, 2) for v in lat],
               "event_ms": [round(v, 2) for v in event], "connects": self.connects,
               "conflated": self.conflated_frames, "errors": len(self.errors)}
        self.window_n = 0
        self.window_by_channel = {}
        self.window_lat_ms = []
        self.window_event_ms = []
        return out

    def summary(self) -> dict[str, Any]:
        return {"symbols": self.symbols, "channels": list(self.channels),
                "entries_total": self.entries_total, "by_channel": dict(self.by_channel),
                "received": self.received, "connects": self.connects,
                "conflated_frames": self.conflated_frames, "slow_closes": self.slow_closes,
                "resubscribes": self.resubscribes,
                "unrecoverable": self.unrecoverable, "errors": self.errors[:100]}


async def _session(url: str, state: ProbeState) -> None:
    """One connection: subscribe (resuming), then read until it closes or
    a conflated frame asks for a resume."""
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, open_timeout=5, ping_interval=10,
                       ping_timeout=30, close_timeout=2) as ws:
        state.connects += 1
        await ws.send(state.subscribe_message().decode())
        async for raw in ws:
            action = state.handle(raw, time.time_ns() // 1000)
            if action == RESUBSCRIBE:
                await ws.send(state.subscribe_message().decode())
            elif action == RECONNECT:
                return


async def run_probe(url: str, state: ProbeState, *, report_interval_s: float,
                    stop: asyncio.Event) -> None:
    """Stay connected (reconnecting with resume cursors) until ``stop``."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    async def reporter() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), report_interval_s)
            except TimeoutError:
                pass
            line = encode_json(state.report(time.time()))
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.flush()

    async def connection_loop() -> None:
        delay_s = 0.05
        while not stop.is_set():
            try:
                await _session(url, state)
                delay_s = 0.05
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_SLOW_CONSUMER:
                    state.slow_closes += 1
                delay_s = 0.05
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                # Server down (killed by the soak) or restarting: retry with
                # capped backoff; jitter keeps several probes apart.
                state.errors.append(f"connect: {type(exc).__name__}: {exc}"[:200])
                delay_s = min(delay_s * 2, 1.0)
            except InvalidURI:
                raise
            await asyncio.sleep(delay_s * (0.5 + random.random()))

    report_task = asyncio.create_task(reporter())
    conn_task = asyncio.create_task(connection_loop())
    await stop.wait()
    conn_task.cancel()
    try:
        await conn_task
    except asyncio.CancelledError:
        pass
    await report_task


def load_record(path: Path) -> dict[str, Any]:
    """A probe's ``--record`` file."""
    data: dict[str, Any] = decode_json(path.read_bytes())
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pricepipe.bench.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="ws://host:port/ws")
    parser.add_argument("--symbols", required=True, help="comma-separated symbols")
    parser.add_argument("--channels", default=",".join(DEFAULT_CHANNELS),
                        help="comma-separated channels (default trades,quotes)")
    parser.add_argument("--record", help="write every received entry ID here when stopped")
    parser.add_argument("--report-interval-s", type=float, default=0.5)
    parser.add_argument("--max-samples", type=int, default=2000)
    args = parser.parse_args(argv)
    state = ProbeState([s for s in args.symbols.split(",") if s], record=bool(args.record),
                       max_samples=args.max_samples,
                       channels=tuple(c for c in args.channels.split(",") if c))

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_probe(args.url, state, report_interval_s=args.report_interval_s, stop=stop)

    asyncio.run(amain())
    if args.record:
        Path(args.record).write_bytes(encode_json(state.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
