"""``pricepipe soak``: the whole pipeline under steady load for minutes while
a fault schedule breaks it, then a check that nothing was lost or doubled,
and that no reader missed anything without being told.

The soak starts its own embedded Redis, a primary with a replica behind a
replication link it can pause, both with AOF on, every role connecting
through a proxy (the floating address a failover moves), and PostgreSQL,
in a temporary directory. Then it runs every role as a subprocess: GBM
publishers of trades and quotes in real-time mode (disjoint symbol sets),
persist workers, websocket servers, recording websocket clients
(:mod:`pricepipe.bench.probe`, each subscribed to the trades and quotes of
every symbol through one of the servers), and two strategy processes
(:mod:`pricepipe.bench.strategy`), each a consumer group of the client
library: one is told its gaps, the other fills them from PostgreSQL. A
seeded fault schedule (:func:`fault_plan`) then, every
``fault_interval_s``, does one of:

* ``kill_worker`` / ``kill_publisher`` / ``kill_ws``: SIGKILL a random
  process of that role and start it again (a worker under the same consumer
  name, so it reads its own pending entries back; a websocket server on the
  same port, so its clients reconnect and resume);
* ``restart_postgres``: a fast shutdown, or (every other time) a SIGKILL
  crash, then a start; ``restart_redis``: a shutdown of the primary (Redis
  writes its AOF) and a start. Roles must ride through both by themselves;
* ``stall_client``: SIGSTOP a websocket client for ``stall_s``, then
  SIGCONT: a reader that stops reading;
* ``failover``: the replication link paused for ``replica_lag_s``, the
  primary SIGKILLed, the replica promoted and the proxy moved to it, a new
  replica started in the old one's place. The entries the primary had and
  the replica lacked are lost by Redis: the soak records them per stream;
* ``redis_full``: ``maxmemory`` just below what Redis holds and PostgreSQL
  stopped until Redis has refused a write, then PostgreSQL back: nothing
  may exit, and the workers must persist and trim their way out;
* ``stop_strategy``: both strategies stopped (SIGTERM) for longer than the
  workers' hard cap for stopped groups, then started under the same names.

Every kind happens once, in random order, before any repeats (a failover
right after the strategies' stop, while they are down). At the end
the publishers are stopped, the persist group drains, the readers catch
up, and the soak checks (:func:`check_exactly_once`, :func:`check_reader`,
:func:`memory_verdict`):

1. **Every entry Redis accepted is in PostgreSQL exactly once,** per stream
   (a symbol's trades or quotes): ``XINFO STREAM``'s ``entries-added`` of
   the serving Redis (trimming does not lower it, the AOF keeps it) equals
   the distinct entry IDs in the table outside the failovers' lost ranges;
   every entry the stream still holds has its row; no row sits in the
   stream's range without its entry, nor twice. Dead letters count as lost.
   Entries a failover lost are reported beside: persisted before the
   primary died, or gone. Events a publisher re-sent after a failed round
   trip (same time under two IDs: it delivers at least once) too.
2. **No reader lost anything silently.** Per reader and stream, from its
   first entry to the stream's last: every entry the history holds was
   received, or lies in a range the reader was told may be missing (an
   ``unrecoverable`` for a websocket client; a ``Gap`` for a strategy);
   **unexplained** must be 0, and nothing may come twice or out of order
   unless the reader was told it may (``redelivered``, or a websocket
   pair started again after an epoch change).
3. **Memory stayed bounded.** Each process's private resident memory
   (``RssAnon``; PostgreSQL summed over its process tree) in the last third
   of the run is at most ``1.5 x`` its peak in the first third plus 64 MiB.
   The recording readers are reported but not judged: they keep every ID.
4. **No role exited by itself** (each is restarted, as systemd would, and
   listed).

It prints a summary, per reader ``expected / received / flagged /
unexplained``, and exits non-zero when a check fails.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULT_KINDS = ("kill_worker", "kill_publisher", "kill_ws", "restart_postgres",
               "restart_redis", "stall_client", "failover", "redis_full", "stop_strategy")


@dataclass
class SoakParams:
    """What the soak runs."""

    duration_s: float = 600.0
    rate: float = 2000.0  # events/s over all symbols
    symbols: int = 20
    publishers: int = 2
    workers: int = 2
    ws_servers: int = 2
    clients: int = 2
    #: Run the two strategy processes (one told its gaps, one filling them).
    strategies: bool = True
    fault_interval_s: float = 15.0
    stall_s: float = 8.0
    warmup_s: float = 5.0
    drain_timeout_s: float = 120.0
    #: The workers' stream window, hard cap for stopped groups, trim period.
    stream_window_s: int = 60
    max_age_s: int = 90
    trim_interval_s: float = 5.0
    #: How long ``stop_strategy`` keeps the strategies down (None: past the
    #: cap by two trims and some).
    strategy_stop: float | None = None
    #: How far the replica falls behind before a ``failover``.
    replica_lag_s: float = 2.0
    #: ``redis_full``: how far below what Redis holds when it starts
    #: ``maxmemory`` is set (what the workers must free to end it), how long
    #: to wait for Redis to refuse a write (and, after, to get below the
    #: limit), how long to keep PostgreSQL down once it has.
    full_headroom_bytes: int = 64 * 1024
    full_timeout_s: float = 60.0
    full_hold_s: float = 3.0
    seed: int = 7
    faults: tuple[str, ...] = FAULT_KINDS

    @property
    def strategy_stop_s(self) -> float:
        if self.strategy_stop is not None:
            return self.strategy_stop
        return self.max_age_s + 2 * self.trim_interval_s + 3


def fault_plan(duration_s: float, interval_s: float, seed: int, *, warmup_s: float = 0.0,
               kinds: Sequence[str] = FAULT_KINDS) -> list[tuple[float, str]]:
    """``(at_s, kind)`` faults every ``interval_s`` from ``warmup_s`` until
    ``interval_s`` before the end (time for the last one to heal). Every
    kind appears once, in a seeded random order, before any repeats; in the
    first round a ``failover`` comes right after ``stop_strategy``, while
    the strategies are down (their groups fail over with Redis: only their
    checkpoints can tell them what the replica lacked). Pure."""
    rng = random.Random(seed)
    plan: list[tuple[float, str]] = []
    deck: list[str] = []
    first = True
    at = warmup_s + interval_s
    while at <= duration_s - interval_s / 2:
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
            if first and "stop_strategy" in deck and "failover" in deck:
                deck.remove("failover")  # drawn from the end: just after the stop
                deck.insert(deck.index("stop_strategy"), "failover")
            first = False
        plan.append((round(at, 3), deck.pop()))
        at += interval_s
    return plan


# --- checks (pure) ---------------------------------------------------------------------------
#
# A stream is named "<channel>:<symbol>" ("trades:SOAK001") in every check;
# entry IDs are packed (pricepipe.codec.pack_entry_id), so they compare as
# numbers.

#: Above every packed entry ID: the open end of a range.
NO_END = 2**63


def stream_name(channel: str, symbol: str) -> str:
    return f"{channel}:{symbol}"


@dataclass(frozen=True)
class LostRange:
    """Entries of one stream a failover lost: after ``replica_last`` up to and
    including ``primary_last``, ``count`` of them (the two servers'
    ``entries-added`` apart)."""

    replica_last: int
    primary_last: int
    count: int

    def holds(self, entry: int) -> bool:
        return self.replica_last < entry <= self.primary_last


def check_exactly_once(published: dict[str, int], rows: dict[str, list[int]],
                       in_stream: dict[str, list[int]], dead_letters: int,
                       lost: dict[str, list[LostRange]] | None = None) -> dict[str, Any]:
    """Per stream: every entry the surviving Redis accepted has exactly one
    row, and no row lacks its entry, except where a failover lost entries.

    ``published`` is ``entries-added`` of the serving Redis at the end;
    ``rows`` the entry IDs of the stream's rows, one per row (sorted);
    ``in_stream`` the IDs the stream still holds (sorted); ``lost`` the
    failovers' lost ranges. A lost entry was either persisted before the
    primary died (its row stays: the history holds what Redis lost) or is
    gone everywhere; both are reported, neither is a duplicate nor a loss
    here: the readers' checks demand that they were signalled. The serving
    Redis counts no lost entry in ``entries-added``, so the rows outside the
    lost ranges must number exactly ``published``. Pure."""
    lost = lost or {}
    totals = {"lost": 0, "duplicated": 0, "failover_lost": 0, "failover_persisted": 0}
    bad: dict[str, dict[str, int]] = {}
    for stream in sorted(set(published) | set(rows)):
        ranges = lost.get(stream, [])
        ids = rows.get(stream, [])
        distinct = sorted(set(ids))
        inside = [e for e in distinct if any(lr.holds(e) for lr in ranges)]
        outside = len(distinct) - len(inside)
        added = published.get(stream, 0)
        held = set(in_stream.get(stream, []))
        have = set(distinct)
        missing = len(held - have)
        extra = 0
        if held:
            low, high = min(held), max(held)
            extra = sum(1 for e in distinct if low <= e <= high and e not in held
                        and not any(lr.holds(e) for lr in ranges))
        sym_lost = max(added - outside, 0) + missing
        sym_dup = (len(ids) - len(distinct)) + max(outside - added, 0) + extra
        totals["lost"] += sym_lost
        totals["duplicated"] += sym_dup
        totals["failover_persisted"] += len(inside)
        totals["failover_lost"] += max(sum(lr.count for lr in ranges) - len(inside), 0)
        if sym_lost or sym_dup:
            bad[stream] = {"published": added, "rows": len(ids), "distinct": len(distinct),
                           "missing": missing, "extra": extra}
    totals["lost"] += dead_letters
    return {"published": sum(published.values()), "rows": sum(len(v) for v in rows.values()),
            **totals, "dead_letters": dead_letters, "bad_streams": bad,
            "ok": totals["lost"] == 0 and totals["duplicated"] == 0}


@dataclass
class ReaderLog:
    """What one reader got, per stream: the IDs in receipt order
    (``received``), the open ranges it was told may be missing
    (``flagged``), and the IDs it was told may come again (``repeat_ok``:
    a consumer group's ``redelivered``, or what a websocket server sends
    again after an epoch change)."""

    received: dict[str, list[int]] = field(default_factory=dict)
    flagged: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    repeat_ok: dict[str, set[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def check_reader(log: ReaderLog, truth: dict[str, list[int]],
                 last_ids: dict[str, int]) -> dict[str, Any]:
    """One reader against the complete history (``truth``: per stream the
    sorted IDs in PostgreSQL, complete by :func:`check_exactly_once`).

    Per stream, from the first entry the reader got or was told about to
    the stream's last entry (``last_ids``): **expected** is what the history
    holds; each expected entry was **received**, or **flagged** (inside a
    range the reader was told may be missing), or else **unexplained**,
    which must be 0. An entry received twice, or out of order, is a
    **duplicate** unless the reader was told it may come again. A reader
    must also reach every stream's last entry (or a range flagged open to
    the end). Pure."""
    import bisect

    from pricepipe.codec import unpack_entry_id

    totals = {"expected": 0, "received": 0, "flagged": 0, "unexplained": 0,
              "duplicates": 0}
    not_at_end: list[str] = []
    examples: list[str] = []
    for stream in sorted(set(log.received) | set(log.flagged)):
        ids = log.received.get(stream, [])
        flagged = log.flagged.get(stream, [])
        repeat_ok = log.repeat_ok.get(stream, set())
        seen: set[int] = set()
        high = -1
        for entry in ids:
            if (entry in seen or entry <= high) and entry not in repeat_ok:
                totals["duplicates"] += 1
                if len(examples) < 5:
                    examples.append(f"{stream}: {unpack_entry_id(entry)} again or out of order")
            seen.add(entry)
            high = max(high, entry)
        starts = [*([min(ids)] if ids else []), *(after + 1 for after, _ in flagged)]
        if not starts:
            continue
        history = truth.get(stream, [])
        last = last_ids.get(stream, history[-1] if history else -1)
        window = history[bisect.bisect_left(history, min(starts)):
                         bisect.bisect_right(history, last)]
        run: list[int] = []
        for item in [*window, None]:  # None ends the last run
            if item is not None:
                totals["expected"] += 1
                if item in seen:
                    totals["received"] += 1
                elif any(after < item < until for after, until in flagged):
                    totals["flagged"] += 1
                else:
                    totals["unexplained"] += 1
                    run.append(item)
                    continue
            if run and len(examples) < 5:
                examples.append(f"{stream}: {len(run)} unexplained from "
                                f"{unpack_entry_id(run[0])} to {unpack_entry_id(run[-1])}")
            run = []
        reached = high >= last or any(until == NO_END or until > last
                                      for _, until in flagged)
        if last >= 0 and not reached:
            not_at_end.append(stream)
    never = sorted(set(last_ids) - {s for s, ids in log.received.items() if ids}
                   - set(log.flagged))
    return {**totals, "not_at_end": not_at_end, "never_received": never,
            "examples": examples, "errors": log.errors[:5],
            "ok": (totals["unexplained"] == 0 and totals["duplicates"] == 0
                   and not not_at_end and not never and not log.errors)}


def probe_log(record: dict[str, Any]) -> ReaderLog:
    """A websocket probe's record (:mod:`pricepipe.bench.probe`) as a
    :class:`ReaderLog`.

    An ``unrecoverable`` message flags the range from its ``after`` to the
    next entry recorded above it (what the snapshot and the live entries
    after it started from; open when none came). After one for an epoch
    change the server starts the pair again from the stream the new Redis
    holds, which may hold less than the client had: entries recorded after
    the message that are not above everything recorded before it may
    repeat. Pure."""
    from pricepipe.codec import pack_entry_id

    log = ReaderLog()
    for channel, by_symbol in (record.get("received") or {}).items():
        for symbol, ids in by_symbol.items():
            log.received[stream_name(channel, symbol)] = list(ids)
    for msg in record.get("unrecoverable") or []:
        stream = stream_name(str(msg.get("channel")), str(msg.get("symbol")))
        try:
            after = pack_entry_id(msg["after"])
        except (KeyError, TypeError, ValueError):
            after = -1  # nothing received before it: from the start
        ids = log.received.get(stream, [])
        index = int(msg.get("received_index", len(ids)))
        until = next((e for e in ids[index:] if e > after), NO_END)
        log.flagged.setdefault(stream, []).append((after, until))
        if msg.get("reason") == "epoch":
            before = max(ids[:index], default=-1)
            log.repeat_ok.setdefault(stream, set()).update(
                e for e in ids[index:] if e <= before)
    log.errors = [e for e in record.get("errors") or [] if e.startswith("undecodable")]
    return log


def strategy_log(lives: list[dict[str, Any]]) -> ReaderLog:
    """A strategy process's lives (:mod:`pricepipe.bench.strategy`) as a
    :class:`ReaderLog`: deliveries in order across lives, gaps flagged, the
    ``redelivered`` ones allowed to repeat. Pure."""
    from pricepipe.codec import pack_entry_id

    log = ReaderLog()
    for life in lives:
        for channel, symbol, entry, redelivered, _filled in life.get("deliveries", []):
            stream = stream_name(channel, symbol)
            log.received.setdefault(stream, []).append(int(entry))
            if redelivered:
                log.repeat_ok.setdefault(stream, set()).add(int(entry))
        for channel, symbol, after, until, _reason, _filled in life.get("gaps", []):
            log.flagged.setdefault(stream_name(channel, symbol), []).append(
                (pack_entry_id(after), pack_entry_id(until)))
        log.errors.extend(life.get("errors", []))
    return log


def memory_verdict(samples: list[tuple[float, float]], start_s: float, end_s: float, *,
                   factor: float = 1.5, slack_mib: float = 64.0) -> dict[str, Any]:
    """``samples`` of ``(monotonic_s, mib)``: bounded if the peak of the last
    third of ``start_s..end_s`` is at most ``factor`` x the first third's
    peak + ``slack_mib``. Pure."""
    third = (end_s - start_s) / 3
    first = [m for t, m in samples if start_s <= t < start_s + third]
    last = [m for t, m in samples if end_s - third <= t <= end_s]
    if not first or not last:
        return {"bounded": True, "first_peak_mib": None, "last_peak_mib": None,
                "note": "too few samples"}
    first_peak, last_peak = max(first), max(last)
    return {"bounded": last_peak <= first_peak * factor + slack_mib,
            "first_peak_mib": round(first_peak, 1), "last_peak_mib": round(last_peak, 1)}


# --- the run (I/O) --------------------------------------------------------------------------


def _redis(url: str) -> Any:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # The soak restarts Redis under its own feet: retry a command across it.
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError])


def _direct(server: Any) -> Any:
    """A plain client of one server, past the proxy."""
    import redis

    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)


def _stream_states(client: Any, names: list[str]) -> dict[str, tuple[int, int]]:
    """Per stream name, ``(packed last-generated-id, entries-added)``;
    ``(-1, 0)`` for a stream the server does not have."""
    from pricepipe.codec import pack_entry_id

    pipe = client.pipeline(transaction=False)
    for key in names:
        pipe.xinfo_stream(key)
    out = {}
    for key, info in zip(names, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(info, Exception):
            out[key] = (-1, 0)
        else:
            out[key] = (pack_entry_id(info["last-generated-id"]),
                        int(info.get("entries-added") or 0))
    return out


class _RedisPair:
    """The soak's Redis: a primary, a replica fed through a replication link
    that can be paused (so it really falls behind), and the proxy every
    role connects through: the floating address a failover moves, as a
    virtual IP or a Sentinel-aware proxy would in production."""

    def __init__(self, tmp: Path) -> None:
        from pricepipe.embedded import RedisServer

        self.tmp = tmp
        self.primary = RedisServer(tmp / "redis-a")
        self.replica: Any = None
        self.link: Any = None
        self.proxy: Any = None
        self._spare_dir = tmp / "redis-b"

    @property
    def url(self) -> str:
        return str(self.proxy.url)

    def start(self) -> None:
        from .proxy import TcpProxy

        self.primary.start()
        self.proxy = TcpProxy(self.primary.port)
        self._start_replica()

    def _start_replica(self) -> None:
        import shutil
        import time

        from pricepipe.embedded import RedisServer

        from .proxy import TcpProxy

        data_dir, self._spare_dir = self._spare_dir, self.primary.data_dir
        shutil.rmtree(data_dir, ignore_errors=True)  # a new replica syncs in full
        self.link = TcpProxy(self.primary.port)
        self.replica = RedisServer(data_dir, extra_args=("--replicaof", "127.0.0.1",
                                                         str(self.link.port)))
        self.replica.start()
        client = _direct(self.replica)
        try:
            deadline = time.monotonic() + 60
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the soak's replica did not sync")
                time.sleep(0.1)
        finally:
            client.close()

    def restart_primary(self) -> None:
        import time

        self.primary.stop()
        time.sleep(1.0)
        self.primary.start()

    def failover(self, streams: list[str], lag_s: float) -> dict[str, LostRange]:
        """Let the replica fall ``lag_s`` behind, SIGKILL the primary, promote
        the replica, move the floating address to it, and start a new
        replica in the old primary's place. Returns, per stream, what the
        promoted replica lacks of what the primary had accepted."""
        import time

        primary, replica = _direct(self.primary), _direct(self.replica)
        try:
            self.link.pause()
            time.sleep(lag_s)
            # A moment of silence while the primary is measured: commands in
            # flight wait in the proxy and are dropped with its connections.
            self.proxy.pause()
            time.sleep(0.05)
            had = _stream_states(primary, streams)
            self.primary.kill()
            self.link.close()
            got = _stream_states(replica, streams)
            replica.replicaof("NO", "ONE")
        finally:
            primary.close()
            replica.close()
        self.replica.extra_args = ()  # restarted later, it stays a primary
        self.primary, self.replica = self.replica, None
        self.proxy.retarget(self.primary.port)
        self._start_replica()
        return {key: LostRange(got[key][0], had[key][0], had[key][1] - got[key][1])
                for key in streams if had[key][1] > got[key][1]}

    def stop(self) -> None:
        for proxy in (self.proxy, self.link):
            if proxy is not None:
                proxy.close()
        for server in (self.primary, self.replica):
            if server is not None:
                server.stop()


def _oom_refusals(client: Any) -> int:
    """Commands the server refused for want of memory since it started."""
    stats = client.info("errorstats")
    entry = stats.get("errorstat_OOM") or {}
    return int(entry.get("count", 0)) if isinstance(entry, dict) else 0


class _Faults:
    """Carries out faults on the soak's processes and servers. Long faults
    call ``housekeeping`` while they wait, so that stalled clients resume
    and exited roles restart on time meanwhile."""

    def __init__(self, roles: dict[str, list[Any]], pair: _RedisPair, pg: Any,
                 rng: random.Random, params: SoakParams, streams: dict[str, str]) -> None:
        self.roles = roles
        self.pair = pair
        self.pg = pg
        self.rng = rng
        self.params = params
        #: Redis key -> stream name (see :func:`stream_name`) of every judged stream
        self.streams = streams
        #: ``(due monotonic_s, what, role)``: a SIGCONT or a start to do later
        self.due: list[tuple[float, str, Any]] = []
        #: Roles down on purpose (not to be restarted as unexpected exits).
        self.down: set[str] = set()
        self.done: list[dict[str, Any]] = []
        #: Per stream, what failovers lost.
        self.lost: dict[str, list[LostRange]] = {}
        self.housekeeping: Any = lambda: None
        self._pg_crash = False

    def run(self, kind: str, now_s: float) -> str:
        import os
        import signal
        import time

        if kind in ("kill_worker", "kill_publisher", "kill_ws"):
            group = {"kill_worker": "worker", "kill_publisher": "publisher",
                     "kill_ws": "ws"}[kind]
            role = self.rng.choice(self.roles[group])
            role.kill()
            time.sleep(0.3)
            role.start()
            return str(role.name)
        if kind == "restart_postgres":
            self._pg_crash = not self._pg_crash
            if self._pg_crash and self.pg.proc is not None:
                # The whole process group: a lone SIGKILLed postmaster would
                # leave backends holding its shared memory.
                os.killpg(self.pg.proc.pid, signal.SIGKILL)
                self.pg.proc.wait()
                detail = "crash (SIGKILL)"
            else:
                self.pg.stop()
                detail = "fast shutdown"
            time.sleep(1.0)
            self.pg.start()
            return detail
        if kind == "restart_redis":
            self.pair.restart_primary()
            return "shutdown (AOF) and start"
        if kind == "failover":
            lost = self.pair.failover(list(self.streams), self.params.replica_lag_s)
            for key, lost_range in lost.items():
                self.lost.setdefault(self.streams[key], []).append(lost_range)
            return (f"replica {self.params.replica_lag_s:.1f}s behind promoted; "
                    f"{sum(lr.count for lr in lost.values())} entries lost by Redis")
        if kind == "redis_full":
            return self._redis_full()
        if kind == "stall_client":
            stalled = {id(role) for _, what, role in self.due if what == "cont"}
            candidates = [c for c in self.roles["client"] if id(c) not in stalled]
            if not candidates:
                return "skipped: every client already stalled"
            client = self.rng.choice(candidates)
            client.signal(signal.SIGSTOP)
            self.due.append((now_s + self.params.stall_s, "cont", client))
            return f"{client.name} for {self.params.stall_s:.0f}s"
        if kind == "stop_strategy":
            stopped = [s for s in self.roles["strategy"] if s.name not in self.down]
            if not stopped:
                return "skipped: the strategies are already stopped"
            for role in stopped:
                role.stop(30)
                self.down.add(role.name)
                self.due.append((now_s + self.params.strategy_stop_s, "start", role))
            return (f"{', '.join(r.name for r in stopped)} for "
                    f"{self.params.strategy_stop_s:.0f}s (the hard cap is "
                    f"{self.params.max_age_s}s)")
        raise ValueError(f"unknown fault {kind!r}")

    def _wait(self, seconds: float, until: Any = None) -> bool:
        """Up to ``seconds`` (doing housekeeping) or until ``until()`` is true."""
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.housekeeping()
            try:
                if until is not None and until():
                    return True
            except Exception:  # noqa: BLE001 - Redis may be refusing or restarting
                pass
            time.sleep(0.2)
        return False

    def _redis_full(self) -> str:
        """``maxmemory`` just below what Redis holds, PostgreSQL stopped until
        Redis has refused a write, then PostgreSQL back: the workers must
        persist and trim their way out, the publishers follow their policy.

        Below, not above: with room left, the publishers stop at their
        high-water mark before Redis is full (their policy working), and
        Redis may then never refuse anything. Below what it holds, Redis
        refuses every write that may grow memory (a worker's heartbeat, a
        publisher's append) until the workers have freed room."""
        import time

        client = _direct(self.pair.primary)
        try:
            refused = _oom_refusals(client)
            limit = max(int(client.info("memory")["used_memory"])
                        - self.params.full_headroom_bytes, 1)
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", limit)
            self.pg.stop()
            started = time.monotonic()
            full = self._wait(self.params.full_timeout_s,
                              lambda: _oom_refusals(client) > refused)
            filled_s = time.monotonic() - started
            self._wait(self.params.full_hold_s)
            self.pg.start()
            self._wait(self.params.full_timeout_s,
                       lambda: int(client.info("memory")["used_memory"]) < limit)
            refusals = _oom_refusals(client) - refused
            client.config_set("maxmemory", 0)
        finally:
            client.close()
        if not full:
            return f"Redis never refused a write in {self.params.full_timeout_s:.0f}s"
        return (f"full, first write refused after {filled_s:.1f}s, {refusals} refused in "
                f"all, PostgreSQL back after {self.params.full_hold_s:.0f}s more")

    def run_due(self, now_s: float, *, all_now: bool = False) -> None:
        import signal

        keep = []
        for due, what, role in self.due:
            if not (all_now or now_s >= due):
                keep.append((due, what, role))
            elif what == "cont":
                role.signal(signal.SIGCONT)
            else:
                role.start()
                self.down.discard(role.name)
        self.due = keep


def run_soak(params: SoakParams, *, json_path: str | None = None,
             keep_dir: bool = False) -> dict[str, Any]:
    """Run the soak (see the module doc); returns the summary (``"ok"``)."""
    import shutil
    import signal
    import tempfile
    import time

    from pricepipe.codec import encode_json
    from pricepipe.connections import pg_connect
    from pricepipe.embedded import PostgresServer, free_port
    from pricepipe.keys import Keys
    from pricepipe.migrate import migrate
    from pricepipe.streams import register_symbols
    from pricepipe.supervisor import wait_http

    from .e2e import (
        Probe,
        Role,
        persisted_streams,
        published_count,
        role_env,
        split,
        symbol_names,
        wait_drained,
        waiting_ages_ms,
    )
    from .procstat import ProcessSampler

    tmp = Path(tempfile.mkdtemp(prefix="pricepipe-soak-"))
    tmp.chmod(0o755)  # PostgreSQL may run as an unprivileged user
    log_dir = tmp / "logs"
    log_dir.mkdir()
    pair = _RedisPair(tmp)
    pg = PostgresServer(tmp / "pg", database="pricepipe_soak")
    all_roles: list[Any] = []
    sampler: ProcessSampler | None = None
    r: Any = None
    try:
        pair.start()
        pg.start()
        conn = pg_connect(pg.url, application_name="pricepipe-soak")
        try:
            migrate(conn)
        finally:
            conn.close()
        keys = Keys("pp", 8)
        names = symbol_names(params.symbols, "SOAK")
        stream_keys = persisted_streams(keys, names)
        env = role_env(pair.url, pg.url, "pp")
        env.update({"PRICEPIPE_WORKER_STREAM_WINDOW_S": str(params.stream_window_s),
                    "PRICEPIPE_WORKER_STREAM_MAX_AGE_S": str(params.max_age_s),
                    "PRICEPIPE_WORKER_TRIM_INTERVAL_S": str(params.trim_interval_s)})
        r = _redis(pair.url)
        register_symbols(r, keys, names)

        per_symbol = params.rate / len(names)
        publishers = [
            Role(f"publisher{i}", ["publish", "--source", "gbm", "--symbols", ",".join(group),
                                   "--rate", f"{per_symbol:.6g}", "--seed", str(i)], env, log_dir)
            for i, group in enumerate(split(names, params.publishers))]
        workers = [Role(f"worker{i}", ["persist", "--name", f"soak-{i}"], env, log_dir)
                   for i in range(params.workers)]
        ports = [free_port() for _ in range(params.ws_servers)]
        servers = [Role(f"ws{i}", ["ws", "--host", "127.0.0.1", "--port", str(port)], env,
                        log_dir) for i, port in enumerate(ports)]
        # Two strategies in their own consumer groups: one is told its gaps,
        # the other fills them from PostgreSQL.
        strategies = [
            Role(f"strategy{i}", ["--symbols", ",".join(names), "--group", f"soak-strategy{i}",
                                  "--consumer", "c", "--record", str(tmp / f"strategy{i}.jsonl"),
                                  "--checkpoint", str(tmp / f"strategy{i}.checkpoint.json"),
                                  *(["--fill-gaps"] if i else [])],
                 env, log_dir, module="pricepipe.bench.strategy")
            for i in range(2 if params.strategies else 0)]
        for role in [*workers, *servers, *strategies]:
            role.start()
            all_roles.append(role)
        for port, server in zip(ports, servers, strict=True):
            if not wait_http(f"http://127.0.0.1:{port}/healthz", 30, server.proc):
                raise RuntimeError(f"{server.name} did not come up:\n{server.tail()}")
        clients = [Probe(f"client{i}", f"ws://127.0.0.1:{ports[i % len(ports)]}/ws", names,
                         env, log_dir, record=tmp / f"client{i}.json", report_interval_s=1.0)
                   for i in range(params.clients)]
        for role in [*clients, *publishers]:
            role.start()
            all_roles.append(role)

        sampler = ProcessSampler({}, interval_s=2.0)
        for role in all_roles:
            sampler.add(role.name, _pid_of(role))
        sampler.add("redis", _pid_of(pair, "primary"))
        sampler.add("postgres", _pid_of(pg), tree=True)
        sampler.start()

        roles: dict[str, list[Any]] = {"worker": workers, "publisher": publishers,
                                       "ws": servers, "client": clients,
                                       "strategy": strategies}
        kinds = [k for k in params.faults if strategies or k != "stop_strategy"]
        judged = {key: stream_name(str(channel), symbol)
                  for key, (channel, symbol) in ((k, keys.parse_stream(k)) for k in stream_keys)}
        faults = _Faults(roles, pair, pg, random.Random(params.seed), params, judged)
        plan = fault_plan(params.duration_s, params.fault_interval_s, params.seed,
                          warmup_s=params.warmup_s, kinds=kinds)
        unexpected: list[str] = []
        start = time.monotonic()

        def housekeeping() -> None:
            now = time.monotonic()
            faults.run_due(now)
            for role in all_roles:
                if (role.proc is not None and role.proc.poll() is not None
                        and role.name not in faults.down):
                    unexpected.append(f"{role.name} exited with {role.proc.returncode} "
                                      f"at {now - start:.0f}s")
                    print(f"  {now - start:6.1f}s {unexpected[-1]}; restarting it:\n"
                          f"{role.tail(5)}", flush=True)
                    role.start()

        faults.housekeeping = housekeeping
        print(f"soak: {params.duration_s:.0f}s at {params.rate:.0f} events/s over "
              f"{len(names)} symbols; {len(plan)} faults; logs in {log_dir}", flush=True)
        next_status = start + 10
        while True:
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= params.duration_s:
                break
            housekeeping()
            while plan and plan[0][0] <= elapsed:
                _, kind = plan.pop(0)
                at = time.monotonic() - start
                detail = faults.run(kind, time.monotonic())
                faults.done.append({"at_s": round(at, 1), "kind": kind, "detail": detail})
                print(f"  {at:6.1f}s fault {kind}: {detail}", flush=True)
            if now >= next_status:
                next_status = now + 10
                try:
                    published = published_count(r, keys, names)
                    oldest_s = max(waiting_ages_ms(r, keys, names), default=0.0) / 1000
                    print(f"  {elapsed:6.1f}s published {published:,}  oldest event not yet "
                          f"persisted: {oldest_s:.1f}s old", flush=True)
                except Exception as exc:  # noqa: BLE001 - status only; Redis may be down
                    print(f"  {elapsed:6.1f}s status unavailable: {exc}", flush=True)
            time.sleep(0.2)
        end = time.monotonic()

        # Wind down: everything running and reading, then a graceful stop.
        faults.run_due(end, all_now=True)
        exit_codes: dict[str, int | None] = {}
        for publisher in publishers:
            exit_codes[publisher.name] = publisher.stop(30)
        drained = wait_drained(r, keys, names, params.drain_timeout_s)
        last_ids = _last_ids(r, stream_keys, keys)
        _wait_idle(clients, 20.0)
        _wait_strategies(r, keys, names, len(strategies), 20.0)
        for role in [*clients, *strategies, *workers, *servers]:
            exit_codes[role.name] = role.stop(30)
        sampler.stop()

        summary = _verify(r, pg.url, keys, names, clients, strategies, last_ids, faults.lost)
        memory = {name: memory_verdict(series.anon_series_mib(), start, end)
                  for name, series in sampler.series().items()}
        for role in [*clients, *strategies]:
            # A recording reader keeps every entry ID it receives: it grows
            # by design, so it is reported but not judged.
            memory[role.name]["bounded"] = True
            memory[role.name]["note"] = "recording reader, grows by design: not judged"

        summary.update({
            "params": params.__dict__, "drained": drained, "faults": faults.done,
            "unexpected_exits": unexpected, "exit_codes": exit_codes, "memory": memory,
            "memory_ok": all(v["bounded"] for v in memory.values()),
        })
        summary["ok"] = bool(summary["exactly_once"]["ok"] and summary["readers_ok"]
                             and summary["memory_ok"] and drained and not unexpected)
        _print_summary(summary)
        if json_path:
            Path(json_path).write_bytes(encode_json(summary))
        return summary
    finally:
        if sampler is not None:
            sampler.stop()
        for role in all_roles:
            role.signal(signal.SIGCONT)  # a stalled client must hear SIGTERM
            role.stop(10)
        if r is not None:
            r.close()
        pair.stop()
        pg.stop()
        if keep_dir:
            print(f"data and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_of(process: Any, attribute: str | None = None) -> Any:
    """The current pid of a role or embedded server (they are restarted;
    ``attribute`` names the server of a holder whose server changes)."""
    def pid() -> int | None:
        server = getattr(process, attribute) if attribute else process
        proc = server.proc
        return proc.pid if proc is not None and proc.poll() is None else None
    return pid


def _last_ids(r: Any, stream_keys: list[str], keys: Any) -> dict[str, int]:
    from pricepipe.codec import pack_entry_id

    out = {}
    for key in stream_keys:
        rows = r.xrevrange(key, count=1)
        if rows:
            channel, symbol = keys.parse_stream(key)
            out[stream_name(str(channel), symbol)] = pack_entry_id(rows[0][0])
    return out


def _wait_idle(clients: list[Any], timeout_s: float) -> None:
    """Until every client's last two reports received nothing (caught up)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(len(c.lines) >= 2 and c.lines[-1]["n"] == 0 and c.lines[-2]["n"] == 0
               for c in clients):
            return
        time.sleep(0.5)


def _wait_strategies(r: Any, keys: Any, names: list[str], count: int,
                     timeout_s: float) -> None:
    """Until the strategies' groups have nothing left to read or acknowledge."""
    import time

    from pricepipe.keys import PERSISTED

    deadline = time.monotonic() + timeout_s
    groups = {f"soak-strategy{i}" for i in range(count)}
    while groups and time.monotonic() < deadline:
        try:
            busy = False
            for symbol in names:
                for channel in PERSISTED:
                    for info in r.xinfo_groups(keys.stream(symbol, channel)):
                        name = info["name"].decode()
                        if name in groups and (int(info["pending"]) or info.get("lag")):
                            busy = True
            if not busy:
                return
        except Exception:  # noqa: BLE001 - only a wait
            pass
        time.sleep(0.5)


def _stream_ids(r: Any, stream: str) -> list[int]:
    from pricepipe.codec import pack_entry_id

    out: list[int] = []
    cursor = "-"
    while True:
        rows = r.xrange(stream, min=cursor, max="+", count=10_000)
        if not rows:
            return out
        out.extend(pack_entry_id(entry_id) for entry_id, _ in rows)
        cursor = "(" + rows[-1][0].decode()


def _verify(r: Any, database_url: str, keys: Any, names: list[str], clients: list[Any],
            strategies: list[Any], last_ids: dict[str, int],
            lost: dict[str, list[LostRange]]) -> dict[str, Any]:
    from psycopg2 import sql

    from pricepipe.connections import pg_connect
    from pricepipe.keys import PERSISTED

    from .probe import load_record
    from .strategy import load_lives

    published: dict[str, int] = {}
    in_stream: dict[str, list[int]] = {}
    for channel in PERSISTED:
        for symbol in names:
            key = keys.stream(symbol, channel)
            name = stream_name(str(channel), symbol)
            info = r.xinfo_stream(key)
            published[name] = int(info.get("entries-added") or 0)
            in_stream[name] = _stream_ids(r, key)
    truth: dict[str, list[int]] = {}
    resends = 0
    conn = pg_connect(database_url, application_name="pricepipe-soak-verify")
    try:
        with conn.cursor() as cur:
            for channel in PERSISTED:
                table = sql.Identifier(str(channel))
                cur.execute(sql.SQL("SELECT symbol, entry_id FROM {} WHERE symbol = ANY(%s)"
                                    " ORDER BY symbol, entry_id").format(table), (names,))
                for symbol, entry_id in cur.fetchall():
                    truth.setdefault(stream_name(str(channel), symbol), []).append(
                        int(entry_id))
                # An event a publisher appended twice after a failed round
                # trip (it delivers at least once): same symbol and time.
                cur.execute(sql.SQL("SELECT count(*) - count(DISTINCT (symbol, ts)) FROM {}"
                                    " WHERE symbol = ANY(%s)").format(table), (names,))
                row = cur.fetchone()
                resends += int(row[0]) if row else 0
        conn.commit()
    finally:
        conn.close()
    dead = sum(int(r.xlen(keys.dead_letters(s))) for s in keys.all_shards())
    exactly_once = check_exactly_once(published, truth, in_stream, dead, lost)
    exactly_once["publisher_resends"] = resends

    readers: dict[str, dict[str, Any]] = {}
    for client in clients:
        try:
            record = load_record(client.record)
        except (OSError, ValueError) as exc:
            readers[client.name] = {"ok": False, "error": f"no record: {exc}"}
            continue
        result = check_reader(probe_log(record), truth, last_ids)
        result.update({"kind": "websocket",
                       "connects": record.get("connects"),
                       "conflated_frames": record.get("conflated_frames"),
                       "slow_closes": record.get("slow_closes"),
                       "resubscribes": record.get("resubscribes"),
                       "unrecoverable": _reasons(m.get("reason")
                                                 for m in record.get("unrecoverable", []))})
        readers[client.name] = result
    for strategy in strategies:
        lives = load_lives(tmp_record(strategy))
        if not lives:
            readers[strategy.name] = {"ok": False, "error": "no record"}
            continue
        log = strategy_log(lives)
        result = check_reader(log, truth, last_ids)
        filling = "--fill-gaps" in strategy.args
        result.update({
            "kind": "group, fills gaps" if filling else "group, told its gaps",
            "lives": len(lives),
            "gaps": _reasons(g[4] for life in lives for g in life.get("gaps", [])),
            "filled": sum(1 for life in lives for d in life.get("deliveries", []) if d[4]),
            "redelivered": sum(1 for life in lives for d in life.get("deliveries", [])
                               if d[3])})
        readers[strategy.name] = result
    return {"exactly_once": exactly_once, "readers": readers,
            "readers_ok": all(c["ok"] for c in readers.values())}


def tmp_record(strategy: Any) -> Path:
    """The record file a strategy role was started with."""
    return Path(strategy.args[strategy.args.index("--record") + 1])


def _reasons(reasons: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in reasons:
        out[str(reason)] = out.get(str(reason), 0) + 1
    return out


def _print_summary(summary: dict[str, Any]) -> None:
    once = summary["exactly_once"]
    print("soak summary", flush=True)
    print(f"  faults: {len(summary['faults'])} "
          f"({', '.join(sorted({f['kind'] for f in summary['faults']}))})")
    print(f"  published {once['published']:,}  rows {once['rows']:,}  lost {once['lost']}  "
          f"duplicated {once['duplicated']}  dead letters {once['dead_letters']}  "
          f"lost by failovers {once['failover_lost']} (of which persisted before "
          f"{once['failover_persisted']})  publisher re-sends {once['publisher_resends']}  "
          f"drained {summary['drained']}")
    print("  reader: expected / received / flagged / unexplained, duplicates")
    for name, c in summary["readers"].items():
        if "error" in c:
            print(f"  {name}: {c['error']}")
            continue
        extra = {k: c[k] for k in ("connects", "conflated_frames", "unrecoverable", "lives",
                                   "gaps", "filled", "redelivered") if k in c}
        print(f"  {name} ({c['kind']}): {c['expected']:,} / {c['received']:,} / "
              f"{c['flagged']:,} / {c['unexplained']:,}, {c['duplicates']}  {extra}"
              f"{'  not at end: ' + str(c['not_at_end']) if c['not_at_end'] else ''}"
              f"{'  ' + '; '.join(c['examples']) if c['examples'] else ''}"
              f"{'  errors: ' + str(c['errors']) if c['errors'] else ''}")
    for name, m in summary["memory"].items():
        print(f"  memory {name}: first third {m['first_peak_mib']} MiB, last third "
              f"{m['last_peak_mib']} MiB{'' if m['bounded'] else '  NOT BOUNDED'}"
              f"{'  (' + m['note'] + ')' if m.get('note') else ''}")
    if summary["unexpected_exits"]:
        print(f"  unexpected exits: {summary['unexpected_exits']}")
    bad_exits = {k: v for k, v in summary["exit_codes"].items() if v not in (0, None)}
    if bad_exits:
        print(f"  non-zero exit codes after SIGTERM: {bad_exits}")
    print(f"soak {'PASSED' if summary['ok'] else 'FAILED'}", flush=True)
