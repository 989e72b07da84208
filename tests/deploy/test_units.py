"""The systemd units: accepted by ``systemd-analyze verify``, hardened (offline
``systemd-analyze security``), and consistent with the ``pricepipe`` CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pricepipe.cli import build_parser

from . import unitfile
from .helpers import DEPLOY, INSTALLED_VENV, UNITS_DIR

VENV_BIN = Path(sys.executable).parent
SERVICES = sorted(p.name for p in UNITS_DIR.glob("*.service"))
#: An instance for every template, as install.sh enables them.
INSTANCES = {
    "pricepipe-publisher@.service": "pricepipe-publisher@gbm.service",
    "pricepipe-persist@.service": "pricepipe-persist@1.service",
    "pricepipe-ws@.service": "pricepipe-ws@8101.service",
    "pricepipe-jobs-worker@.service": "pricepipe-jobs-worker@1.service",
}
#: Each unit's role: the secrets file it loads, /etc/pricepipe/role-<role>.env.
ROLE_OF = {
    "pricepipe-api.service": "api", "pricepipe-jobs-scheduler.service": "jobs",
    "pricepipe-jobs-worker@.service": "jobs", "pricepipe-migrate.service": "migrate",
    "pricepipe-persist@.service": "persist", "pricepipe-publisher@.service": "publisher",
    "pricepipe-ws@.service": "ws",
}
LONG_RUNNING = [s for s in SERVICES if s != "pricepipe-migrate.service"]
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictNamespaces": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet": None,
    "User": "pricepipe", "LockPersonality": "yes", "SystemCallFilter": "@system-service",
    "PrivateMounts": "yes", "RemoveIPC": "yes",
}
#: Highest ``systemd-analyze security`` exposure allowed (0.0-10.0; 1.2 at present).
MAX_EXPOSURE = 1.5


def instance_of(name: str) -> str:
    return INSTANCES.get(name, name)


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: install the Debian package `systemd`")
    return found


@pytest.fixture(scope="module")
def local_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the units with the installed venv path rewritten to this venv,
    so that verify's check that ExecStart binaries exist is meaningful."""
    out = tmp_path_factory.mktemp("units")
    for path in UNITS_DIR.iterdir():
        text = path.read_text().replace(f"{INSTALLED_VENV}/bin", str(VENV_BIN))
        (out / path.name).write_text(text)
    return out


def test_every_role_has_a_unit() -> None:
    assert set(SERVICES) == {
        "pricepipe-api.service", "pricepipe-jobs-scheduler.service",
        "pricepipe-jobs-worker@.service", "pricepipe-migrate.service",
        "pricepipe-persist@.service", "pricepipe-publisher@.service", "pricepipe-ws@.service",
    }
    assert (UNITS_DIR / "pricepipe.target").exists()


def test_systemd_analyze_verify(local_units: Path) -> None:
    names = [instance_of(s) for s in SERVICES] + ["pricepipe.target"]
    # Instances of templates are verified through the template file they come from.
    for template, instance in INSTANCES.items():
        (local_units / instance).unlink(missing_ok=True)
        (local_units / instance).symlink_to(local_units / template)
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *[str(local_units / n) for n in names]],
        capture_output=True, text=True, timeout=60, cwd=local_units,
    )
    # verify only warns (exit 0) about unknown keys: any output is a defect too.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_is_low(local_units: Path, name: str) -> None:
    # --threshold is on the 0-100 scale behind the printed 0.0-10.0 exposure.
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes",
         f"--threshold={round(MAX_EXPOSURE * 10)}", "--no-pager",
         str(local_units / name)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-800:] + result.stderr
    assert "Overall exposure level" in result.stdout


@pytest.mark.parametrize("name", SERVICES)
def test_unit_policy(name: str) -> None:
    unit = unitfile.load(UNITS_DIR / name)
    service = unit.sections["Service"]
    for key, want in HARDENING.items():
        assert key in service, f"{name}: {key}= missing"
        if want is not None:
            assert want in service[key], f"{name}: {key}={service[key]}"
    # After the allow list, a deny list narrows it (systemd.exec(5), SystemCallFilter=).
    assert service["SystemCallFilter"][-1] == "~@privileged @resources", name
    assert service["CapabilityBoundingSet"] == [], f"{name}: capabilities must be empty"
    assert unit.get("Service", "MemoryMax"), name
    files = unitfile.environment_files(unit, unit_name=instance_of(name), hostname="h")
    # The shared settings, then this role's own secrets (both required), then optional
    # per-instance files only.
    assert files[:2] == [("/etc/pricepipe/pricepipe.env", True),
                         (f"/etc/pricepipe/role-{ROLE_OF[name]}.env", True)], name
    assert all(not required for _, required in files[2:]), files
    assert (DEPLOY / "roles" / f"role-{ROLE_OF[name]}.env.example").exists()
    after = (unit.get("Unit", "After") or "").split()
    assert {"redis-server.service", "postgresql.service"} <= set(after), name
    assert unit.get("Unit", "PartOf") == "pricepipe.target", name
    assert unit.get("Install", "WantedBy") == "pricepipe.target", name
    assert unit.get("Service", "StandardOutput") == "journal", name
    if name in LONG_RUNNING:
        assert unit.get("Service", "Type") == "notify", name
        assert unitfile.seconds(unit.get("Service", "WatchdogSec") or "0") > 0, name
        assert unit.get("Service", "Restart") == "always", name
        assert unit.get("Unit", "StartLimitBurst") and unit.get("Unit", "StartLimitIntervalSec")
    else:
        assert unit.get("Service", "Type") == "oneshot", name


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_parses_with_the_cli(name: str) -> None:
    """Every ExecStart is a valid ``pricepipe`` command line (subcommand and flags exist)."""
    unit = unitfile.load(UNITS_DIR / name)
    argv = unitfile.exec_start(unit, unit_name=instance_of(name), hostname="vm1", env={})
    assert argv[0] == f"{INSTALLED_VENV}/bin/pricepipe"
    args = build_parser().parse_args(argv[1:])
    assert callable(args.func)


def test_target_groups_the_roles() -> None:
    target = unitfile.load(UNITS_DIR / "pricepipe.target")
    assert target.get("Install", "WantedBy") == "multi-user.target"
    assert "pricepipe-migrate.service" in (target.get("Unit", "Wants") or "")
