"""procstat: /proc parsing (pure) and sampling of real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pricepipe.bench.procstat import (
    ProcessSampler,
    descendants,
    parse_machine_cpu,
    parse_stat,
    parse_status_kib,
    percentile,
    read_stat,
)

STAT = ("4242 (python3 (x) y) S 17 4242 4242 0 -1 4194560 5000 0 0 0 "
        "150 25 0 0 20 0 3 0 12345 400000000 9000 18446744073709551615 0 0 0 0 0 0 0 "
        "16781312 16386 0 0 0 17 1 0 0 0 0 0")


def test_parse_stat_handles_parentheses_and_spaces_in_the_name() -> None:
    stat = parse_stat(STAT)
    assert stat.pid == 4242
    assert stat.comm == "python3 (x) y"
    assert stat.ppid == 17
    assert stat.cpu_ticks == 175 and stat.children_cpu_ticks == 0
    assert parse_stat(STAT.replace(" 150 25 0 0 ", " 150 25 7 3 ")).children_cpu_ticks == 10


def test_parse_stat_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_stat("not a stat line")


def test_parse_status_kib_picks_the_requested_lines() -> None:
    text = "Name:\tpython3\nVmRSS:\t  10240 kB\nRssAnon:\t 8000 kB\nThreads:\t3\n"
    assert parse_status_kib(text, "VmRSS", "RssAnon", "VmSwap") == {"VmRSS": 10240,
                                                                   "RssAnon": 8000}


def test_parse_machine_cpu_counts_idle_and_iowait_as_not_busy() -> None:
    busy, total = parse_machine_cpu("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert (busy, total) == (150, 1000)


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile(range(1, 101), 50) == pytest.approx(50.5)
    assert percentile([1, 2, 3, 4], 100) == 4


def test_descendants_walks_the_tree() -> None:
    stats = {pid: parse_stat(f"{pid} (p) S {ppid} " + "0 " * 10 + "1 1 0") for pid, ppid in
             [(1, 0), (10, 1), (11, 10), (12, 10), (13, 11), (20, 1)]}
    assert sorted(descendants(10, stats)) == [10, 11, 12, 13]
    assert descendants(99, stats) == []


def test_sampler_measures_a_busy_child_and_its_memory() -> None:
    # A child that burns CPU for a while: its share must show up, and its
    # memory must be read from /proc.
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend=time.time()+3\nwhile time.time()<end: pass"])
    try:
        sampler = ProcessSampler({"child": lambda: child.pid, "me": os.getpid},
                                 trees=["me"], interval_s=0.2).start()
        time.sleep(1.2)
        sampler.stop()
        series = sampler.series()
        child_series = series["child"]
        assert len(child_series.samples) >= 3
        cpu = child_series.cpu_percent(0, float("inf"))
        assert cpu is not None and cpu > 10
        assert (child_series.rss_max_mib() or 0) > 1
        # The tree of this process includes the child.
        assert read_stat(child.pid) is not None
        assert series["me"].samples[-1][1] >= child_series.samples[-1][1]
    finally:
        child.kill()
        child.wait()
