"""Helpers of the deployment tests: where the deploy files are, install.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS_DIR = DEPLOY / "systemd"
#: Where install.sh puts the virtualenv; tests rewrite it to the one running them.
INSTALLED_VENV = "/opt/pricepipe/venv"

INSTALL = DEPLOY / "install.sh"


def install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def nginx_binary() -> str | None:
    return os.environ.get("PRICEPIPE_TEST_NGINX") or shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def locations_snippet(access_log: Path) -> str:
    """deploy/nginx/pricepipe-locations.conf with its access log at ``access_log``
    (the installed path, /var/log/nginx, is not writable in a test)."""
    return ((DEPLOY / "nginx" / "pricepipe-locations.conf").read_text()
            .replace("/var/log/nginx/access.log", str(access_log)))
