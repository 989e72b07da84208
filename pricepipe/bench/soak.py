"""``pricepipe soak``: the whole pipeline under steady load for minutes while
a fault schedule breaks it, then a check that nothing was lost or doubled.

The soak starts its own embedded ``redis-server`` (AOF on) and PostgreSQL in
a temporary directory, then runs every role as a ``pricepipe`` subprocess:
GBM publishers in real-time mode (disjoint symbol sets), persist workers,
websocket servers, and recording websocket clients
(:mod:`pricepipe.bench.probe`, each subscribed to every symbol through one of
the servers). A seeded fault schedule (:func:`fault_plan`) then, every
``fault_interval_s``, does one of:

* ``kill_worker`` / ``kill_publisher`` / ``kill_ws``: SIGKILL a random
  process of that role and start it again (a worker under the same consumer
  name, so it reads its own pending entries back; a websocket server on the
  same port, so its clients reconnect and resume);
* ``restart_postgres``: a fast shutdown, or (every other time) a SIGKILL
  crash, then a start; ``restart_redis``: a shutdown (Redis writes its AOF)
  and a start. Roles must ride through both by themselves;
* ``stall_client``: SIGSTOP a websocket client for ``stall_s``, then
  SIGCONT: a reader that stops reading.

Every kind happens at least once when the run is long enough. At the end
the publishers are stopped, the persist group drains, and the soak checks:

1. **Every published tick is in PostgreSQL exactly once.** What was
   published is what the streams hold: a publisher killed mid-pipeline may
   have had ticks appended whose replies it never read, so its own count is
   not the truth, the stream is. Per symbol, ``XINFO STREAM``'s
   ``entries-added`` (every entry ever appended; trimming does not lower
   it, and the AOF keeps it across restarts) must equal the number of
   distinct entry IDs in ``ticks`` and the number of rows; and every entry
   still in the stream must have its row (compared by packed entry ID), with
   no row inside the stream's ID range that the stream lacks. Dead letters
   count as lost. Ticks a publisher re-sent after a failed round trip (same
   symbol and event time under two entry IDs; the publisher delivers at
   least once) are reported beside, not counted as loss.
2. **Resumed websocket clients saw no gap and no duplicate.** Per client and
   symbol, the received entry IDs must be strictly increasing, and equal to
   the symbol's entry IDs in PostgreSQL (proven complete by 1.) between the
   first and the last one received. Ticks the server declared
   ``unrecoverable`` (trimmed away before the client resumed: from the
   message's ``after`` to the snapshot that follows it) are reported, not
   counted as a gap. Clients must also have reached each stream's last
   entry.
3. **Memory stayed bounded.** Each process's private resident memory
   (``RssAnon``; PostgreSQL summed over its process tree) in the last third
   of the run is at most ``1.5 x`` its peak in the first third plus 64 MiB.
   The recording clients are reported but not judged: they keep every ID.

It prints a summary and exits non-zero when a check fails.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = ("kill_worker", "kill_publisher", "kill_ws", "restart_postgres",
               "restart_redis", "stall_client")


@dataclass
class SoakParams:
    """What the soak runs; ``None`` rates mean the defaults below."""

    duration_s: float = 600.0
    rate: float = 2000.0  # ticks/s over all symbols
    symbols: int = 20
    publishers: int = 2
    workers: int = 2
    ws_servers: int = 2
    clients: int = 2
    fault_interval_s: float = 15.0
    stall_s: float = 8.0
    warmup_s: float = 5.0
    drain_timeout_s: float = 120.0
    stream_window_s: int = 60
    seed: int = 7
    faults: tuple[str, ...] = FAULT_KINDS


def fault_plan(duration_s: float, interval_s: float, seed: int, *, warmup_s: float = 0.0,
               kinds: Sequence[str] = FAULT_KINDS) -> list[tuple[float, str]]:
    """``(at_s, kind)`` faults every ``interval_s`` from ``warmup_s`` until
    ``interval_s`` before the end (time for the last one to heal). Every
    kind appears once, in a seeded random order, before any repeats. Pure."""
    rng = random.Random(seed)
    plan: list[tuple[float, str]] = []
    deck: list[str] = []
    at = warmup_s + interval_s
    while at <= duration_s - interval_s / 2:
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        plan.append((round(at, 3), deck.pop()))
        at += interval_s
    return plan


# --- checks (pure) ---------------------------------------------------------------------------


def check_exactly_once(published: dict[str, int], rows: dict[str, tuple[int, int]],
                       missing_in_db: dict[str, int], extra_in_db: dict[str, int],
                       dead_letters: int) -> dict[str, Any]:
    """Compare per symbol: ``published`` entries-added, ``rows`` as
    ``(count, distinct entry ids)``, and the stream-vs-table differences
    over what the streams still hold. Pure."""
    lost = duplicated = 0
    per_symbol = {}
    for symbol in sorted(set(published) | set(rows)):
        added = published.get(symbol, 0)
        count, distinct = rows.get(symbol, (0, 0))
        sym_lost = max(added - distinct, 0) + missing_in_db.get(symbol, 0)
        sym_dup = (count - distinct) + max(distinct - added, 0) + extra_in_db.get(symbol, 0)
        lost += sym_lost
        duplicated += sym_dup
        if sym_lost or sym_dup:
            per_symbol[symbol] = {"published": added, "rows": count, "distinct": distinct,
                                  "missing": missing_in_db.get(symbol, 0),
                                  "extra": extra_in_db.get(symbol, 0)}
    lost += dead_letters
    return {"published": sum(published.values()), "rows": sum(c for c, _ in rows.values()),
            "lost": lost, "duplicated": duplicated, "dead_letters": dead_letters,
            "bad_symbols": per_symbol, "ok": lost == 0 and duplicated == 0}


def check_client(received: dict[str, list[int]], truth: dict[str, list[int]],
                 last_ids: dict[str, int],
                 declared: dict[str, list[tuple[int, int]]] | None = None) -> dict[str, Any]:
    """One client's received IDs (packed, in receipt order) against the
    complete sorted IDs per symbol (``truth``). ``declared`` holds, per
    symbol, open ID ranges the server said it could not replay. Pure."""
    import bisect

    from pricepipe.codec import unpack_entry_id

    declared = declared or {}
    duplicates = gaps = declared_missing = ticks = 0
    not_at_end = []
    examples: list[str] = []
    for symbol, ids in received.items():
        ticks += len(ids)
        if not ids:
            continue
        for prev, cur in zip(ids, ids[1:], strict=False):
            if cur <= prev:
                duplicates += 1
                if len(examples) < 5:
                    examples.append(f"{symbol}: {cur} after {prev}")
        all_ids = truth.get(symbol, [])
        lo = bisect.bisect_left(all_ids, min(ids))
        hi = bisect.bisect_right(all_ids, max(ids))
        got = set(ids)
        run: list[int] = []  # the current run of missing IDs, reported as one example
        for entry in [*all_ids[lo:hi], None]:
            if entry is not None and entry not in got:
                if any(after < entry < first for after, first in declared.get(symbol, ())):
                    declared_missing += 1
                else:
                    gaps += 1
                    run.append(entry)
                    continue
            if run and len(examples) < 5:
                examples.append(f"{symbol}: {len(run)} missing from {unpack_entry_id(run[0])} "
                                f"to {unpack_entry_id(run[-1])}")
            run = []
        if symbol in last_ids and max(ids) < last_ids[symbol]:
            not_at_end.append(symbol)
    missing_symbols = sorted(set(last_ids) - {s for s, ids in received.items() if ids})
    return {"ticks": ticks, "duplicates": duplicates, "gaps": gaps,
            "declared_unrecoverable": declared_missing, "not_at_end": not_at_end,
            "never_received": missing_symbols, "examples": examples,
            "ok": duplicates == 0 and gaps == 0 and not not_at_end and not missing_symbols}


def declared_ranges(messages: list[dict[str, Any]], received: dict[str, list[int]]
                    ) -> dict[str, list[tuple[int, int]]]:
    """Open ID ranges a client was told it would not get: from an
    ``unrecoverable`` message's ``after`` to the next tick recorded for its
    symbol (the snapshot that follows it). Pure."""
    from pricepipe.codec import pack_entry_id

    out: dict[str, list[tuple[int, int]]] = {}
    for msg in messages:
        symbol = str(msg.get("symbol"))
        try:
            after = pack_entry_id(msg["after"])
        except (KeyError, TypeError, ValueError):
            continue
        ids = received.get(symbol, [])
        index = int(msg.get("received_index", len(ids)))
        upper = ids[index] if index < len(ids) else 2**63
        out.setdefault(symbol, []).append((after, upper))
    return out


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


class _Faults:
    """Carries out faults on the soak's processes and servers."""

    def __init__(self, roles: dict[str, list[Any]], redis_server: Any, pg: Any,
                 rng: random.Random, stall_s: float) -> None:
        self.roles = roles
        self.redis_server = redis_server
        self.pg = pg
        self.rng = rng
        self.stall_s = stall_s
        self.stalled: list[tuple[float, Any]] = []
        self.done: list[dict[str, Any]] = []
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
            detail = role.name
        elif kind == "restart_postgres":
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
        elif kind == "restart_redis":
            self.redis_server.stop()
            time.sleep(1.0)
            self.redis_server.start()
            detail = "shutdown (AOF) and start"
        elif kind == "stall_client":
            candidates = [c for c in self.roles["client"]
                          if all(c is not s for _, s in self.stalled)]
            if not candidates:
                return "skipped: every client already stalled"
            client = self.rng.choice(candidates)
            client.signal(signal.SIGSTOP)
            self.stalled.append((now_s + self.stall_s, client))
            detail = f"{client.name} for {self.stall_s:.0f}s"
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return detail

    def resume_due(self, now_s: float, *, all_now: bool = False) -> None:
        import signal

        keep = []
        for due, client in self.stalled:
            if all_now or now_s >= due:
                client.signal(signal.SIGCONT)
            else:
                keep.append((due, client))
        self.stalled = keep


