"""``pricepipe bench instructions`` on a tiny workload: callgrind counts
every hot loop, and two runs agree (the counts are deterministic)."""

from __future__ import annotations

import os
import shutil

import pytest

from pricepipe.bench import instructions
from tests.helpers import slow_stage

needs_valgrind = pytest.mark.skipif(
    not shutil.which("valgrind") and not (os.geteuid() == 0 and shutil.which("apt-get")),
    reason="valgrind is missing and cannot be installed here")


def test_the_workloads_run_without_valgrind() -> None:
    for name in instructions.WORKLOADS:
        loop, events = instructions.BUILDERS[name](1000)
        assert events == 1000
        loop()
    frames = instructions.hub_workload(1000)[0]()
    assert isinstance(frames, int) and frames > 0
    replies = instructions.raw_replies(instructions._events(1000))
    assert sum(len(entries) for reply in replies for _, entries in reply) == 1000


@slow_stage
@needs_valgrind
@pytest.mark.timeout(300)
def test_counts_every_hot_loop_twice_alike() -> None:
    report = instructions.run(n=1000)
    assert report["target"] == "instructions" and report["params"]["events"] == 1000
    for name in instructions.WORKLOADS:
        runs = report["samples"]["figures"][f"{name}_ir_per_event"]
        assert len(runs) == 2 and all(v > 100 for v in runs), (name, runs)
        assert max(runs) <= min(runs) * 1.02, (name, runs)
    assert report["stable"] is True
    # Generating, validating and encoding an event costs more than cutting a JSON row.
    figures = report["figures"]
    assert figures["publisher_ir_per_event"] > 10 * figures["api_ir_per_event"]
