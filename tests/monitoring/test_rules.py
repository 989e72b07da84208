"""deploy/monitoring/ checked by Debian's promtool: the scrape config, the
alert rules and their unit tests (tests/monitoring/alerts_test.yml), and
every query of the Grafana dashboard; and held to the rest of the repository:
the scrape targets are the ports install.sh and the units use, and every
``pricepipe_*`` series a rule or a panel reads is one some process exports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO
from tests.monitoring.helpers import (
    ALERTS,
    DASHBOARD,
    SCRAPE_CONFIG,
    dashboard_exprs,
    prometheus_bin,
    promtool,
    quick_rules,
)

pytestmark = pytest.mark.timeout(300)

UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    found = prometheus_bin()
    if found is None:
        pytest.skip("no prometheus/promtool (Debian package prometheus; "
                    "tests/monitoring/get_prometheus.sh, PRICEPIPE_TEST_PROMETHEUS)")
    return found


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def test_scrape_config_is_valid(bin_dir: Path, tmp_path: Path) -> None:
    # As installed: the rules beside the config, under the name it gives them.
    shutil.copy(SCRAPE_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "pricepipe-alerts.yml")
    done = promtool(bin_dir, "check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout
    assert f"{len(_rules())} rules found" in done.stdout


def test_rules_are_valid(bin_dir: Path) -> None:
    done = promtool(bin_dir, "check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_pass_their_unit_tests(bin_dir: Path) -> None:
    done = promtool(bin_dir, "test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if not case["exp_alerts"]}
    names = {rule["alert"] for rule in _rules()}
    assert {"PersistLagGrowing", "DeadLetters", "FeedStale", "WsSlowConsumerCloses",
            "HeartbeatMissing", "RedisMemoryNearMax"} <= names
    assert fired == names
    assert quiet == names  # and each also where it must not fire


def test_quick_rules_keep_the_expressions() -> None:
    quick = yaml.safe_load(quick_rules(ALERTS.read_text()))
    shipped = _rules()
    rules = [rule for group in quick["groups"] for rule in group["rules"]]
    assert [r["expr"] for r in rules] == [r["expr"] for r in shipped]
    assert {r["for"] for r in rules if "for" in r} == {"1s"}
    assert [r.get("annotations") for r in rules] == [r.get("annotations") for r in shipped]


def test_scrape_targets_are_the_installed_ports() -> None:
    install = (REPO / "deploy" / "install.sh").read_text()

    def default(name: str) -> str:
        found = re.search(rf'^{name}="?([^"\n]*)"?$', install, re.M)
        assert found, name
        return found.group(1)

    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]}
    assert set(jobs) == {"pricepipe-api", "pricepipe-ws", "pricepipe-publisher",
                         "pricepipe-persist"}
    assert jobs["pricepipe-api"] == [f"127.0.0.1:{default('API_PORT')}"]
    assert jobs["pricepipe-ws"] == [f"127.0.0.1:{p}" for p in default("WS_PORTS").split()]
    assert len(jobs["pricepipe-publisher"]) == len(default("PUBLISHERS").split())
    assert jobs["pricepipe-persist"] == [
        f"127.0.0.1:{9300 + n}" for n in range(1, int(default("PERSIST_WORKERS")) + 1)]
    # The units listen where install.sh says (the API's port is fixed in its unit).
    api_unit = (REPO / "deploy" / "systemd" / "pricepipe-api.service").read_text()
    assert f"--port {default('API_PORT')}" in api_unit
    ws_unit = (REPO / "deploy" / "systemd" / "pricepipe-ws@.service").read_text()
    assert "--port %i" in ws_unit


def test_dashboard_queries_are_valid_promql(bin_dir: Path, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 12
    # promtool parses expressions only in rule files: each query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool(bin_dir, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for subject in ("lag", "throughput", "dead letters", "websocket clients", "feed",
                    "redis memory"):
        assert subject in titles


def _exported_names() -> set[str]:
    """Every series name pricepipe's processes export (histograms and
    counters with their suffixes)."""
    from pricepipe.api.metrics import Metrics
    from pricepipe.keys import Keys
    from pricepipe.pipelinemetrics import PipelineCollector
    from pricepipe.publisher.metrics import PublisherMetrics
    from pricepipe.workers.metrics import COUNTERS

    names: set[str] = set()
    families = [*PipelineCollector(None, Keys()).describe(),
                *Metrics().registry.collect(), *PublisherMetrics().registry.collect()]
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    names.update(f"{name}_total" for name, _ in COUNTERS.values())
    names.update({"pricepipe_persist_redis_refusing",
                  "pricepipe_persist_started_timestamp_seconds"})
    # The websocket server renders its own text (subscriber/ws/server.py).
    ws = (REPO / "subscriber" / "ws" / "server.py").read_text()
    names.update(re.findall(r'"(pricepipe_ws_\w+)"', ws))
    return names


def test_every_series_read_is_exported() -> None:
    exported = _exported_names()
    read = {name for rule in _rules() for name in re.findall(r"\bpricepipe_\w+", rule["expr"])}
    read |= {name for expr in dashboard_exprs(json.loads(DASHBOARD.read_text()))
             for name in re.findall(r"\bpricepipe_\w+", expr)}
    assert read - exported == set()
    assert "pricepipe_persist_oldest_waiting_age_seconds" in read
