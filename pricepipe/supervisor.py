"""``pricepipe up``: the whole pipeline on one machine, for a first look and
for development.

With no server URLs configured it starts an embedded ``redis-server`` (AOF
on) and PostgreSQL in the data directory (``./.pricepipe`` by default; a
second run keeps the data), applies migrations, then runs a GBM publisher, a
persist worker, the websocket server, the HTTP API, an rq jobs worker and
rq's cron scheduler as child processes, restarting any that dies (as
systemd would in production). It prints the URLs and a live one-line
status; Ctrl-C (or SIGTERM, or SIGHUP) stops the children gracefully, then
the servers.

Each child runs in its own process group, so a Ctrl-C in the terminal
reaches only this process, which then sends each child one SIGTERM: the
graceful stop (rq's warm shutdown: the job in progress finishes). A child
still running after its grace period gets a second SIGTERM (rq's cold
shutdown, which takes down the job's work horse), then SIGKILL, it and
every process under it: nothing of ``up`` outlives it.

The jobs run as in production: the scheduler enqueues partition upkeep,
retention, the bar checks and the metadata refresh at start and then on
their intervals (``workers/schedule.py``). ``up`` itself also enqueues the
metadata refresh (the schedule's ``instruments`` job) once every symbol has
persisted trades, then every :data:`METADATA_REFRESH_S`: the demo's symbols
have no provider metadata, their 52-week band comes from stored history, so
on a first run it exists only once trades are stored, and it follows the
simulated prices from then on. The production schedule is unchanged.

While it runs, ``<data_dir>/embedded.env`` (mode 0600) holds the servers'
admin URLs, passwords included, so that other ``pricepipe`` commands in
another terminal (``status``, ``tail``) find them without configuration.

The embedded servers require passwords, generated on the first run and kept
in ``<data_dir>/secrets/`` (0700): Redis has one ACL user per role
(:mod:`pricepipe.acl`) and each child connects as its own (the publisher as
``pp-publisher``, the worker as ``pp-persist`` ...); PostgreSQL authenticates with
SCRAM, and the API reads through a read-only login in ``pricepipe_reader``.
Only migrations, the persist worker, the jobs and this process's status
line use the superuser: ``up`` keeps no separate writer role
(deploy/sql/roles.sql does).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .acl import Role, acl_file, role_urls, user_name
from .backlog import persisted_streams, read_backlog
from .config import EMBEDDED_ENV_FILE, DatabaseSettings, RedisSettings, RuntimeSettings, mask_url
from .keys import Keys

log = logging.getLogger("pricepipe.up")

DEFAULT_API_PORT = 8000
DEFAULT_WS_PORT = 8765


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(wanted: int | None, default: int) -> int:
    """``wanted`` if given, else ``default`` when free, else any free port."""
    from .embedded import free_port

    if wanted:
        return wanted
    return default if _port_free(default) else free_port()


@dataclass
class Child:
    """A role process kept alive like a systemd unit with Restart=on-failure."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    #: What runs ``args``: ``pricepipe`` of this interpreter.
    command_prefix: tuple[str, ...] = (sys.executable, "-m", "pricepipe")
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    _log: Any = field(default=None, repr=False)

    def start(self) -> None:
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        # Its own process group: the terminal's SIGINT reaches only ``up``,
        # which stops the child with a single SIGTERM (a second one would be
        # rq's cold shutdown, and ends the other roles at once).
        self.proc = subprocess.Popen(
            [*self.command_prefix, *self.args], env=self.env,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            process_group=0,
        )

    def check(self, now: float) -> None:
        """Restart a dead child with capped exponential backoff."""
        if self.proc is None or self.proc.poll() is None:
            return
        if self.next_start == 0.0:
            delay = min(30.0, 0.5 * 2 ** min(self.restarts, 6))
            self.next_start = now + delay
            log.warning("%s exited with code %s; restarting in %.1fs (log: %s)",
                        self.name, self.proc.returncode, delay, self.log_path)
        elif now >= self.next_start:
            self.restarts += 1
            self.next_start = 0.0
            self.start()

    def stop(self, timeout_s: float, force_timeout_s: float = 5.0) -> None:
        """SIGTERM, and wait up to ``timeout_s``; then a second SIGTERM (the
        roles' "stop at once", rq's cold shutdown) and up to
        ``force_timeout_s``; then SIGKILL to the child and every process
        under it (an rq work horse is in a process group of its own, so
        only its parentage finds it)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not _waited(proc, timeout_s):
                log.warning("%s did not stop in %.0fs; asking again", self.name, timeout_s)
                proc.send_signal(signal.SIGTERM)
                if not _waited(proc, force_timeout_s):
                    log.warning("%s did not stop; killing it and its processes", self.name)
                    kill_tree(proc.pid)
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _waited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def parse_proc_stat(text: str) -> tuple[str, int]:
    """``(state, parent pid)`` of a ``/proc/<pid>/stat`` line (proc(5): the
    command name, in parentheses, may itself hold spaces and parentheses)."""
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1])


def process_parents() -> dict[int, int]:
    """``pid -> parent pid`` of every live (not zombie) process; empty where
    there is no ``/proc``."""
    out: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                state, ppid = parse_proc_stat(f.read())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if state not in ("Z", "X"):
            out[int(entry)] = ppid
    return out


def descendants(pid: int, parents: dict[int, int] | None = None) -> list[int]:
    """Every process under ``pid`` (children, theirs ...), nearest first."""
    parents = process_parents() if parents is None else parents
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out: list[int] = []
    todo = [pid]
    while todo:
        found = children.get(todo.pop(0), [])
        out.extend(found)
        todo.extend(found)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process under it (found before any dies:
    an orphan's parent is no longer ``pid``'s)."""
    for target in [pid, *descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pipeline_counts(r: Any, keys: Keys, symbols: list[str]) -> tuple[int, int, int]:
    """``(published, persisted, lag)`` over every persisted stream (trades
    and quotes) from the groups' bookkeeping (Redis >= 7: ``entries-added``,
    ``entries-read``, ``lag``), so the status line costs no database query."""
    published = persisted = lag = 0
    # Redis 7.0 forgets a group's lag when it reloads its AOF: the backlog
    # reader then counts the entries after the last delivered one.
    for stream in read_backlog(r, persisted_streams(keys, symbols), ages=False):
        published += stream.added
        if stream.grouped:
            persisted += stream.acknowledged
            lag += stream.waiting
    return published, persisted, lag


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll ``url`` until it answers 200; False on timeout, or as soon as
    ``proc`` (the process meant to serve it) has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def postgres_dir(data_dir: Path) -> Path:
    """Where embedded PostgreSQL keeps its data: ``<data_dir>/postgres``, or,
    when we are root and PostgreSQL's unprivileged user cannot enter
    ``data_dir`` (a clone under ``/root``), a directory under ``/var/tmp``
    named after ``data_dir``, so that every run finds the same data."""
    import hashlib

    from .embedded import check_reachable, postgres_user
    from .exceptions import EmbeddedServerError

    wanted = data_dir / "postgres"
    user = postgres_user()
    if user is None:
        return wanted
    try:
        check_reachable(data_dir, user)
    except EmbeddedServerError:
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp") / f"pricepipe-{digest}" / "postgres"
        fallback.parent.mkdir(parents=True, exist_ok=True)
        fallback.parent.chmod(0o755)
        print(f"note: PostgreSQL runs as {user.pw_name!r} and cannot enter {data_dir}; "
              f"its data lives in {fallback}")
        return fallback
    return wanted


#: Under ``<data_dir>``: the generated passwords (see :mod:`pricepipe.passwords`).
SECRETS_DIR = "secrets"
#: The read-only login the API uses under ``up``, in the group role of migration 0500.
API_LOGIN = "pricepipe_api"
READER_GROUP = "pricepipe_reader"

#: The Redis user each child of ``up`` connects as.
CHILD_ROLES = {"publisher": Role.PUBLISHER, "worker": Role.PERSIST, "ws": Role.WS,
               "api": Role.API, "jobs-worker": Role.JOBS, "jobs-scheduler": Role.JOBS}

#: How often ``up`` enqueues the metadata refresh once every symbol has
#: trades (the schedule's own interval is 5,000 s), seconds.
METADATA_REFRESH_S = 60.0
#: The schedule's entry of the metadata refresh.
METADATA_JOB = "instruments"


@dataclass
class MetadataRefresh:
    """When ``up`` enqueues the metadata refresh: as soon as every symbol has
    persisted trades (its 52-week band can then be computed), or
    ``interval_s`` after start at the latest; then every ``interval_s``,
    never while the previous one still waits or runs. Pure: times are
    monotonic seconds."""

    started: float
    interval_s: float = METADATA_REFRESH_S
    last: float | None = None

    def due(self, now: float, *, every_symbol_has_trades: bool, previous_done: bool) -> bool:
        if not previous_done:
            return False
        if self.last is None:
            return every_symbol_has_trades or now - self.started >= self.interval_s
        return now - self.last >= self.interval_s

    def enqueued(self, now: float) -> None:
        self.last = now


def every_symbol_has_trades(r: Any, keys: Keys, symbols: list[str]) -> bool:
    """Whether each of ``symbols`` (at least one) has trades the persist group
    acknowledged, that is stored (or dead-lettered)."""
    from .keys import Channel

    if not symbols:
        return False
    streams = [keys.stream(s, Channel.TRADES) for s in symbols]
    found = {b.stream: b.acknowledged for b in read_backlog(r, streams, ages=False)}
    return all(found.get(stream, 0) > 0 for stream in streams)


def job_done(job: Any) -> bool:
    """Whether the rq ``job`` (None: none yet) no longer waits or runs (a
    retried job waits, scheduled, between its tries)."""
    from rq.exceptions import InvalidJobOperation
    from rq.job import JobStatus

    if job is None:
        return True
    try:
        status = job.get_status(refresh=True)
    except InvalidJobOperation:  # its hash expired or was deleted
        return True
    return status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED,
                      JobStatus.CANCELED)


