"""What every benchmark run shares: the machine it ran on, throwaway servers,
running a target, and the Markdown report.

Each target module (:mod:`.publish`, :mod:`.persist`, :mod:`.ws`,
:mod:`.api`, :mod:`.e2e`, :mod:`.instructions`) exposes ``run(*, redis_url,
database_url, n=None, repeats=3) -> dict`` returning the report of
:func:`pricepipe.bench.ratios.target_report`: ``ratios`` (name -> median,
min, max, samples, goal, met), ``figures`` and ``baselines`` (name ->
median), ``samples``, ``params``; e2e adds ``steps`` and ``cpu_breakdown``,
instructions ``spread`` and ``stable``.

The Markdown puts first what the run is for: every ratio with its goal,
median, min-max and verdict; then the CPU per event of each process at the
e2e ramp's highest sustained step; then the instruction counts; then every
figure.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pricepipe.clock import format_us, now_us

from .ratios import DEFAULT_REPEATS, Ratio, Spread, format_value

#: target -> module providing ``run``; e2e orchestrates every role.
TARGETS = {
    "publish": "pricepipe.bench.publish",
    "persist": "pricepipe.bench.persist",
    "ws": "pricepipe.bench.ws",
    "api": "pricepipe.bench.api",
    "e2e": "pricepipe.bench.e2e",
    "instructions": "pricepipe.bench.instructions",
}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": mem_gib,
            "python": platform.python_version(), "system": platform.platform(),
            # Other work on a shared machine moves every speed: say how busy it was.
            "loadavg_1m": round(os.getloadavg()[0], 2)}


@contextmanager
def servers(redis_url: str | None, database_url: str | None) -> Iterator[tuple[str, str]]:
    """The given URLs, or throwaway embedded servers (removed afterwards)."""
    from pricepipe.connections import pg_connect
    from pricepipe.embedded import PostgresServer, RedisServer
    from pricepipe.migrate import migrate

    started: list[Any] = []
    tmp = Path(tempfile.mkdtemp(prefix="pricepipe-bench-"))
    tmp.chmod(0o755)  # PostgreSQL may run as an unprivileged user
    try:
        if not redis_url:
            rs = RedisServer(tmp / "redis")
            rs.start()
            started.append(rs)
            redis_url = rs.url
        if not database_url:
            pg = PostgresServer(tmp / "pg", database="pricepipe_bench")
            pg.start()
            started.append(pg)
            database_url = pg.url
        conn = pg_connect(database_url, application_name="pricepipe-bench")
        try:
            migrate(conn)
        finally:
            conn.close()
        yield redis_url, database_url
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run_target(target: str, redis_url: str, database_url: str, n: int | None,
               repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """Run one target's benchmark on the given servers; its report."""
    module = importlib.import_module(TARGETS[target])
    report: dict[str, Any] = module.run(redis_url=redis_url, database_url=database_url, n=n,
                                        repeats=repeats)
    return report


def markdown(reports: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        f"Measured {format_us(now_us())[:19]}Z on {machine['cpus']} CPU(s) "
        f"({machine['cpu_model']}), {machine['memory_gib']} GiB, Python {machine['python']}; "
        f"load average {machine.get('loadavg_1m', '?')} at the start.",
        "",
    ]
    lines += ratio_table(reports)
    for part in (cpu_table(reports), instruction_table(reports)):
        if part:
            lines += ["", *part]
    lines += ["", *figure_table(reports)]
    return "\n".join(lines) + "\n"


def ratio_table(reports: list[dict[str, Any]]) -> list[str]:
    """Every ratio of every report: goal, median, min-max (samples), met."""
    lines = ["| benchmark | ratio | goal | median | min - max (n) | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    for report in reports:
        for name, data in report.get("ratios", {}).items():
            ratio = Ratio.from_dict(name, data)
            spread = ratio.spread
            met = {True: "**yes**", False: "no", None: ""}[ratio.met]
            lines.append(
                f"| {report.get('target')} | {name} | {ratio.goal_text()} | "
                f"{format_value(spread.median, ratio.unit)} | "
                f"{format_value(spread.low, ratio.unit)} - "
                f"{format_value(spread.high, ratio.unit)} ({spread.count}) | {met} |")
    return lines


#: What the e2e sampler's names stand for, where it is not obvious.
PROCESS_LABELS = {"bench": "bench (the harness)", "probe": "probe (measuring client)",
                  "ws": "ws (websocket server)", "postgres": "postgres (all backends)",
                  "total": "**total**"}


def cpu_table(reports: list[dict[str, Any]]) -> list[str]:
    """CPU per event of each process at e2e's highest sustained step (and
    the first step that was not sustained), from its ``cpu_breakdown``."""
    e2e = next((r for r in reports if r.get("target") == "e2e"), None)
    breakdown = (e2e or {}).get("cpu_breakdown") or {}
    columns = [(label, breakdown[label]) for label in ("sustained", "not_sustained")
               if label in breakdown]
    if not columns:
        return []
    names = []
    for _, step in columns:
        names += [n for n in step["cpu_us_per_event"] if n not in names and n != "total"]
    head = " | ".join(f"{label.replace('_', ' ')} step {step['target_events_per_s']:,}/s"
                      for label, step in columns)
    lines = ["CPU per event (µs, summed over each process's threads), e2e:", "",
             f"| process | {head} |", "| --- |" + " --- |" * len(columns)]
    for name in [*names, "total"]:
        cells = " | ".join(format_value(step["cpu_us_per_event"].get(name)) for _, step in columns)
        lines.append(f"| {PROCESS_LABELS.get(name, name)} | {cells} |")
    return lines


def instruction_table(reports: list[dict[str, Any]]) -> list[str]:
    """Instructions per event of each workload, both counts."""
    report = next((r for r in reports if r.get("target") == "instructions"), None)
    if report is None:
        return []
    params = report.get("params", {})
    lines = [f"Instructions per event (callgrind Ir, {params.get('events', 0):,} events, "
             f"workload version {params.get('workload_version')}, "
             f"{'stable' if report.get('stable') else 'NOT stable'} between runs):", "",
             "| workload | Ir per event | run 1 | run 2 |", "| --- | --- | --- | --- |"]
    samples = report.get("samples", {}).get("figures", {})
    for name, median in report.get("figures", {}).items():
        runs = samples.get(name, [])
        cells = " | ".join(f"{v:,.0f}" for v in runs[:2])
        lines.append(f"| {name.removesuffix('_ir_per_event')} | {median:,.0f} | {cells} |")
    return lines


def figure_table(reports: list[dict[str, Any]]) -> list[str]:
    """Every figure and baseline: median and min-max over the repeats."""
    lines = ["| benchmark | figure | median | min - max | baseline median | baseline min - max |",
             "| --- | --- | --- | --- | --- | --- |"]
    for report in reports:
        if report.get("target") == "instructions":
            continue  # its own table
        samples = report.get("samples", {})
        for section in ("figures", "baselines"):
            for name, median in report.get(section, {}).items():
                spread = Spread.of(samples.get(section, {}).get(name, [median]))
                cells = (f"{format_value(median)} | {format_value(spread.low)} - "
                         f"{format_value(spread.high)}")
                row = f"{cells} | |" if section == "figures" else f"| | {cells}"
                label = name if section == "figures" else f"baseline: {name}"
                lines.append(f"| {report.get('target')} | {label} | {row} |")
    return lines
