"""``pricepipe persist --metrics-port``: the worker's own counters over HTTP,
on loopback, and a refusal to run without them when the port is taken."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pricepipe import streams
from pricepipe.clock import now_us
from pricepipe.embedded import free_port
from pricepipe.events import Quote, Trade
from pricepipe.keys import Keys
from tests.helpers import wait_http, wait_until

pytestmark = pytest.mark.timeout(120)

TS = 1_767_323_045_000_000


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local URL
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_over_http(spawn: Callable[..., Any], pipeline_env: dict[str, str], r: Any,
                            keys: Keys) -> None:
    port = free_port()
    proc = spawn(["persist", "--name", "m1", "--metrics-port", str(port)], env=pipeline_env)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url, proc)

    streams.register_symbols(r, keys, ["AAPL"])
    # Event times near their append time: farther ones would be dead letters (untimely).
    ts = now_us()
    streams.append_events(r, keys, [Trade("AAPL", ts + i, 100.0, 1.0) for i in range(7)])
    streams.append_events(r, keys, [Quote("AAPL", ts + i, 99.0, 1.0, 101.0, 1.0)
                                    for i in range(5)])

    def inserted() -> bool:
        got = _samples(url)
        return (got.get(("pricepipe_persist_trades_inserted_total", ())) == 7
                and got.get(("pricepipe_persist_quotes_inserted_total", ())) == 5)

    wait_until(inserted, proc=proc)
    got = _samples(url)
    assert got[("pricepipe_persist_entries_total", ())] == 12
    assert got[("pricepipe_persist_batches_total", ())] >= 1
    assert got[("pricepipe_persist_dead_letters_total", ())] == 0
    for write in ("heartbeat", "dead_letters", "bars"):
        assert got[("pricepipe_persist_redis_refusing", (("write", write),))] == 0
    assert got[("pricepipe_persist_started_timestamp_seconds", ())] > TS / 1_000_000


def test_a_taken_port_is_an_error(spawn: Callable[..., Any],
                                  pipeline_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn(["persist", "--metrics-port", str(port)], env=pipeline_env)
        assert proc.wait(60) == 2
        assert b"cannot serve metrics on 127.0.0.1:" in proc.stdout.read()
