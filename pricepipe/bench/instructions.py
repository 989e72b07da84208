"""``pricepipe bench instructions``: CPU instructions per event of the hot
loops, counted by ``valgrind --tool=callgrind`` on fixed, seeded workloads:
a figure for regressions that the machine's noise does not move.

Speeds on a shared VM move by 30 % between runs; the number of instructions
a loop executes on the same input does not (to within a few hundred in
hundreds of millions, with the hash seed fixed). Each workload is the hot
loop of a role, in-process, with no I/O, on inputs built before counting:

* ``publisher`` - :class:`~pricepipe.publisher.generator.GbmGenerator`
  events (20 symbols, 5 quotes per trade) in batches of 1,000, each batch
  through :func:`pricepipe.streams.append_events` into a client that packs
  the append script's commands into RESP bytes (redis-py's own
  ``pack_commands``) instead of sending them. Per event.
* ``worker`` - raw ``XREADGROUP`` replies (flat field lists, as the raw
  reply reader returns them) of the same kind of events through
  :func:`~pricepipe.workers.batch.decode_reply`, ``reject_untimely``, the
  acknowledgement IDs, the partition days and both COPY texts. Per entry.
* ``hub`` - raw ``XREAD`` replies to JSON as the websocket hub does
  (:func:`~pricepipe.codec.entry_to_json` per entry, one
  :class:`~pricepipe.subscriber.ws.hub.Batch` per stream per read), then for
  each of :data:`HUB_SUBSCRIBERS` subscribers (each on
  :data:`HUB_SYMBOLS_PER_SUBSCRIBER` symbols, so every entry reaches 10 of
  them) its live frames and their websocket frame headers. Per entry read.
* ``api`` - JSON rows as PostgreSQL's ``COPY`` hands them to the API (one
  ``write`` per row into its row buffer), then the page cut and the body's
  pieces (:mod:`pricepipe.api.queries`). Per row.

Counting: each loop runs once uncounted on a smaller input of its own
(imports, caches and first-call paths warmed), then under callgrind with
collection on only inside ``operator.call`` (``--toggle-collect``), which
calls nothing else in the process, with a dump after each loop
(``--dump-after``): one count per workload, in one process. An interpreter
stripped of that symbol cannot be counted (Debian's and python.org's keep
it); the bench says so rather than guess. The whole is run twice, at once
on two cores, and both counts are reported: they agree to well within 1 %.
The figure is ``Ir`` (instructions executed) per event; compare it only
between runs of the same workload version (``params.workload_version``, a
hash of this file) and interpreter.

``valgrind`` is installed with ``apt-get`` when missing and this runs as
root; otherwise the bench says how to install it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .ratios import summary_text, target_report

WORKLOADS = ("publisher", "worker", "hub", "api")
DEFAULT_EVENTS = 20_000
#: Events per batch (publisher) and per read (worker, hub), as the roles run.
BATCH = 1000
SYMBOLS = 20
SEED = 18
QUOTES_PER_TRADE = 5
PREFIX = "ppbench"
SHARDS = 8
#: 2023-11-14T22:13:20Z: a fixed event time, so that every run formats the same text.
START_US = 1_700_000_000_000_000
HUB_SUBSCRIBERS = 50
HUB_SYMBOLS_PER_SUBSCRIBER = 4
#: The C function whose calls are counted: ``operator.call`` (new in 3.11),
#: which nothing but this module calls.
TOGGLE = "_operator_call"
#: Two counts of the same workload agree to within this (they are deterministic).
STABLE_WITHIN = 0.01

Loop = Callable[[], object]


# --- workloads (run in the counted child process) --------------------------------------------


def _events(n: int, seed: int = SEED) -> list[Any]:
    """``n`` GBM events (a multiple of :data:`SYMBOLS`), one period per
    microsecond from :data:`START_US`."""
    from pricepipe.publisher.catalog import demo_symbols
    from pricepipe.publisher.generator import GbmGenerator

    gen = GbmGenerator(demo_symbols(SYMBOLS), seed=seed, quotes_per_trade=QUOTES_PER_TRADE)
    periods = -(-n // SYMBOLS)
    events: list[Any] = []
    for lo in range(0, periods, BATCH // SYMBOLS):
        hi = min(lo + BATCH // SYMBOLS, periods)
        events.extend(gen.events(list(range(START_US + lo, START_US + hi))))
    return events[:n]


def raw_replies(events: Sequence[Any]) -> list[list[list[Any]]]:
    """The events as raw stream read replies (RESP2, nothing parsed), one
    reply per :data:`BATCH` events: ``[[key, [[id, [field, value]], ...]], ...]``,
    all bytes, entry IDs from the events' milliseconds. Pure."""
    from pricepipe import codec
    from pricepipe.keys import Keys

    keys = Keys(PREFIX, SHARDS)
    replies = []
    seq = 0
    for lo in range(0, len(events), BATCH):
        streams: dict[bytes, list[list[Any]]] = {}
        for event in events[lo:lo + BATCH]:
            field, value = codec.encode_event(event)
            key = keys.stream(event.symbol, codec.channel_of(event)).encode()
            seq += 1
            entry_id = f"{event.ts_us // 1000}-{seq}".encode()
            raw = value.encode() if isinstance(value, str) else bytes(value)
            streams.setdefault(key, []).append([entry_id, [field, raw]])
        replies.append([[key, entries] for key, entries in streams.items()])
    return replies


