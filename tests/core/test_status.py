"""``pricepipe status`` lists the processes that are alive: websocket
servers by their heartbeat keys, rq workers and cron schedulers by rq's
registries (only the workers of this deployment's queues)."""

from __future__ import annotations

from typing import Any

import orjson
from rq import Worker
from rq.worker import WorkerStatus

from pricepipe.clock import now_ms
from pricepipe.keys import Keys
from pricepipe.status import render, rq_scheduler_stats, rq_worker_stats, ws_stats
from pricepipe.workers.jobqueue import WORKER_OPTIONS


def test_websocket_servers_with_their_state_and_heartbeat_age(r: Any, keys: Keys) -> None:
    now = now_ms()
    r.set(keys.heartbeat("ws", "host-8765"),
          orjson.dumps({"status": "ok", "connections": 3, "pid": 1, "ts_ms": now - 2_000}), ex=15)
    # A server of an older version does not date its heartbeat.
    r.set(keys.heartbeat("ws", "old-8766"), orjson.dumps({"status": "degraded"}), ex=15)
    r.set(keys.heartbeat("persist", "w1"), b"{}", ex=15)
    assert ws_stats(r, keys, now_ms=now) == [
        {"name": "host-8765", "state": "ok", "connections": 3, "heartbeat_age_s": 2.0},
        {"name": "old-8766", "state": "degraded", "connections": None, "heartbeat_age_s": None},
    ]


def test_rq_workers_of_this_deployment_and_the_cron_schedulers(r: Any, keys: Keys) -> None:
    from pricepipe.workers.jobqueue import JsonCronScheduler

    ours = Worker([keys.rq_queue("maintenance"), keys.rq_queue("bulk")], connection=r,
                  name="host-up", **WORKER_OPTIONS)
    theirs = Worker(["elsewhere"], connection=r, name="other", **WORKER_OPTIONS)
    for worker in (ours, theirs):
        worker.register_birth()
    ours.set_state(WorkerStatus.IDLE)
    scheduler = JsonCronScheduler(connection=r, name="host:1:abc")
    scheduler.register_birth()
    workers = rq_worker_stats(r, keys, WORKER_OPTIONS)
    assert [(w["name"], w["queues"], w["job"]) for w in workers] == [
        ("host-up", [keys.rq_queue("maintenance"), keys.rq_queue("bulk")], None)]
    assert workers[0]["state"] == "idle"
    assert 0 <= workers[0]["heartbeat_age_s"] < 60
    schedulers = rq_scheduler_stats(r)
    assert [s["name"] for s in schedulers] == ["host:1:abc"]
    assert 0 <= schedulers[0]["heartbeat_age_s"] < 60

    ours.register_death()
    scheduler.register_death()
    assert rq_worker_stats(r, keys, WORKER_OPTIONS) == [] and rq_scheduler_stats(r) == []


def test_render_lists_each_process_with_its_heartbeat() -> None:
    text = render({
        "ws_servers": [{"name": "host-8765", "state": "ok", "connections": 3,
                        "heartbeat_age_s": 2.0}],
        "rq_workers": [{"name": "host-up", "state": "busy", "queues": ["pp-maintenance"],
                        "job": "j1", "heartbeat_age_s": 4.2}],
        "rq_schedulers": [{"name": "host:1:abc", "heartbeat_age_s": None}],
    })
    assert "websocket servers alive: 1" in text
    assert "host-8765" in text and "3 conn" in text and "heartbeat 2s ago" in text
    assert "rq workers: 1" in text
    assert "host-up" in text and "busy" in text and "heartbeat 4s ago" in text
    assert "queues pp-maintenance" in text and "job j1" in text
    assert "rq cron schedulers: 1" in text and "host:1:abc" in text and "heartbeat ?" in text
    # Nothing known (Redis unreachable): no such lines.
    assert "rq workers" not in render({})
