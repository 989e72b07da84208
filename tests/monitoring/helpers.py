"""Helpers of the monitoring tests: Debian's Prometheus binaries, a throwaway
Prometheus server, and reading a collector's samples."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from tests.helpers import REPO

MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
SCRAPE_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
GET_PROMETHEUS = Path(__file__).with_name("get_prometheus.sh")


def prometheus_bin() -> Path | None:
    """The directory holding ``prometheus`` and ``promtool``:
    ``PRICEPIPE_TEST_PROMETHEUS`` (that directory, or the ``prometheus``
    binary in it), else both on PATH, else Debian's package unpacked by
    get_prometheus.sh (cached between runs); None when there is none."""
    given = os.environ.get("PRICEPIPE_TEST_PROMETHEUS")
    if given:
        path = Path(given)
        path = path if path.is_dir() else path.parent
        if not (path / "prometheus").exists() or not (path / "promtool").exists():
            raise AssertionError(f"PRICEPIPE_TEST_PROMETHEUS={given}: no prometheus and promtool")
        return path
    found = shutil.which("prometheus"), shutil.which("promtool")
    if found[0] and found[1] and Path(found[0]).parent == Path(found[1]).parent:
        return Path(found[0]).parent
    done = subprocess.run([str(GET_PROMETHEUS)], capture_output=True, text=True, timeout=300,
                          check=False)
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def promtool(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "promtool"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def quick_rules(text: str, for_s: int = 1) -> str:
    """The shipped alert rules with every ``for:`` shortened to ``for_s``
    seconds: the same expressions, firing soon enough for a test."""
    out, count = re.subn(r"(?m)^(\s+for:\s*)\S+\s*$", rf"\g<1>{for_s}s", text)
    assert count, "no `for:` in the rules"
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels, with Grafana's
    interval variables replaced by a fixed window."""
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(re.sub(r"\$__(rate_)?interval|\$__range", "1m", target["expr"]))
    return exprs


def sample(families: Iterable[Metric], name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels``, or None."""
    for family in families:
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def series(families: Iterable[Metric], name: str) -> list[dict[str, str]]:
    """The label sets of every sample named ``name``."""
    return [dict(s.labels) for family in families for s in family.samples if s.name == name]


class Prometheus:
    """A Prometheus server on ``port`` with ``config`` (a file), storing in
    ``data_dir``; :meth:`stop` ends it."""

    def __init__(self, bin_dir: Path, config: Path, data_dir: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = data_dir.parent / "prometheus.log"
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(bin_dir / "prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={data_dir}", f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises for an invalid expression: HTTP 400)."""
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        """The alerts named ``name`` in ``state`` (pending, firing)."""
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
