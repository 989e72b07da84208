"""install.sh run for real, twice, into a scratch root: the system commands it
drives (apt-get, systemctl, useradd, runuser/psql, nginx, pip) are shims that
record their calls, and every path it writes is redirected to a temporary
directory. Shows what the second run keeps (passwords, the operator's
environment file, an unchanged redis.conf) and what it reconciles (instances
no longer wanted are disabled)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import DEPLOY, INSTALLED_VENV, UNITS_DIR

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh chowns to root")

LOGGING_SHIM = """#!/bin/sh
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf ' %s' "$a"; done; printf '\\n'; } \\
    >> "$SHIM_DIR/calls.log"
"""

SHIMS = {
    "apt-get": LOGGING_SHIM,
    # Every package installed, but those listed in $SHIM_DIR/missing.
    "dpkg-query": LOGGING_SHIM + """for p in "$@"; do :; done
if grep -qx "$p" "$SHIM_DIR/missing" 2>/dev/null; then exit 1; fi
printf installed
""",
    "nginx": LOGGING_SHIM,
    "useradd": LOGGING_SHIM + 'touch "$SHIM_DIR/user-created"\n',
    # psql runs through runuser: keep what it was fed (the passwords, then roles.sql).
    "runuser": LOGGING_SHIM + 'cat >> "$SHIM_DIR/psql.stdin"\n',
    "id": """#!/bin/sh
if [ "$1" = "-u" ] && [ "$2" = "pricepipe" ]; then
    [ -e "$SHIM_DIR/user-created" ] && echo 999 && exit 0
    exit 1
fi
exec /usr/bin/id "$@"
""",
    # Enabling a pricepipe unit links it into pricepipe.target.wants, as [Install] would.
    "systemctl": LOGGING_SHIM + """wants="$PRICEPIPE_SYSTEMD_DIR/pricepipe.target.wants"
case "$1" in
    enable) shift; mkdir -p "$wants"
            for u in "$@"; do case "$u" in
                pricepipe-*) ln -sfn "../${u%%@*}" "$wants/$u" ;; esac; done ;;
    disable) shift; for u in "$@"; do rm -f "$wants/$u"; done ;;
