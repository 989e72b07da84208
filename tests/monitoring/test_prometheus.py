"""A real Prometheus (Debian's package) scraping a running pipeline with the
shipped scrape jobs and alert rules: every target is up, every dashboard
query evaluates, nothing fires while the pipeline is healthy; then the
persist worker is killed and the lag alert fires (as do its heartbeat's and
its endpoint's).

The rules are the shipped file with every ``for:`` shortened to 1 s
(:func:`~tests.monitoring.helpers.quick_rules`): the same expressions and
thresholds, so the lag alert fires once the oldest waiting event is 30 s old.
Scrapes and evaluations run every second."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from pricepipe.embedded import free_port
from tests.helpers import slow_stage, wait_http, wait_until
from tests.monitoring.helpers import (
    ALERTS,
    DASHBOARD,
    SCRAPE_CONFIG,
    Prometheus,
    dashboard_exprs,
    prometheus_bin,
    promtool,
    quick_rules,
)

pytestmark = pytest.mark.timeout(300)

SYMBOLS = "AAPL,MSFT"
#: Dashboard queries that must have data from this pipeline (the others need
#: dead letters, feeds, slow clients or a maxmemory).
MUST_ANSWER = ("pricepipe_persist_oldest_waiting_age_seconds", "pricepipe_persist_waiting",
               "pricepipe_stream_entries_added_total", "pricepipe_persist_acknowledged_total",
               "pricepipe_persist_trades_inserted_total", "pricepipe_heartbeats",
               "pricepipe_ws_connections", "pricepipe_redis_used_memory_bytes",
               "pricepipe_publisher_events_published_total")


def _answers(prometheus: Prometheus, expr: str) -> bool:
    return bool(prometheus.query(expr))


@pytest.fixture
def bin_dir() -> Path:
    found = prometheus_bin()
    if found is None:
        pytest.skip("no prometheus/promtool (Debian package prometheus; "
                    "tests/monitoring/get_prometheus.sh, PRICEPIPE_TEST_PROMETHEUS)")
    return found


def _config(rules: Path, ports: dict[str, list[int]]) -> dict[str, Any]:
    """The shipped scrape config, its jobs pointed at this test's ports,
    scraping and evaluating every second, without an Alertmanager."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config.pop("alerting", None)
    for job in config["scrape_configs"]:
        (static,) = job["static_configs"][:1]
        job["static_configs"] = [{**static, "targets": [
            f"127.0.0.1:{port}" for port in ports[job["job_name"]]]}]
    return config


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Log files for the role processes (a pipe nobody reads could fill up)."""
    opened: list[Any] = []

    def open_log(name: str) -> Any:
        opened.append(open(tmp_path / f"{name}.log", "wb"))  # noqa: SIM115 - closed below
        return opened[-1]

    yield open_log
    for f in opened:
        f.close()


# At least 30 s by the shipped rule itself (the oldest entry must wait
# that long), so it runs beside the soak, not in the main suite's 10 minutes.
@slow_stage
def test_killing_the_persist_worker_fires_the_lag_alert(
    bin_dir: Path, spawn: Callable[..., Any], pipeline_env: dict[str, str],
    logs: Callable[[str], Any], tmp_path: Path,
) -> None:
    # The worker's heartbeat expires 5 s after its last one (30 s in production): soon
    # after the kill, and never while it runs (it beats every third of that).
    env = dict(pipeline_env, PRICEPIPE_WORKER_HEARTBEAT_TTL_S="5")
    ports = {"pricepipe-api": [free_port()], "pricepipe-ws": [free_port()],
             "pricepipe-publisher": [free_port()], "pricepipe-persist": [free_port()]}
    (api_port,), (ws_port,) = ports["pricepipe-api"], ports["pricepipe-ws"]
    (publisher_port,), (persist_port,) = ports["pricepipe-publisher"], ports["pricepipe-persist"]
    procs = {
        "api": spawn(["api", "--port", str(api_port)], env=env, stdout=logs("api")),
        "ws": spawn(["ws", "--port", str(ws_port)], env=env, stdout=logs("ws")),
        "publisher": spawn(["publish", "--source", "gbm", "--symbols", SYMBOLS, "--rate", "20",
                            "--metrics-port", str(publisher_port)], env=env,
                           stdout=logs("publisher")),
        "persist": spawn(["persist", "--name", "p1", "--metrics-port", str(persist_port)],
                         env=env, stdout=logs("persist")),
    }
    wait_http(f"http://127.0.0.1:{api_port}/healthz", procs["api"])
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", procs["ws"])
    wait_http(f"http://127.0.0.1:{publisher_port}/metrics", procs["publisher"])
    wait_http(f"http://127.0.0.1:{persist_port}/metrics", procs["persist"])

    rules = tmp_path / "pricepipe-alerts.yml"
    rules.write_text(quick_rules(ALERTS.read_text()))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(rules, ports)))
    checked = promtool(bin_dir, "check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    prometheus = Prometheus(bin_dir, config, tmp_path / "data", free_port())
    try:
        wait_http(f"{prometheus.url}/-/ready", prometheus.proc)

        def targets_up() -> bool:
            active = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
            return len(active) == len(ports) and all(t["health"] == "up" for t in active)

        wait_until(targets_up, proc=prometheus.proc)
        # The persist worker keeps up: rows are acknowledged, the oldest wait stays short.
        wait_until(lambda: bool(prometheus.query(
            "sum(pricepipe_persist_acknowledged_total) > 0")), proc=procs["persist"])

        # Every dashboard query is valid PromQL to this Prometheus; those about what
        # this pipeline runs have data (rates once two scrapes are in).
        exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
        for expr in exprs:
            prometheus.query(expr)
        for expr in exprs:
            if any(name in expr for name in MUST_ANSWER):
                wait_until(partial(_answers, prometheus, expr), proc=prometheus.proc)

        # Healthy: nothing fires, nothing is even pending.
        assert prometheus.get("/api/v1/alerts")["data"]["alerts"] == [], prometheus.log_text()
        (lag,) = prometheus.query('max(pricepipe_persist_oldest_waiting_age_seconds)')
        assert float(lag["value"][1]) < 30
        (beats,) = prometheus.query('max(pricepipe_heartbeats{role="persist"})')
        assert beats["value"][1] == "1"

        procs["persist"].send_signal(signal.SIGKILL)
        assert procs["persist"].wait(30) == -signal.SIGKILL

        # The publisher goes on; what it appends waits, older and older.
        wait_until(lambda: bool(prometheus.alerts("PersistLagGrowing")), timeout_s=150,
                   proc=prometheus.proc)
        lagging = prometheus.alerts("PersistLagGrowing")
        assert {a["labels"]["channel"] for a in lagging} <= {"trades", "quotes"}
        for alert in lagging:
            assert alert["labels"]["severity"] == "critical"
            assert float(alert["value"]) > 30
        assert procs["publisher"].poll() is None

        wait_until(lambda: bool(prometheus.alerts("HeartbeatMissing")), proc=prometheus.proc)
        assert {a["labels"]["role"] for a in prometheus.alerts("HeartbeatMissing")} == {
            "persist"}
        wait_until(lambda: bool(prometheus.alerts("TargetDown")), proc=prometheus.proc)
        assert [a["labels"]["job"] for a in prometheus.alerts("TargetDown")] == [
            "pricepipe-persist"]
        # Nothing else is wrong.
        firing = {a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts")["data"][
            "alerts"] if a["state"] == "firing"}
        assert firing == {"PersistLagGrowing", "HeartbeatMissing", "TargetDown"}
    finally:
        prometheus.stop()
