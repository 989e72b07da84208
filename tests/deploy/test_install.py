"""deploy/install.sh: shellcheck-clean, a dry run that lists the right actions
and changes nothing (online, and offline from a wheelhouse), refused bad
options, and the nginx site it renders (checked by ``nginx -t`` when an nginx
binary is available)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .helpers import DEPLOY, INSTALL, install, locations_snippet, nginx_binary


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: install the Debian package `shellcheck`")
    result = subprocess.run([shellcheck, "--severity=style", str(INSTALL)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_dry_run_lists_actions_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    result = install("--dry-run", "--prefix", str(prefix), "--persist-workers", "3",
                     "--ws-ports", "9101,9102", "--publishers", "gbm", "--jobs-workers", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not prefix.exists()  # nothing was created
    apt = next(line for line in out.splitlines() if "apt-get install" in line)
    for package in ("redis-server", "postgresql", "nginx", "python3-venv"):
        assert package in apt.split()
    for setting in ("appendonly yes", "appendfsync everysec", "auto-aof-rewrite-min-size 1gb",
                    "maxmemory-policy noeviction"):
        assert f"+ set '{setting}' in /etc/redis/redis.conf" in out
    assert "roles.sql" in out
    assert "+ write /etc/pricepipe/pricepipe.env (mode 0600, owner root:root)" in out
    assert "+ write /etc/pricepipe/db-passwords (mode 0600, owner root:root)" in out
    assert "+ write /usr/local/sbin/pricepipe (mode 0750, owner root:root)" in out
    # Redis: a user per role in an ACL file Redis owns, hashes only.
    assert (f"+ {prefix}/venv/bin/pricepipe redis-acl passwords "
            "/etc/pricepipe/redis-passwords") in out
    assert "+ set 'aclfile /etc/redis/users.acl' in /etc/redis/redis.conf" in out
    assert ("redis-acl render --passwords-from /etc/pricepipe/redis-passwords --prefix pp "
            "> /etc/redis/users.acl (mode 0640, owner redis:redis)") in out
    # One secrets file per role, with only what the role needs; the operator's apart.
    for role, holds in [("publisher", "Redis user publisher "),
                        ("persist", "Redis user persist PRICEPIPE_DATABASE_URL"),
                        ("ws", "Redis user ws "),
                        ("api", "Redis user api PRICEPIPE_DATABASE_READ_URL"),
                        ("jobs", "Redis user jobs PRICEPIPE_DATABASE_URL"),
                        ("migrate", "PRICEPIPE_DATABASE_URL"),
                        ]:
        line = f"+ write /etc/pricepipe/role-{role}.env (mode 0600, owner root:root): {holds}"
        assert line + "\n" in out, line
    assert ("+ write /etc/pricepipe/admin.env (mode 0600, owner root:root): Redis user admin "
            "PRICEPIPE_DATABASE_URL\n") in out
    # The users exist before anything connects with them; the files before the units start.
    assert out.index("redis-acl passwords") < out.index("redis-acl render") < out.index(
        "restart redis-server") < out.index("role-api.env") < out.index("restart pricepipe.target")
    # Persist workers 1-3: a metrics port each, on loopback.
    for n in (1, 2, 3):
        assert (f"+ write /etc/systemd/system/pricepipe-persist@{n}.service.d/metrics.conf "
                "(mode 0644, owner root:root)") in out
    # The roles exist before migrations run as the writer (which may not create roles).
    assert out.index("roles.sql") < out.index("restart pricepipe-migrate")
    assert f"{prefix}/venv/bin/pip install" in out.replace("+ ", "")
    enable = next(line for line in out.splitlines()
                  if line.startswith("+ systemctl enable pricepipe"))
    units = set(enable.split()[3:])
    assert units == {
        "pricepipe.target", "pricepipe-migrate.service", "pricepipe-api.service",
        "pricepipe-jobs-scheduler.service", "pricepipe-publisher@gbm.service",
        "pricepipe-persist@1.service", "pricepipe-persist@2.service",
        "pricepipe-persist@3.service", "pricepipe-jobs-worker@1.service",
        "pricepipe-jobs-worker@2.service", "pricepipe-ws@9101.service",
        "pricepipe-ws@9102.service",
    }
    # Order: migrations before the roles start, nginx checked before it is reloaded.
    assert out.index("nginx -t") < out.index("reload-or-restart nginx")
    assert out.index("restart pricepipe-migrate") < out.index("restart pricepipe.target")


def test_offline_dry_run_verifies_packages_and_installs_from_the_wheelhouse(
        tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    prefix = tmp_path / "opt"
    result = install("--dry-run", "--offline", "--wheelhouse", str(wheels), "--prefix",
                     str(prefix))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "apt-get" not in out  # nothing to download from
    verify = next(line for line in out.splitlines() if "offline: verifying" in line)
    for package in ("redis-server", "postgresql", "nginx", "python3-venv"):
        assert package in verify
    pips = [line for line in out.splitlines() if f"{prefix}/venv/bin/pip install" in line]
    assert len(pips) == 2, out  # pip itself, then the checkout
    for line in pips:
        assert f"--find-links {wheels} --no-index" in line
    assert not prefix.exists()


def test_wheelhouse_online_is_looked_in_first(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    result = install("--dry-run", "--wheelhouse", str(wheels), "--prefix", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert "apt-get install" in result.stdout
    pips = [line for line in result.stdout.splitlines() if "/venv/bin/pip install" in line]
    assert pips and all(f"--find-links {wheels}" in line and "--no-index" not in line
                        for line in pips)


def test_dry_run_without_local_servers_skips_them(tmp_path: Path) -> None:
    result = install("--dry-run", "--no-local-servers", "--prefix", str(tmp_path / "opt"))
    assert result.returncode == 0, result.stderr
    assert "redis-server" not in result.stdout.split("systemd units")[0]
    assert "roles.sql" not in result.stdout
    assert "redis-acl apply" in result.stdout  # how to create the users on the remote Redis
    assert "role-api.env (mode" not in result.stdout  # the operator writes the role files


def test_shared_file_with_urls_is_refused_without_local_servers(tmp_path: Path) -> None:
    """An install from before the role files, on a machine without the servers: the
    installer cannot tell which URL is whose, so it asks for the move."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "pricepipe.env").write_text(
        "PRICEPIPE_REDIS_URL=redis://redis-1:6379/0\n"
        "PRICEPIPE_DATABASE_URL=postgresql://pricepipe_writer:pw@pg-1/pricepipe\n")
    result = install("--dry-run", "--no-local-servers", "--prefix", str(tmp_path / "opt"),
                     env=dict(os.environ, PRICEPIPE_ETC=str(etc)))
    assert result.returncode != 0
    assert (f"{etc}/pricepipe.env sets PRICEPIPE_REDIS_URL PRICEPIPE_DATABASE_URL: each "
            "role's URLs now go in its own file") in result.stderr
    assert "pw" not in result.stderr.replace("password", "")  # names, never values
    assert "+ " not in result.stdout