def run_soak(params: SoakParams, *, json_path: str | None = None,
             keep_dir: bool = False) -> dict[str, Any]:
    """Run the soak (see the module doc); returns the summary (``"ok"``)."""
    import shutil
    import signal
    import tempfile
    import time
    from pathlib import Path

    from pricepipe.codec import encode_json
    from pricepipe.connections import pg_connect
    from pricepipe.embedded import PostgresServer, RedisServer, free_port
    from pricepipe.keys import Keys
    from pricepipe.migrate import migrate
    from pricepipe.streams import register_symbols
    from pricepipe.supervisor import wait_http

    from .e2e import (
        Probe,
        Role,
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
    redis_server = RedisServer(tmp / "redis")
    pg = PostgresServer(tmp / "pg", database="pricepipe_soak")
    all_roles: list[Any] = []
    sampler: ProcessSampler | None = None
    r: Any = None
    try:
        redis_server.start()
        pg.start()
        conn = pg_connect(pg.url, application_name="pricepipe-soak")
        try:
            migrate(conn)
        finally:
            conn.close()
        keys = Keys("pp", 8)
        names = symbol_names(params.symbols, "SOAK")
        env = role_env(redis_server.url, pg.url, "pp")
        env.update({"PRICEPIPE_WORKER_STREAM_WINDOW_S": str(params.stream_window_s),
                    "PRICEPIPE_WORKER_TRIM_INTERVAL_S": "5"})
        r = _redis(redis_server.url)
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
        for role in [*workers, *servers]:
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
        sampler.add("redis", _pid_of(redis_server))
        sampler.add("postgres", _pid_of(pg), tree=True)
        sampler.start()

        roles: dict[str, list[Any]] = {"worker": workers, "publisher": publishers,
                                       "ws": servers, "client": clients}
        faults = _Faults(roles, redis_server, pg, random.Random(params.seed), params.stall_s)
        plan = fault_plan(params.duration_s, params.fault_interval_s, params.seed,
                          warmup_s=params.warmup_s, kinds=params.faults)
        unexpected: list[str] = []
        print(f"soak: {params.duration_s:.0f}s at {params.rate:.0f} ticks/s over "
              f"{len(names)} symbols; {len(plan)} faults; logs in {log_dir}", flush=True)
        start = time.monotonic()
        next_status = start + 10
        while True:
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= params.duration_s:
                break
            faults.resume_due(now)
            while plan and plan[0][0] <= elapsed:
                _, kind = plan.pop(0)
                detail = faults.run(kind, time.monotonic())
                faults.done.append({"at_s": round(elapsed, 1), "kind": kind, "detail": detail})
                print(f"  {elapsed:6.1f}s fault {kind}: {detail}", flush=True)
            for role in all_roles:
                if role.proc is not None and role.proc.poll() is not None:
                    unexpected.append(f"{role.name} exited with {role.proc.returncode} "
                                      f"at {elapsed:.0f}s")
                    print(f"  {elapsed:6.1f}s {unexpected[-1]}; restarting it:\n"
                          f"{role.tail(5)}", flush=True)
                    role.start()
            if now >= next_status:
                next_status = now + 10
                try:
                    published = published_count(r, keys, names)
                    oldest_s = max(waiting_ages_ms(r, keys, names), default=0.0) / 1000
                    print(f"  {elapsed:6.1f}s published {published:,}  oldest tick not yet "
                          f"persisted: {oldest_s:.1f}s old", flush=True)
                except Exception as exc:  # noqa: BLE001 - status only; Redis may be down
                    print(f"  {elapsed:6.1f}s status unavailable: {exc}", flush=True)
            time.sleep(0.2)
        end = time.monotonic()

        # Wind down: everything running and reading, then a graceful stop.
        faults.resume_due(end, all_now=True)
        exit_codes: dict[str, int | None] = {}
        for publisher in publishers:
            exit_codes[publisher.name] = publisher.stop(30)
        drained = wait_drained(r, keys, names, params.drain_timeout_s)
        last_ids = _last_ids(r, keys, names)
        _wait_idle(clients, 20.0)
        for role in [*clients, *workers, *servers]:
            exit_codes[role.name] = role.stop(30)
        sampler.stop()

        summary = _verify(r, pg.url, keys, names, clients, last_ids)
        memory = {name: memory_verdict(series.anon_series_mib(), start, end)
                  for name, series in sampler.series().items()}
        for client in clients:
            # A recording client keeps every entry ID it receives: it grows
            # by design, so it is reported but not judged.
            memory[client.name]["bounded"] = True
            memory[client.name]["note"] = "recording client, grows by design: not judged"

        summary.update({
            "params": params.__dict__, "drained": drained, "faults": faults.done,
            "unexpected_exits": unexpected, "exit_codes": exit_codes, "memory": memory,
            "memory_ok": all(v["bounded"] for v in memory.values()),
        })
        summary["ok"] = bool(summary["exactly_once"]["ok"] and summary["clients_ok"]
                             and summary["memory_ok"] and drained)
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
        redis_server.stop()
        pg.stop()
        if keep_dir:
            print(f"data and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_of(process: Any) -> Any:
    """The current pid of a role or embedded server (they are restarted)."""
    def pid() -> int | None:
        proc = process.proc
        return proc.pid if proc is not None and proc.poll() is None else None
    return pid


def _last_ids(r: Any, keys: Any, names: list[str]) -> dict[str, int]:
    from pricepipe.codec import pack_entry_id

    out = {}
    for symbol in names:
        rows = r.xrevrange(keys.stream(symbol), count=1)
        if rows:
            out[symbol] = pack_entry_id(rows[0][0])
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


def _stream_ids(r: Any, stream: str) -> list[int]:
    from pricepipe.codec import pack_entry_id

    out: list[int] = []
    cursor = "-"
    while True:
        rows = r.xrange(stream, min=cursor, max="+", count=10_000)
        if not rows:
            return out
        out.extend(pack_entry_id(entry_id) for entry_id, _ in rows)
        last = rows[-1][0].decode()
        cursor = "(" + last


def _verify(r: Any, database_url: str, keys: Any, names: list[str], clients: list[Any],
            last_ids: dict[str, int]) -> dict[str, Any]:
    from pricepipe.connections import pg_connect

    from .probe import load_record

    published: dict[str, int] = {}
    missing: dict[str, int] = {}
    extra: dict[str, int] = {}
    rows: dict[str, tuple[int, int]] = {}
    truth: dict[str, list[int]] = {}
    conn = pg_connect(database_url, application_name="pricepipe-soak-verify")
    try:
        with conn.cursor() as cur:
            for symbol in names:
                stream = keys.stream(symbol)
                info = r.xinfo_stream(stream)
                published[symbol] = int(info.get("entries-added") or 0)
                in_stream = _stream_ids(r, stream)
                cur.execute("SELECT entry_id FROM ticks WHERE symbol = %s ORDER BY entry_id",
                            (symbol,))
                db_ids = [int(row[0]) for row in cur.fetchall()]
                db_set = set(db_ids)
                rows[symbol] = (len(db_ids), len(db_set))
                truth[symbol] = sorted(db_set)
                stream_set = set(in_stream)
                missing[symbol] = len(stream_set - db_set)
                if in_stream:
                    low, high = in_stream[0], in_stream[-1]
                    extra[symbol] = sum(1 for e in db_set
                                        if low <= e <= high and e not in stream_set)
            cur.execute("SELECT count(*) - count(DISTINCT (symbol, ts)) FROM ticks")
            row = cur.fetchone()
            resends = int(row[0]) if row else 0
        conn.commit()
    finally:
        conn.close()
    dead = sum(int(r.xlen(keys.dead_letters(s))) for s in keys.all_shards())
    exactly_once = check_exactly_once(published, rows, missing, extra, dead)
    exactly_once["publisher_resends"] = resends

    client_results = {}
    for client in clients:
        try:
            record = load_record(client.record)
        except (OSError, ValueError) as exc:
            client_results[client.name] = {"ok": False, "error": f"no record: {exc}"}
            continue
        received = record.get("received", {})
        declared = declared_ranges(record.get("unrecoverable", []), received)
        result = check_client(received, truth, last_ids, declared)
        result.update({"connects": record.get("connects"),
                       "conflated_frames": record.get("conflated_frames"),
                       "slow_closes": record.get("slow_closes"),
                       "resubscribes": record.get("resubscribes"),
                       "unrecoverable": len(record.get("unrecoverable", [])),
                       "errors": len(record.get("errors", []))})
        client_results[client.name] = result
    return {"exactly_once": exactly_once, "clients": client_results,
            "clients_ok": all(c["ok"] for c in client_results.values())}


def _print_summary(summary: dict[str, Any]) -> None:
    once = summary["exactly_once"]
    print("soak summary", flush=True)
    print(f"  faults: {len(summary['faults'])} "
          f"({', '.join(sorted({f['kind'] for f in summary['faults']}))})")
    print(f"  published {once['published']:,}  rows {once['rows']:,}  lost {once['lost']}  "
          f"duplicated {once['duplicated']}  dead letters {once['dead_letters']}  "
          f"publisher re-sends {once['publisher_resends']}  drained {summary['drained']}")
    for name, c in summary["clients"].items():
        if "error" in c:
            print(f"  {name}: {c['error']}")
            continue
        print(f"  {name}: {c['ticks']:,} ticks, {c['connects']} connects, "
              f"{c['resubscribes']} resubscribes, gaps {c['gaps']}, "
              f"duplicates {c['duplicates']}, declared unrecoverable "
              f"{c['declared_unrecoverable']}, conflated frames {c['conflated_frames']}, "
              f"not at end {c['not_at_end'] or '-'} {'; '.join(c['examples'])}")
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