def ensure_reader_login(conn: Any, login: str, password: str) -> None:
    """Create (or update the password of) ``login``, a member of the
    read-only group role, whose sessions are read-only by default too (as
    deploy/sql/roles.sql makes the API's login). The server gets the SCRAM
    verifier, never the password."""
    from psycopg2 import sql

    from .passwords import scram_verifier

    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "PASSWORD %s").format(sql.Identifier(login)),
                    (scram_verifier(password),))
        cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READER_GROUP),
                                                      sql.Identifier(login)))
        cur.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
            sql.Identifier(login)))
    conn.commit()


@dataclass(frozen=True)
class UpOptions:
    """What ``pricepipe up`` runs: servers (URLs unset: embedded ones) and the demo."""

    runtime: RuntimeSettings
    redis: RedisSettings
    database: DatabaseSettings
    symbols: int = 10
    rate: float = 5.0
    api_port: int | None = None
    ws_port: int | None = None
    duration_s: float | None = None
    #: Enqueues the schedule's metadata job, returning the rq job: given by
    #: the command (the core imports no role); None runs no refresh.
    enqueue_refresh: Callable[[Any, Keys], Any] | None = None


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested:  # second signal: stop waiting for children
            raise KeyboardInterrupt
        self.requested = True


def run_up(options: UpOptions) -> int:
    from . import passwords
    from .connections import pg_connect, redis_client
    from .embedded import PostgresServer, RedisServer
    from .migrate import migrate
    from .streams import known_symbols

    runtime, rs, ds = options.runtime, options.redis, options.database
    data_dir = Path(runtime.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(exist_ok=True)
    env_file = data_dir / EMBEDDED_ENV_FILE

    secrets_dir = data_dir / SECRETS_DIR
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    secrets_dir.chmod(0o700)  # an older or hand-made one too
    servers: list[Any] = []
    children: list[Child] = []
    #: Per child name, what its environment gets beside the shared one.
    own_env: dict[str, dict[str, str]] = {name: {} for name in CHILD_ROLES}
    stop = _Stop()
    # SIGHUP too: the children, in process groups of their own, no longer
    # get the terminal's hangup themselves.
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM,
                                                    signal.SIGHUP)}
    try:
        if not rs.url:
            layout = rs.keys
            redis_passwords = {Role(name): pw for name, pw in passwords.ensure(
                secrets_dir / "redis", [role.value for role in Role]).items()}
            server = RedisServer(
                data_dir / "redis",
                auth=(user_name(Role.ADMIN, layout), redis_passwords[Role.ADMIN]),
                acl=acl_file(redis_passwords, layout))
            server.start()
            servers.append(server)
            rs = RedisSettings.from_env(url=server.url)
            urls = role_urls(server.url, redis_passwords, layout)
            for name, role in CHILD_ROLES.items():
                own_env[name]["PRICEPIPE_REDIS_URL"] = urls[role]
            print(f"embedded redis-server  {mask_url(server.url)}  (data: {server.data_dir}; "
                  f"a user per role, passwords in {secrets_dir / 'redis'})")
        read_url: str | None = None
        pg_passwords: dict[str, str] = {}
        if not ds.url:
            pg_passwords = passwords.ensure(secrets_dir / "postgres", ["postgres", "api"])
            pg = PostgresServer(postgres_dir(data_dir), database="pricepipe",
                                password=pg_passwords["postgres"])
            pg.start()
            servers.append(pg)
            ds = DatabaseSettings.from_env(url=pg.url)
            read_url = pg.url_for("pricepipe", API_LOGIN, pg_passwords["api"])
            print(f"embedded PostgreSQL    {mask_url(pg.url)}  (data: {pg.pgdata}; "
                  f"passwords in {secrets_dir / 'postgres'})")
        redis_url, database_url = rs.require_url(), ds.require_url()
        if servers:
            lines = [f"PRICEPIPE_REDIS_URL={redis_url}", f"PRICEPIPE_DATABASE_URL={database_url}"]
            passwords.write_private(env_file, "\n".join(lines) + "\n")
            print(f"admin URLs             {env_file}  (passwords included, readable by you only)")

        conn = pg_connect(database_url, application_name="pricepipe-up")
        try:
            applied = migrate(conn)
            if read_url is not None:
                ensure_reader_login(conn, API_LOGIN, pg_passwords["api"])
        finally:
            conn.close()
        if applied:
            print(f"applied migrations {applied}")
        if read_url is not None:
            own_env["api"]["PRICEPIPE_DATABASE_READ_URL"] = read_url
            # Empty means unset, and wins over embedded.env: no writer URL.
            for name in ("publisher", "ws", "api"):
                own_env[name]["PRICEPIPE_DATABASE_URL"] = ""

        api_port = pick_port(options.api_port, DEFAULT_API_PORT)
        ws_port = pick_port(options.ws_port, DEFAULT_WS_PORT)
        env = dict(os.environ)
        env.update({
            "PRICEPIPE_REDIS_URL": redis_url,
            "PRICEPIPE_DATABASE_URL": database_url,
            "PRICEPIPE_DATA_DIR": str(data_dir),
            # The dashboard is served by the API on another port than the
            # websocket server here (behind nginx both share one origin).
            "PRICEPIPE_API_WS_URL": f"ws://127.0.0.1:{ws_port}/ws",
            "PYTHONUNBUFFERED": "1",
        })
        roles = [
            ("publisher", ["publish", "--source", "gbm", "--symbols", str(options.symbols),
                           "--rate", str(options.rate)]),
            ("worker", ["persist", "--name", f"{socket.gethostname()}-up"]),
            ("ws", ["ws", "--host", "127.0.0.1", "--port", str(ws_port)]),
            ("api", ["api", "--host", "127.0.0.1", "--port", str(api_port)]),
            # A stable name: a restarted worker clears its previous life's
            # registration. The cron scheduler keeps rq's (host:pid:random):
            # rq refuses a second registration under one name.
            ("jobs-worker", ["jobs", "worker", "--name", f"{socket.gethostname()}-up"]),
            ("jobs-scheduler", ["jobs", "scheduler"]),
        ]
        for name, role_args in roles:
            child = Child(name, role_args, {**env, **own_env[name]}, logs_dir / f"{name}.log")
            child.start()
            children.append(child)

        api_ok = wait_http(f"http://127.0.0.1:{api_port}/healthz", 30)
        ws_ok = wait_http(f"http://127.0.0.1:{ws_port}/healthz", 10)
        print(f"dashboard   http://127.0.0.1:{api_port}/" + ("" if api_ok else "  (not up yet)"))
        print(f"HTTP API    http://127.0.0.1:{api_port}/v1/symbols   "
              f"docs: http://127.0.0.1:{api_port}/docs")
        print(f"websocket   ws://127.0.0.1:{ws_port}/ws" + ("" if ws_ok else "  (not up yet)"))
        print("jobs        an rq worker and the cron scheduler (partitions, retention, "
              "bar checks, metadata)")
        print(f"logs        {logs_dir}/   Ctrl-C stops everything")

        r = redis_client(rs)
        keys = rs.keys
        started = time.monotonic()
        interactive = sys.stdout.isatty()
        last_print = last_check = 0.0
        refresh = MetadataRefresh(started)
        refresh_job: Any = None
        while not stop.requested:
            now = time.monotonic()
            if options.duration_s is not None and now - started >= options.duration_s:
                break
            for child in children:
                child.check(now)
            if now - last_check >= 1.0:
                last_check = now
                try:
                    symbols = known_symbols(r, keys)
                    ready = refresh.last is not None or every_symbol_has_trades(r, keys, symbols)
                    if options.enqueue_refresh is not None and refresh.due(
                            now, every_symbol_has_trades=ready,
                            previous_done=job_done(refresh_job)):
                        refresh_job = options.enqueue_refresh(r, keys)
                        refresh.enqueued(now)
                except (redis.RedisError, OSError) as exc:
                    # The status line says so; tried again in a second.
                    log.debug("metadata refresh not enqueued: %s", exc)
            if now - last_print >= (1.0 if interactive else 5.0):
                last_print = now
                try:
                    published, persisted, lag = pipeline_counts(r, keys, known_symbols(r, keys))
                    line = (f"published {published:>9}  persisted {persisted:>9}  "
                            f"lag {lag:>6}  up {now - started:>6.0f}s")
                except (redis.RedisError, OSError) as exc:
                    line = f"redis unreachable: {exc}"
                if interactive:
                    print("\r" + line, end="", flush=True)
                else:
                    print(line, flush=True)
            time.sleep(0.2)
        r.close()
        if interactive:
            print()
        print("stopping...")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for child in reversed(children):
            child.stop(timeout_s=15.0)
        for server in reversed(servers):
            server.stop()
        if servers:
            env_file.unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