esac
exit 0
""",
}

DEBIAN_REDIS_CONF = """bind 127.0.0.1 -::1
protected-mode yes
port 6379
# maxmemory <bytes>
# maxmemory-policy noeviction
appendonly no
appendfsync everysec
"""


@dataclass
class Scratch:
    root: Path
    shims: Path
    prefix: Path
    etc: Path
    systemd: Path
    nginx: Path
    sbin: Path
    redis_conf: Path

    def env(self) -> dict[str, str]:
        return dict(
            os.environ, PATH=f"{self.shims}:{os.environ['PATH']}", SHIM_DIR=str(self.shims),
            PRICEPIPE_ETC=str(self.etc), PRICEPIPE_SYSTEMD_DIR=str(self.systemd),
            PRICEPIPE_NGINX_DIR=str(self.nginx), PRICEPIPE_SBIN_DIR=str(self.sbin),
            PRICEPIPE_REDIS_CONF=str(self.redis_conf),
        )

    def install(self, *args: str, ok: bool = True) -> str:
        result = subprocess.run(
            ["bash", str(DEPLOY / "install.sh"), "--prefix", str(self.prefix), *args],
            capture_output=True, text=True, timeout=120, env=self.env())
        assert (result.returncode == 0) == ok, result.stdout + result.stderr
        return result.stdout + result.stderr

    def calls(self) -> list[str]:
        log = self.shims / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    s = Scratch(tmp_path, tmp_path / "shims", tmp_path / "opt", tmp_path / "etc",
                tmp_path / "systemd", tmp_path / "nginx", tmp_path / "sbin",
                tmp_path / "redis.conf")
    for directory in (s.shims, s.systemd, s.nginx / "sites-available",
                      s.nginx / "sites-enabled", s.sbin, s.prefix / "venv" / "bin"):
        directory.mkdir(parents=True)
    for name, text in SHIMS.items():
        (s.shims / name).write_text(text)
        (s.shims / name).chmod(0o755)
    # An existing virtualenv: pip is a shim too (the real install is not under test here).
    for name in ("python", "pip"):
        (s.prefix / "venv" / "bin" / name).write_text(LOGGING_SHIM)
        (s.prefix / "venv" / "bin" / name).chmod(0o755)
    s.redis_conf.write_text(DEBIAN_REDIS_CONF)
    (s.nginx / "sites-enabled" / "default").symlink_to(s.nginx / "sites-available" / "default")
    return s


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def active_settings(conf: str) -> list[tuple[str, str]]:
    return [tuple(line.split(None, 1)) for line in conf.splitlines()  # type: ignore[misc]
            if line.strip() and not line.lstrip().startswith("#")]


def test_install_twice_keeps_secrets_and_reconciles(scratch: Scratch) -> None:
    scratch.install("--persist-workers", "2", "--ws-ports", "8101,8102")
    calls = scratch.calls()

    secrets = dict(line.split("=", 1)
                   for line in (scratch.etc / "db-passwords").read_text().splitlines())
    assert mode(scratch.etc / "db-passwords") == 0o600
    assert all(re.fullmatch(r"[0-9a-f]{48}", secrets[k])
               for k in ("WRITER_PASSWORD", "API_PASSWORD"))
    env_file = scratch.etc / "pricepipe.env"
    assert mode(env_file) == 0o600
    env_text = env_file.read_text()
    assert (f"PRICEPIPE_DATABASE_URL=postgresql://pricepipe_writer:{secrets['WRITER_PASSWORD']}"
            "@127.0.0.1:5432/pricepipe") in env_text
    assert (f"PRICEPIPE_DATABASE_READ_URL=postgresql://pricepipe_api:{secrets['API_PASSWORD']}"
            "@127.0.0.1:5432/pricepipe") in env_text
    fed = (scratch.shims / "psql.stdin").read_text()
    assert fed.startswith(f"\\set writer_password {secrets['WRITER_PASSWORD']}\n"
                          f"\\set api_password {secrets['API_PASSWORD']}\n")
    assert not any(secrets["WRITER_PASSWORD"] in c for c in calls)  # never on a command line

    settings = active_settings(scratch.redis_conf.read_text())
    for key, value in [("appendonly", "yes"), ("appendfsync", "everysec"),
                       ("auto-aof-rewrite-min-size", "1gb"),
                       ("maxmemory", "1gb"), ("maxmemory-policy", "noeviction")]:
        assert [v for k, v in settings if k == key] == [value], key

    for unit in UNITS_DIR.iterdir():
        installed = scratch.systemd / unit.name
        assert mode(installed) == 0o644
        assert installed.read_text() == unit.read_text().replace(
            INSTALLED_VENV, str(scratch.prefix / "venv"))
    assert mode(scratch.sbin / "pricepipe") == 0o750
    assert (scratch.prefix / "deploy" / "install.sh").exists()

    site = scratch.nginx / "sites-available" / "pricepipe"
    assert "server 127.0.0.1:8102" in site.read_text()
    assert (scratch.nginx / "sites-enabled" / "pricepipe").resolve() == site
    assert not (scratch.nginx / "sites-enabled" / "default").is_symlink()
    assert (scratch.nginx / "snippets" / "pricepipe-locations.conf").exists()
    wants = sorted(p.name for p in (scratch.systemd / "pricepipe.target.wants").iterdir())
    assert "pricepipe-persist@2.service" in wants and "pricepipe-ws@8102.service" in wants
    assert calls.index("nginx -t") < calls.index("systemctl reload-or-restart nginx.service")
    assert calls.index("systemctl restart pricepipe-migrate.service") < calls.index(
        "systemctl restart pricepipe.target")
    assert sum(c.startswith("useradd") for c in calls) == 1
    assert "systemctl restart redis-server.service" in calls  # its configuration changed

    # The operator edits the environment file; then an upgrade with one worker fewer.
    env_file.write_text(env_text + "PRICEPIPE_WORKER_BATCH_SIZE=2000\n")
    before = {p: p.read_bytes() for p in [scratch.etc / "db-passwords", env_file,
                                          scratch.redis_conf,
                                          *(p for p in scratch.systemd.iterdir() if p.is_file())]}
    scratch.install("--persist-workers", "1", "--ws-ports", "8101,8102")
    second = scratch.calls()[len(calls):]

    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed on the second run"
    fed_twice = (scratch.shims / "psql.stdin").read_text()
    assert fed_twice == fed + fed  # the same passwords again: nothing rotated
    assert "systemctl disable --now pricepipe-persist@2.service" in second
    assert not any(c.startswith("useradd") for c in second)
    # redis.conf unchanged: Redis keeps running under the pipeline.
    assert "systemctl restart redis-server.service" not in second
    assert "systemctl start redis-server.service" in second
    wants = sorted(p.name for p in (scratch.systemd / "pricepipe.target.wants").iterdir())
    assert "pricepipe-persist@2.service" not in wants
    assert "pricepipe-persist@1.service" in wants


def test_offline_install_checks_packages_and_uses_only_the_wheelhouse(scratch: Scratch) -> None:
    wheels = scratch.root / "wheels"
    wheels.mkdir()
    (scratch.shims / "missing").write_text("nginx\npostgresql-client\n")
    out = scratch.install("--offline", "--wheelhouse", str(wheels), ok=False)
    assert "not installed: nginx postgresql-client" in out
    assert not (scratch.etc / "db-passwords").exists()  # refused before changing anything

    (scratch.shims / "missing").unlink()
    scratch.install("--offline", "--wheelhouse", str(wheels))
    calls = scratch.calls()
    assert not any(c.startswith("apt-get") for c in calls)
    pips = [c for c in calls if c.startswith("pip install")]
    assert len(pips) == 2
    assert all(f"--find-links {wheels} --no-index" in c for c in pips), pips