class _PackingPipeline:
    """A pipeline that packs its commands as redis-py would send them, and
    answers each append with made-up entry IDs: the publisher's client-side
    work without the socket."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._commands: list[tuple[Any, ...]] = []
        self.packed_bytes = 0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self._commands.append(("EVALSHA", sha, numkeys, *keys_and_args))

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        packed = self._connection.pack_commands(self._commands)
        self.packed_bytes += sum(len(chunk) for chunk in packed)
        replies = [[b"1-1"] * int(command[2]) for command in self._commands]
        self._commands = []
        return replies


class _PackingRedis:
    def __init__(self) -> None:
        import redis.connection

        # Never connects: only its encoder and pack_commands are used.
        self._connection = redis.connection.Connection()

    def pipeline(self, transaction: bool = True) -> _PackingPipeline:
        return _PackingPipeline(self._connection)


def publisher_workload(n: int) -> tuple[Loop, int]:
    from pricepipe import streams
    from pricepipe.keys import Keys
    from pricepipe.publisher.catalog import demo_symbols
    from pricepipe.publisher.generator import GbmGenerator

    keys = Keys(PREFIX, SHARDS)
    gen = GbmGenerator(demo_symbols(SYMBOLS), seed=SEED, quotes_per_trade=QUOTES_PER_TRADE)
    r = _PackingRedis()
    periods = BATCH // SYMBOLS
    batches = max(n // BATCH, 1)

    def loop() -> object:
        ts = START_US
        for _ in range(batches):
            streams.append_events(r, keys, gen.events(list(range(ts, ts + periods))))
            ts += periods
        return None

    return loop, batches * periods * SYMBOLS


def worker_workload(n: int) -> tuple[Loop, int]:
    from pricepipe.keys import Keys
    from pricepipe.workers.batch import days_of, decode_reply, reject_untimely

    keys = Keys(PREFIX, SHARDS)
    replies = raw_replies(_events(n))

    def loop() -> object:
        out = []
        for reply in replies:
            batch = decode_reply(keys, reply)
            reject_untimely(batch)
            batch.row_ack_ids()
            days_of(batch.trades)
            days_of(batch.quotes)
            # The COPY text as the sink joins it: the lines made while decoding.
            out.append((b"".join(batch.trade_lines), b"".join(batch.quote_lines)))
        return out

    return loop, n


def hub_workload(n: int) -> tuple[Loop, int]:
    from pricepipe.codec import entry_to_json
    from pricepipe.keys import Keys
    from pricepipe.streams import reply_streams
    from pricepipe.subscriber.ws.hub import Batch
    from pricepipe.subscriber.ws.protocol import FRAME_END, LIVE_HEADS, id_key, text_frame

    keys = Keys(PREFIX, SHARDS)
    replies = raw_replies(_events(n))
    symbols = sorted({keys.parse_stream(key.decode())[1] for reply in replies
                      for key, _ in reply})
    # Subscriber k follows symbols k, k+1, ... (mod count): each symbol has
    # HUB_SUBSCRIBERS * HUB_SYMBOLS_PER_SUBSCRIBER / SYMBOLS subscribers.
    subs_of: dict[str, list[int]] = {s: [] for s in symbols}
    for k in range(HUB_SUBSCRIBERS):
        for j in range(HUB_SYMBOLS_PER_SUBSCRIBER):
            subs_of[symbols[(k + j) % len(symbols)]].append(k)
    parsed = {key: keys.parse_stream(key.decode()) for reply in replies for key, _ in reply}

    def loop() -> object:
        frames = 0
        for reply in replies:
            pending: dict[int, list[Batch]] = {}
            for stream_key, entries in reply_streams(reply):
                channel, symbol = parsed[stream_key]
                batch = []
                for raw_id, fields in entries:
                    entry_id = raw_id.decode()
                    batch.append((id_key(entry_id), entry_id,
                                  entry_to_json(channel, symbol, fields, entry_id)))
                shared = Batch(symbol, channel, batch)
                for k in subs_of[symbol]:
                    pending.setdefault(k, []).append(shared)
            for batches in pending.values():  # each subscriber's flush, as Session.flush
                if len(batches) == 1:  # one stream's batch: its shared frame
                    batches[0].wire()
                    frames += 1
                    continue
                by_kind: dict[int, list[bytes]] = {}
                for batch_ in batches:
                    by_kind.setdefault(batch_.kind, []).append(batch_.joined)
                for kind, parts in by_kind.items():
                    text_frame(LIVE_HEADS[kind] + b",".join(parts) + FRAME_END)
                    frames += 1
        return frames

    return loop, n


def api_workload(n: int) -> tuple[Loop, int]:
    from pricepipe.api.queries import JsonRows, _Lines, first_rows
    from pricepipe.api.responses import JSON_CHUNK_BYTES
    from pricepipe.codec import encode_json, event_to_dict

    # What PostgreSQL's to_json sends per row: one JSON object and a newline.
    rows = [encode_json(event_to_dict(event, f"{event.ts_us // 1000}-{i}")) + b"\n"
            for i, event in enumerate(_events(n + 1))]

    def loop() -> object:
        sink = _Lines()
        write = sink.write
        for row in rows:  # psycopg2's copy_expert calls write once per row
            write(row)
        page, _ = first_rows(JsonRows(sink.lines, len(rows)), n)
        return sum(len(piece) for piece in page.joined_chunks(JSON_CHUNK_BYTES))

    return loop, n


BUILDERS: dict[str, Callable[[int], tuple[Loop, int]]] = {
    "publisher": publisher_workload, "worker": worker_workload, "hub": hub_workload,
    "api": api_workload}


def child_main(names: Sequence[str], events: int, counted: Sequence[str]) -> int:
    """Build every workload, warm each up, then run those in ``counted``
    inside ``operator.call`` (the counted region), in order; print a JSON
    line ``{"order": [...], "events": {...}}``."""
    import gc
    import operator

    warm = {name: BUILDERS[name](max(events // 10, BATCH))[0] for name in names}
    loops = {name: BUILDERS[name](events) for name in names}
    for name in names:
        warm[name]()
    order = []
    for name in names:
        # A collection inside the loop then scans only what the loop made,
        # never what the builders or an earlier loop left: the same in every run.
        gc.collect()
        gc.freeze()
        if name in counted:
            operator.call(loops[name][0])
            order.append(name)
        gc.unfreeze()
    print(json.dumps({"order": order, "events": {n: loops[n][1] for n in names}}), flush=True)
    return 0


# --- counting (the parent) -------------------------------------------------------------------


def ensure_valgrind() -> str:
    """The path of ``valgrind``, installed with apt-get when missing and
    running as root. Raises :exc:`~pricepipe.exceptions.PricepipeError`
    with what to do otherwise."""
    from pricepipe.exceptions import PricepipeError

    path = shutil.which("valgrind")
    if path:
        return path
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("valgrind is missing: installing it with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "valgrind"], check=False, env=env)
        path = shutil.which("valgrind")
        if path:
            return path
    raise PricepipeError("bench instructions needs valgrind, which is missing and could not "
                         "be installed here: install it (e.g. `sudo apt-get install valgrind`)")


def parse_totals(text: str) -> int:
    """The instruction count of a callgrind output file (its ``summary:`` or
    ``totals:`` line; 0 when it has neither). Pure."""
    match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _child_cmd(names: Sequence[str], events: int, counted: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pricepipe.bench.instructions", "child",
            "--workloads", ",".join(names), "--events", str(events),
            "--count", ",".join(counted)]


def _callgrind(valgrind: str, out: Path, child: list[str], *, toggled: bool) -> dict[str, Any]:
    """One child under callgrind: its JSON line and the dumps' counts in order."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
           "--dump-instr=no", "--dump-line=no"]
    if toggled:
        cmd += ["--collect-atstart=no", f"--toggle-collect={TOGGLE}", f"--dump-after={TOGGLE}"]
    # A fixed hash seed: set and dict orders, and so the counts, repeat. One
    # BLAS thread: idle pool threads spin for as long as the scheduler lets
    # them, which no two runs do alike.
    env = {**os.environ, "PYTHONHASHSEED": "0", **dict.fromkeys(
        ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "1")}
    proc = subprocess.run([*cmd, *child], env=env, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    files = sorted(out.glob("cg.*"), key=lambda p: [int(x) for x in p.name.split(".")[1:]])
    # With --dump-after, cg.<pid>.<n> are the dumps in order, cg.<pid> the rest.
    dumps = [parse_totals(p.read_text()) for p in files if p.name.count(".") == 2]
    for p in files:
        p.unlink()
    return {**json.loads(line), "dumps": dumps}


def count_once(valgrind: str, names: Sequence[str], events: int, work: Path) -> dict[str, int]:
    """Instructions of each workload's counted loop, one full measurement:
    one process, collection on inside :data:`TOGGLE` only, a dump per loop."""
    from pricepipe.exceptions import PricepipeError

    result = _callgrind(valgrind, work / "toggled", _child_cmd(names, events, names),
                        toggled=True)
    if result["order"] == list(names) and len(result["dumps"]) == len(names) \
            and all(result["dumps"]):
        return dict(zip(names, result["dumps"], strict=True))
    raise PricepipeError(f"callgrind found no {TOGGLE} to count in (a stripped interpreter?): "
                         f"{len(result['dumps'])} dump(s) for {len(names)} workload(s)")


def workload_version() -> str:
    """A short hash of this file: counts compare only within one version."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def run(*, redis_url: str | None = None, database_url: str | None = None,
        n: int | None = None, repeats: int | None = None,
        workloads: Sequence[str] = WORKLOADS) -> dict[str, Any]:
    """Count every workload twice (two callgrind processes at once) and
    return the report: ``<workload>_ir_per_event`` per run, their spread and
    whether they agree within :data:`STABLE_WITHIN`. The servers are not
    used; ``repeats`` neither (two counts suffice: they are deterministic)."""
    valgrind = ensure_valgrind()
    events = max(int(n or DEFAULT_EVENTS) // BATCH, 1) * BATCH
    names = list(workloads)
    version = subprocess.run([valgrind, "--version"], capture_output=True, text=True).stdout
    print(f"bench instructions: {', '.join(names)}; {events:,} events each, counted by "
          f"{version.strip()} (two runs at once)", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pricepipe-callgrind-") as tmp, \
            ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(count_once, valgrind, names, events, Path(tmp) / f"run{i}")
                   for i in range(2)]
        counts = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    figures: dict[str, list[float]] = {}
    spreads: dict[str, float] = {}
    for name in names:
        per_event = [c[name] / events for c in counts]
        figures[f"{name}_ir_per_event"] = per_event
        spreads[name] = (max(per_event) - min(per_event)) / max(min(per_event), 1e-9)
        print(f"  {name:<10} {per_event[0]:>12,.0f} {per_event[1]:>12,.0f} Ir per event "
              f"(runs differ by {spreads[name]:.4%})", flush=True)
    report = target_report(
        "instructions", figures=figures, baselines={}, ratios=[],
        params={"events": events, "workloads": names, "runs": len(counts),
                "repeats": len(counts), "batch": BATCH, "symbols": SYMBOLS, "seed": SEED,
                "hub_subscribers": HUB_SUBSCRIBERS,
                "hub_symbols_per_subscriber": HUB_SYMBOLS_PER_SUBSCRIBER,
                "workload_version": workload_version(), "valgrind": version.strip(),
                "python": sys.version.split()[0],
                "samples_note": "no ratios: a count per run, two runs",
                "elapsed_s": round(elapsed, 1)},
        spread=spreads, stable=all(v <= STABLE_WITHIN for v in spreads.values()),
        totals=[{name: int(c[name]) for name in names} for c in counts])
    print(summary_text(report), flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pricepipe.bench.instructions")
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("child", help="the counted process (run under callgrind)")
    c.add_argument("--workloads", default=",".join(WORKLOADS))
    c.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    c.add_argument("--count", default="", help="workloads to run counted (default: none)")
    r = sub.add_parser("run", help="count every workload twice; print the report as JSON")
    r.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    r.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    names = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.what == "child":
        return child_main(names, args.events, [w for w in args.count.split(",") if w])
    print(json.dumps(run(n=args.events, workloads=names)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
