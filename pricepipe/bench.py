"""``pricepipe bench TARGET``: speed figures beside baselines measured in the
same run, on this machine. Benchmarks print and report; they never assert.

Each target lives with its role (``<role>/bench.py``) and exposes
``run(*, redis_url, database_url, n=None) -> dict`` returning
``{"target", "figures", "baselines", "ratios", "params"}``. This module
starts throwaway embedded servers when no URLs are given (so a benchmark never
touches real data), runs the targets, and writes a JSON and a Markdown report.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .clock import format_us, now_us
from .codec import encode_json

#: target -> module providing ``run``; e2e orchestrates every role.
TARGETS = {
    "publish": "publisher.bench",
    "persist": "workers.bench",
    "ws": "subscriber.bench",
    "api": "api.bench",
    "e2e": "pricepipe.loadtest",
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
            "python": platform.python_version(), "system": platform.platform()}


@contextmanager
def servers(redis_url: str | None, database_url: str | None) -> Iterator[tuple[str, str]]:
    """The given URLs, or throwaway embedded servers (removed afterwards)."""
    from .connections import pg_connect
    from .embedded import PostgresServer, RedisServer
    from .migrate import migrate

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


def run_target(target: str, redis_url: str, database_url: str, n: int | None) -> dict[str, Any]:
    module = importlib.import_module(TARGETS[target])
    report: dict[str, Any] = module.run(redis_url=redis_url, database_url=database_url, n=n)
    return report


def markdown(reports: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        f"Measured {format_us(now_us())[:19]}Z on {machine['cpus']} CPU(s) "
        f"({machine['cpu_model']}), {machine['memory_gib']} GiB, Python {machine['python']}.",
        "",
        "| benchmark | figure | value | baseline | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for report in reports:
        figures = report.get("figures", {})
        baselines = report.get("baselines", {})
        ratios = report.get("ratios", {})
        for name, value in figures.items():
            lines.append(f"| {report.get('target')} | {name} | {_fmt(value)} | | |")
        for name, value in baselines.items():
            lines.append(f"| {report.get('target')} | baseline: {name} | | {_fmt(value)} | |")
        for name, value in ratios.items():
            lines.append(f"| {report.get('target')} | ratio: {name} | | | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def cmd_bench(args: argparse.Namespace) -> int:
    from .cli import database_settings, redis_settings

    targets = [t for t in TARGETS] if args.target == "all" else [args.target]
    redis_url = redis_settings(args).url if args.redis_url else None
    database_url = database_settings(args).url if args.database_url else None
    machine = machine_info()
    reports = []
    with servers(redis_url, database_url) as (r_url, d_url):
        for target in targets:
            print(f"== bench {target}")
            reports.append(run_target(target, r_url, d_url, args.n))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "all" if args.target == "all" else args.target
    (out_dir / f"bench-{name}.json").write_bytes(
        encode_json({"machine": machine, "reports": reports}))
    table = markdown(reports, machine)
    (out_dir / f"bench-{name}.md").write_text(table)
    print(table)
    print(f"report written to {out_dir}/bench-{name}.json and .md")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks with same-run baselines (prints, never asserts)")
    p.add_argument("target", choices=[*TARGETS, "all"])
    p.add_argument("--n", type=int, default=None, help="size of the run (target's default)")
    p.add_argument("--out", default="bench-results", help="directory for the JSON/Markdown report")
    p.add_argument("--redis-url", help="use this Redis (default: a throwaway embedded one)")
    p.add_argument("--database-url", help="use this PostgreSQL (default: throwaway embedded)")
    p.set_defaults(func=cmd_bench)
