"""install.sh run for real, twice, into a scratch root: the system commands it
drives (apt-get, systemctl, useradd, runuser/psql, nginx, pip) are shims that
record their calls, and every path it writes is redirected to a temporary
directory; ``pricepipe redis-acl`` is the real one. Shows what the second run
keeps (passwords, the operator's environment file, an unchanged redis.conf and
ACL file) and what it reconciles (instances no longer wanted are disabled),
what each role's secrets file holds (its own Redis user, only the database URL
it needs), that the rendered ACL file is one a real ``redis-server`` loads and
enforces, the refusals of the password guard, and the upgrade from one shared
environment file."""

from __future__ import annotations

import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pricepipe.embedded import free_port
from tests.helpers import slow_stage

from .helpers import DEPLOY, INSTALLED_VENV, UNITS_DIR

# Real install.sh runs, 5-10 s each: beside the soak, out of the main suite's
# 10 minutes.
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="install.sh chowns to root"),
              slow_stage]

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
    # psql runs through runuser: keep what it was fed (the passwords, then roles.sql);
    # the cluster answers `SHOW port` with a port other than 5432, as Debian's second does.
    "runuser": LOGGING_SHIM + """case "$*" in *"SHOW port"*) echo "$SHIM_PG_PORT" ;; esac
cat >> "$SHIM_DIR/psql.stdin"
""",
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
    redis_acl: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRICEPIPE_")}
        return dict(
            env, PATH=f"{self.shims}:{os.environ['PATH']}", SHIM_DIR=str(self.shims),
            PRICEPIPE_ETC=str(self.etc), PRICEPIPE_SYSTEMD_DIR=str(self.systemd),
            PRICEPIPE_NGINX_DIR=str(self.nginx), PRICEPIPE_SBIN_DIR=str(self.sbin),
            PRICEPIPE_REDIS_CONF=str(self.redis_conf), PRICEPIPE_REDIS_ACL=str(self.redis_acl),
            PRICEPIPE_REDIS_OWNER=REDIS_OWNER, SHIM_PG_PORT=str(PG_PORT),
        )

    def role_env(self, role: str) -> Path:
        return self.etc / f"role-{role}.env"

    def secret_files(self) -> list[Path]:
        """Every file holding a password or its hash."""
        return [self.etc / "db-passwords", self.etc / "admin.env", self.redis_acl,
                *sorted((self.etc / "redis-passwords").iterdir()),
                *(self.role_env(role) for role in ROLES)]

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
                tmp_path / "redis.conf", tmp_path / "users.acl")
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
    # ... but `pricepipe` is this checkout's (install.sh runs `pricepipe redis-acl`).
    (s.prefix / "venv" / "bin" / "pricepipe").write_text(
        f'#!/bin/sh\nexec {sys.executable} -m pricepipe "$@"\n')
    (s.prefix / "venv" / "bin" / "pricepipe").chmod(0o755)
    s.redis_conf.write_text(DEBIAN_REDIS_CONF)
    (s.nginx / "sites-enabled" / "default").symlink_to(s.nginx / "sites-available" / "default")
    return s


#: The units' roles, each with its secrets file.
ROLES = ("publisher", "persist", "ws", "api", "jobs", "migrate")
#: The port the shimmed PostgreSQL cluster answers `SHOW port` with.
PG_PORT = 5433
#: Owner of the ACL file: Redis's user where it exists, as on Debian.
try:
    pwd.getpwnam("redis")
    REDIS_OWNER = "redis:redis"