@pytest.mark.parametrize("role, key", [
    ("api", "PRICEPIPE_DATABASE_URL"),
    ("ws", "PRICEPIPE_DATABASE_URL"),
    ("ws", "PRICEPIPE_DATABASE_READ_URL"),
    ("publisher", "PRICEPIPE_DATABASE_URL"),
])
def test_role_file_with_a_url_it_must_not_hold_is_refused(tmp_path: Path, role: str,
                                                           key: str) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / f"role-{role}.env").write_text(f"{key}=postgresql://pricepipe_writer:pw@h/db\n")
    for local in ([], ["--no-local-servers"]):
        result = install("--dry-run", *local, "--prefix", str(tmp_path / "opt"),
                         env=dict(os.environ, PRICEPIPE_ETC=str(etc)))
        assert result.returncode != 0
        assert f"role-{role}.env sets {key}, which the {role} role must not hold" in (
            result.stderr)
        assert "+ " not in result.stdout


def test_missing_passwords_with_files_holding_the_old_ones_are_refused(tmp_path: Path) -> None:
    """Point 8 of issue 16: no new passwords while an environment file keeps the old."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "pricepipe.env").write_text(
        "PRICEPIPE_DATABASE_URL=postgresql://pricepipe_writer:old@127.0.0.1:5432/pricepipe\n")
    env = dict(os.environ, PRICEPIPE_ETC=str(etc))
    result = install("--dry-run", "--prefix", str(tmp_path / "opt"), env=env)
    assert result.returncode != 0
    assert f"{etc}/db-passwords is missing or incomplete, but {etc}/pricepipe.env" in result.stderr
    assert "+ " not in result.stdout

    (etc / "pricepipe.env").unlink()
    (etc / "db-passwords").write_text("WRITER_PASSWORD=old\nAPI_PASSWORD=old2\n")
    (etc / "role-ws.env").write_text("PRICEPIPE_REDIS_URL=redis://pp-ws:old@127.0.0.1:6379/0\n")
    result = install("--dry-run", "--prefix", str(tmp_path / "opt"), env=env)
    assert result.returncode != 0
    assert f"no Redis password in {etc}/redis-passwords for {etc}/role-ws.env (user ws)" in (
        result.stderr)

    (etc / "redis-passwords").mkdir()
    (etc / "redis-passwords" / "ws").write_text("old\n")
    result = install("--dry-run", "--prefix", str(tmp_path / "opt"), env=env)
    assert result.returncode == 0, result.stderr
    assert "keeping database passwords" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--persist-workers", "0"], "--persist-workers"),
    (["--ws-ports", "80"], "port '80'"),
    (["--publishers", "gbm;rm"], "publisher source"),
    (["--db-name", "x'y"], "--db-name"),
    (["--tls-cert", "/c.pem"], "go together"),
    (["--offline"], "--offline needs --wheelhouse"),
    (["--offline", "--wheelhouse", "/nonexistent/wheels"], "is not a directory"),
    (["--bogus"], "unknown option"),
])
def test_bad_options_are_refused(args: list[str], message: str) -> None:
    result = install("--dry-run", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "+ " not in result.stdout  # refused before any action


def test_operator_wrapper(tmp_path: Path) -> None:
    env = dict(os.environ, PRICEPIPE_ETC=str(tmp_path / "etc"))
    result = install("--render-wrapper", "--prefix", str(tmp_path / "opt"), env=env)
    assert result.returncode == 0, result.stderr
    wrapper = tmp_path / "pricepipe"
    wrapper.write_text(result.stdout)
    text = result.stdout
    assert text.startswith("#!/bin/sh\n")
    assert f'. "{tmp_path}/etc/pricepipe.env"' in text
    assert f'. "{tmp_path}/etc/admin.env"' in text  # the operator's URLs, not a unit's
    assert f'. "{tmp_path}/etc/jobs.env"' in text  # only for jobs and backfill
    assert text.rstrip().endswith(
        f'exec runuser -u pricepipe -- "{tmp_path}/opt/venv/bin/pricepipe" "$@"')
    check = subprocess.run(["sh", "-n", str(wrapper)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: install the Debian package `shellcheck`")
    # SC1090/1091: the sourced environment files do not exist at check time.
    lint = subprocess.run([shellcheck, "-s", "sh", "-e", "SC1090,SC1091", str(wrapper)],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize("tls", [False, True])
def test_nginx_site(tmp_path: Path, tls: bool) -> None:
    env = dict(os.environ, PRICEPIPE_NGINX_DIR=str(tmp_path))
    args = ["--render-nginx", "--ws-ports", "8101,8102,8103", "--server-name", "prices.example"]
    if tls:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    result = install(*args, env=env)
    assert result.returncode == 0, result.stderr
    site = result.stdout
    upstream = re.search(r"upstream pricepipe_ws \{(.*?)\}", site, re.S)
    assert upstream is not None
    assert "least_conn;" in upstream[1]
    assert re.findall(r"server 127\.0\.0\.1:(\d+)", upstream[1]) == ["8101", "8102", "8103"]
    assert "server 127.0.0.1:8000;" in site
    assert "server_name prices.example;" in site
    assert f"include {tmp_path}/snippets/pricepipe-locations.conf;" in site
    assert "@" not in re.sub(r"#.*", "", site)  # every placeholder filled
    if tls:
        assert "listen 443 ssl" in site and f"ssl_certificate {cert};" in site
        assert "return 301 https://$host$request_uri;" in site
    else:
        assert "listen 443" not in site
    locations = (DEPLOY / "nginx" / "pricepipe-locations.conf").read_text()
    ws_block = re.search(r"location /ws \{(.*?)\}", locations, re.S)
    assert ws_block is not None
    assert "proxy_set_header Upgrade $http_upgrade;" in ws_block[1]
    assert "proxy_set_header Connection $connection_upgrade;" in ws_block[1]

    nginx = nginx_binary()
    if nginx is None:
        return  # the rendering is checked above; `nginx -t` needs the binary
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets" / "pricepipe-locations.conf").write_text(
        locations_snippet(tmp_path / "access.log"))
    (tmp_path / "site.conf").write_text(site)
    if tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=prices.example", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
    temp_paths = "".join(f"{kind}_temp_path {tmp_path}/{kind}; " for kind in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; {temp_paths}include {tmp_path}/site.conf; }}\n")
    check = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-p", str(tmp_path),
                            "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
