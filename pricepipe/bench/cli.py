"""``pricepipe bench TARGET`` and ``pricepipe soak``: registered by the main
command like a role's subcommands. Light at import: the harnesses load when
a command runs.

``bench`` prints ratios against baselines measured in the same run, on this
machine, from interleaved repeats (``--repeats`` pairs of baseline and
pricepipe), each beside its goal, then the figures; it writes one JSON and
one Markdown report (``bench all``: every target, the e2e ramp's chart and
the instruction counts); it never asserts. It
starts throwaway embedded servers when no URLs are given, so a benchmark
never touches real data. ``soak`` runs a steady load with faults and checks
that nothing was lost or doubled.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from .soak import FAULT_KINDS  # a light module: the harness imports inside run_soak

#: Bench targets, in the order ``bench all`` runs them (see :mod:`.report`).
TARGET_NAMES = ("publish", "persist", "ws", "api", "e2e", "instructions")


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """SIGTERM and SIGHUP end a bench or a soak as Ctrl-C does: a
    ``KeyboardInterrupt`` unwinds every ``with`` and ``finally``, and those
    stop the roles, the client processes and the embedded servers (the main
    command then exits 130). The signals' default action ends the process
    where it stands, and everything it started, in process groups of its
    own, would go on running."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _cmd_bench(args: argparse.Namespace) -> int:
    with _terminate_unwinds():
        return _bench(args)


def _bench(args: argparse.Namespace) -> int:
    from pricepipe.codec import encode_json

    from .ratios import summary_text
    from .report import machine_info, markdown, run_target, servers

    targets = list(TARGET_NAMES) if args.target == "all" else [args.target]
    machine = machine_info()
    reports = []
    # Instruction counts run no server: none is started for them alone.
    needs_servers = any(t != "instructions" for t in targets)
    with (servers(args.redis_url, args.database_url) if needs_servers
          else contextlib.nullcontext(("", ""))) as (r_url, d_url):
        for target in targets:
            print(f"== bench {target}")
            reports.append(run_target(target, r_url, d_url, args.n, args.repeats))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "all" if args.target == "all" else args.target
    (out_dir / f"bench-{name}.json").write_bytes(
        encode_json({"machine": machine, "reports": reports}))
    table = markdown(reports, machine)
    chart = _ramp_chart(reports, machine, out_dir / f"bench-{name}-ramp.png")
    if chart is not None:
        table += f"\n![e2e ramp: throughput and p99 against the offered rate]({chart.name})\n"
    (out_dir / f"bench-{name}.md").write_text(table)
    print(table)
    for report in reports:  # the verdicts last too, where the eye lands
        print(summary_text(report).split("\n   figures:")[0])
    print(f"report written to {out_dir}/bench-{name}.json and .md"
          + (f", chart {chart}" if chart is not None else ""))
    return 0


def _ramp_chart(reports: list[dict[str, Any]], machine: dict[str, Any],
                path: Path) -> Path | None:
    """The e2e ramp's chart at ``path``, when an e2e report is among
    ``reports`` and matplotlib is installed (the ``research`` extra)."""
    from .chart import ramp_chart
    from .e2e import GOAL_EVENTS_PER_S, GOAL_PERSIST_LAG_P99_MS, GOAL_WS_P99_MS

    e2e = next((r for r in reports if r.get("target") == "e2e"), None)
    if e2e is None:
        return None
    # Issue 18's goal rate: the run's own raw XADD baseline (its median).
    goal_rate = e2e.get("baselines", {}).get("raw_xadd_per_s") or GOAL_EVENTS_PER_S
    sustained = e2e["figures"].get("max_sustained_events_per_s", 0)
    title = (f"pricepipe bench e2e on {machine['cpus']} CPU(s), {machine['cpu_model']}; "
             f"highest sustained {sustained:,.0f}/s, raw XADD baseline {goal_rate:,.0f}/s")
    if not ramp_chart(e2e.get("steps", []), path, title=title,
                      goal_events_per_s=goal_rate,
                      goal_lag_ms=GOAL_PERSIST_LAG_P99_MS, goal_ws_ms=GOAL_WS_P99_MS):
        print("no ramp chart: matplotlib is missing (pip install 'pricepipe[research]')")
        return None
    return path


def _cmd_soak(args: argparse.Namespace) -> int:
    with _terminate_unwinds():
        return _soak(args)


def _soak(args: argparse.Namespace) -> int:
    from .soak import SoakParams, run_soak

    params = SoakParams(duration_s=args.minutes * 60, rate=args.rate, symbols=args.symbols,
                        publishers=args.publishers, workers=args.workers,
                        ws_servers=args.ws_servers, clients=args.clients,
                        strategies=not args.no_strategies,
                        fault_interval_s=args.fault_interval_s, stall_s=args.stall_s,
                        stream_window_s=args.stream_window_s, max_age_s=args.max_age_s,
                        trim_interval_s=args.trim_interval_s, seed=args.seed,
                        faults=fault_kinds(args.faults))
    summary = run_soak(params, json_path=args.json, keep_dir=args.keep)
    return 0 if summary["ok"] else 1


def fault_kinds(text: str) -> tuple[str, ...]:
    """``--faults``: comma-separated kinds, each one of :data:`FAULT_KINDS`."""
    from pricepipe.exceptions import ConfigError

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        raise ConfigError(f"--faults: want some of {', '.join(FAULT_KINDS)}, not {text!r}")
    return kinds


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks with same-run baselines (prints, never asserts)")
    p.add_argument("target", choices=[*TARGET_NAMES, "all"])
    p.add_argument("--n", type=int, default=None, help="size of the run (target's default)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved (baseline, pricepipe) pairs per ratio (at least 1)")
    p.add_argument("--out", default="bench-results", help="directory for the JSON/Markdown report")
    p.add_argument("--redis-url", help="use this Redis (default: a throwaway embedded one)")
    p.add_argument("--database-url", help="use this PostgreSQL (default: throwaway embedded)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("soak", help="steady load with faults (kills, restarts, stalls, "
                       "a failover, a full Redis), then check nothing was lost or doubled "
                       "and no reader missed anything silently")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    p.add_argument("--rate", type=float, default=2000.0,
                   help="events per second, all symbols")
    p.add_argument("--symbols", type=int, default=20, help="number of symbols")
    p.add_argument("--publishers", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ws-servers", type=int, default=2)
    p.add_argument("--clients", type=int, default=2, help="recording websocket clients")
    p.add_argument("--fault-interval-s", type=float, default=15.0,
                   help="one fault every this many seconds")
    p.add_argument("--stall-s", type=float, default=8.0, help="how long a client stalls")
    p.add_argument("--no-strategies", action="store_true",
                   help="without the two strategy processes (and stop_strategy)")
    p.add_argument("--stream-window-s", type=int, default=60,
                   help="workers keep acknowledged entries this long in Redis")
    p.add_argument("--max-age-s", type=int, default=90,
                   help="hard cap: a stopped strategy group keeps entries this long")
    p.add_argument("--trim-interval-s", type=float, default=5.0,
                   help="how often the workers trim")
    p.add_argument("--seed", type=int, default=7, help="seed of the fault schedule")
    p.add_argument("--faults", default=",".join(FAULT_KINDS),
                   help="comma-separated fault kinds to use (default: all)")
    p.add_argument("--json", help="also write the summary as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the servers' data and the logs")
    p.set_defaults(func=_cmd_soak)