except KeyError:
    REDIS_OWNER = "root:root"


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
    assert "URL=" not in re.sub(r"(?m)^#.*$", "", env_text)  # settings only, no URL
    writer = (f"postgresql://pricepipe_writer:{secrets['WRITER_PASSWORD']}"
              f"@127.0.0.1:{PG_PORT}/pricepipe")
    reader = f"postgresql://pricepipe_api:{secrets['API_PASSWORD']}@127.0.0.1:{PG_PORT}/pricepipe"
    check_role_files(scratch, writer=writer, reader=reader)
    fed = (scratch.shims / "psql.stdin").read_text()
    assert fed.startswith(f"\\set writer_password {secrets['WRITER_PASSWORD']}\n"
                          f"\\set api_password {secrets['API_PASSWORD']}\n")
    redis_passwords = [p.read_text().strip() for p in (scratch.etc / "redis-passwords").iterdir()]
    for password in [*secrets.values(), *redis_passwords]:  # never on a command line
        assert not any(password in c for c in calls)
    check_acl_file(scratch)

    settings = active_settings(scratch.redis_conf.read_text())
    for key, value in [("appendonly", "yes"), ("appendfsync", "everysec"),
                       ("auto-aof-rewrite-min-size", "1gb"),
                       ("maxmemory", "1gb"), ("maxmemory-policy", "noeviction"),
                       ("aclfile", str(scratch.redis_acl))]:
        assert [v for k, v in settings if k == key] == [value], key

    for unit in UNITS_DIR.iterdir():
        installed = scratch.systemd / unit.name
        assert mode(installed) == 0o644
        assert installed.read_text() == unit.read_text().replace(
            INSTALLED_VENV, str(scratch.prefix / "venv"))
    assert mode(scratch.sbin / "pricepipe") == 0o750
    assert f'. "{scratch.etc}/admin.env"' in (scratch.sbin / "pricepipe").read_text()
    # Each persist worker's own metrics port, on loopback.
    for n in (1, 2):
        dropin = scratch.systemd / f"pricepipe-persist@{n}.service.d" / "metrics.conf"
        text = dropin.read_text()
        assert f"Environment=PRICEPIPE_WORKER_METRICS_PORT={9300 + n}\n" in text
        assert "Environment=PRICEPIPE_WORKER_METRICS_HOST=127.0.0.1\n" in text
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
    # The operator edits the environment file and adds a secret of the API's own.
    env_file.write_text(env_text + "PRICEPIPE_WORKER_BATCH_SIZE=2000\n")
    api_env = scratch.role_env("api")
    api_env.write_text(api_env.read_text() + "PRICEPIPE_API_API_KEYS=k1\n")
    before = {p: p.read_bytes() for p in [*scratch.secret_files(), env_file, scratch.redis_conf,
                                          *(p for p in scratch.systemd.iterdir() if p.is_file())]}
    scratch.install("--persist-workers", "1", "--ws-ports", "8101,8102")
    second = scratch.calls()[len(calls):]

    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed on the second run"
    fed_twice = (scratch.shims / "psql.stdin").read_text()
    assert fed_twice == fed + fed  # the same passwords again: nothing rotated
    assert "systemctl disable --now pricepipe-persist@2.service" in second
    assert not (scratch.systemd / "pricepipe-persist@2.service.d" / "metrics.conf").exists()
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


def check_role_files(scratch: Scratch, *, writer: str, reader: str) -> None:
    """Each role's file (root, 0600) holds its own Redis user's URL and only the database
    URL it needs; admin.env the admin's and the writer's."""
    passwords = {p.name: p.read_text().strip()
                 for p in (scratch.etc / "redis-passwords").iterdir()}
    assert mode(scratch.etc / "redis-passwords") == 0o700
    want_db = {"persist": {"PRICEPIPE_DATABASE_URL": writer},
               "jobs": {"PRICEPIPE_DATABASE_URL": writer},
               "migrate": {"PRICEPIPE_DATABASE_URL": writer},
               "api": {"PRICEPIPE_DATABASE_READ_URL": reader}}
    for role in ROLES:
        path = scratch.role_env(role)
        assert mode(path) == 0o600 and path.stat().st_uid == 0, path
        values = dict(line.split("=", 1) for line in path.read_text().splitlines()
                      if line and not line.startswith("#"))
        urls = {k: v for k, v in values.items() if k.endswith("_URL")}
        want = dict(want_db.get(role, {}))
        if role != "migrate":
            want["PRICEPIPE_REDIS_URL"] = f"redis://pp-{role}:{passwords[role]}@127.0.0.1:6379/0"
        assert urls == want, role
        assert writer not in path.read_text() or role in ("persist", "jobs", "migrate"), role
        assert passwords["admin"] not in path.read_text(), role
    admin = (scratch.etc / "admin.env").read_text()
    assert mode(scratch.etc / "admin.env") == 0o600
    assert f"PRICEPIPE_REDIS_URL=redis://default:{passwords['admin']}@127.0.0.1:6379/0\n" in admin
    assert f"PRICEPIPE_DATABASE_URL={writer}\n" in admin


