"""What every benchmark run shares: the machine it ran on, throwaway servers,
running a target, and the Markdown report.

Each target module (:mod:`.publish`, :mod:`.persist`, :mod:`.ws`,
:mod:`.api`, :mod:`.e2e`) exposes ``run(*, redis_url, database_url, n=None)
-> dict`` returning ``{"target", "figures", "baselines", "ratios", "params"}``.
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

#: target -> module providing ``run``; e2e orchestrates every role.
TARGETS = {
    "publish": "pricepipe.bench.publish",
    "persist": "pricepipe.bench.persist",
    "ws": "pricepipe.bench.ws",
    "api": "pricepipe.bench.api",
    "e2e": "pricepipe.bench.e2e",
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


def run_target(target: str, redis_url: str, database_url: str, n: int | None) -> dict[str, Any]:
    """Run one target's benchmark on the given servers; its report."""
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