def check_acl_file(scratch: Scratch) -> None:
    """The ACL file holds hashes, never a password, and a real redis-server started with
    the installed redis.conf loads it: no client without a password, each user its rights."""
    acl = scratch.redis_acl
    assert mode(acl) == 0o640
    assert pwd.getpwuid(acl.stat().st_uid).pw_name == REDIS_OWNER.split(":")[0]
    text = acl.read_text()
    passwords = {p.name: p.read_text().strip()
                 for p in (scratch.etc / "redis-passwords").iterdir()}
    assert not any(password in text for password in passwords.values())
    users = [line.split()[1] for line in text.splitlines()]
    assert "default" in users and "pp-ws" in users and "pp-persist" in users
    default = next(line for line in text.splitlines() if line.split()[1] == "default")
    assert " on " in default and "+@all" in default  # never disabled nor restricted
    port = free_port()
    data = scratch.root / "redis-data"
    data.mkdir()
    # The installed redis.conf as it is, but for where it listens and keeps its data.
    server = subprocess.Popen(
        ["redis-server", str(scratch.redis_conf), "--port", str(port), "--dir", str(data),
         "--appendonly", "no", "--save", "", "--daemonize", "no", "--logfile", ""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:  # until it listens (redis-py's own retries would back off for seconds)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    assert server.stdout is not None
                    raise AssertionError(server.stdout.read().decode()) from None
                time.sleep(0.02)
        # No retries: redis-py retries a refused AUTH for seconds otherwise.
        anonymous = redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):  # NOAUTH: no client without a password
            anonymous.ping()
        ws_url = dict(line.split("=", 1) for line in scratch.role_env("ws").read_text()
                      .splitlines() if line.startswith("PRICEPIPE_"))["PRICEPIPE_REDIS_URL"]
        ws = redis.Redis.from_url(ws_url.replace(":6379/", f":{port}/"), socket_timeout=5)
        assert ws.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            ws.xadd("pp:{s0}:trades:AAPL", {"p": "1"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            ws.flushall()
        admin = redis.Redis(port=port, password=passwords["admin"], socket_timeout=5)
        assert admin.xadd("pp:{s0}:trades:AAPL", {"p": "1"})
        ws.close()
        admin.close()
        anonymous.close()
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


def test_password_guard_refuses_then_rotates_both(scratch: Scratch) -> None:
    scratch.install("--no-start")
    secrets = scratch.etc / "db-passwords"
    old = secrets.read_text()
    kept = {p: p.read_bytes() for p in scratch.secret_files() if p != secrets}

    # The database passwords lost: new ones would lock out the files holding the old.
    secrets.unlink()
    out = scratch.install("--no-start", ok=False)
    assert "db-passwords is missing or incomplete" in out
    assert str(scratch.role_env("persist")) in out and str(scratch.etc / "admin.env") in out
    assert not secrets.exists()
    assert {p: p.read_bytes() for p in kept} == kept  # refused before any change
    secrets.write_text(old)

    # A Redis password lost: the same.
    (scratch.etc / "redis-passwords" / "ws").unlink()
    out = scratch.install("--no-start", ok=False)
    assert f"no Redis password in {scratch.etc}/redis-passwords for" in out
    assert f"{scratch.role_env('ws')} (user ws)" in out
    assert scratch.role_env("ws").read_bytes() == kept[scratch.role_env("ws")]

    # Rotation: without the files holding them, new passwords go to both sides.
    secrets.unlink()
    for path in [scratch.etc / "admin.env", *(scratch.role_env(role) for role in ROLES)]:
        path.unlink()
    scratch.install("--no-start")
    new = dict(line.split("=", 1) for line in secrets.read_text().splitlines())
    assert secrets.read_text() != old
    fed = (scratch.shims / "psql.stdin").read_text()
    assert f"\\set writer_password {new['WRITER_PASSWORD']}\n" in fed  # set in PostgreSQL
    writer = f"postgresql://pricepipe_writer:{new['WRITER_PASSWORD']}@127.0.0.1:{PG_PORT}/pricepipe"
    reader = f"postgresql://pricepipe_api:{new['API_PASSWORD']}@127.0.0.1:{PG_PORT}/pricepipe"
    check_role_files(scratch, writer=writer, reader=reader)
    assert scratch.redis_acl.read_bytes() != kept[scratch.redis_acl]  # the new ws user


#: /etc/pricepipe/pricepipe.env as install.sh wrote it before the role files.
LEGACY_ENV = """PRICEPIPE_REDIS_URL=redis://127.0.0.1:6379/0
PRICEPIPE_REDIS_CLUSTER=0
PRICEPIPE_REDIS_PREFIX=pp
PRICEPIPE_REDIS_SHARDS=8
PRICEPIPE_DATABASE_URL=postgresql://pricepipe_writer:{w}@127.0.0.1:5432/pricepipe
PRICEPIPE_DATABASE_READ_URL=postgresql://pricepipe_api:{a}@127.0.0.1:5432/pricepipe
PRICEPIPE_LOG_JSON=1
PRICEPIPE_WORKER_BATCH_SIZE=2000
"""


def test_upgrade_moves_urls_out_of_the_shared_file(scratch: Scratch) -> None:
    scratch.etc.mkdir()
    w, a = "a" * 48, "b" * 48
    (scratch.etc / "db-passwords").write_text(f"WRITER_PASSWORD={w}\nAPI_PASSWORD={a}\n")
    (scratch.etc / "pricepipe.env").write_text(LEGACY_ENV.format(w=w, a=a))
    out = scratch.install("--no-start")
    assert "moving PRICEPIPE_REDIS_URL PRICEPIPE_DATABASE_URL PRICEPIPE_DATABASE_READ_URL" in out
    shared = (scratch.etc / "pricepipe.env").read_text()
    assert "_URL=" not in shared and w not in shared
    assert "PRICEPIPE_WORKER_BATCH_SIZE=2000\n" in shared  # the operator's settings stay
    # The same passwords, now in the files of the roles that need them.
    check_role_files(
        scratch, writer=f"postgresql://pricepipe_writer:{w}@127.0.0.1:{PG_PORT}/pricepipe",
        reader=f"postgresql://pricepipe_api:{a}@127.0.0.1:{PG_PORT}/pricepipe")


def test_without_local_servers_the_role_files_are_required(scratch: Scratch) -> None:
    scratch.etc.mkdir()
    (scratch.etc / "pricepipe.env").write_text(
        (DEPLOY / "pricepipe.env.example").read_text())
    out = scratch.install("--no-local-servers", "--no-start", ok=False)
    assert f"--no-local-servers: write {scratch.role_env('publisher')}" in out
    for role in ROLES:
        assert str(scratch.role_env(role)) in out
    for role in ROLES:
        scratch.role_env(role).write_text(
            (DEPLOY / "roles" / f"role-{role}.env.example").read_text())
        scratch.role_env(role).chmod(0o644)
    out = scratch.install("--no-local-servers", "--no-start")
    assert "redis-acl apply" in out  # how to create the users on the Redis elsewhere
    for role in ROLES:
        assert mode(scratch.role_env(role)) == 0o600
    assert not scratch.redis_acl.exists()
    assert not any(c.startswith("runuser") for c in scratch.calls())
