"""Each unit's ``ExecStart``, run as systemd would (its ``Environment=``, the
shipped environment file and its role's secrets file pointed at the test
servers: its own Redis ACL user and only the database URL the role gets,
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``), sends ``READY=1`` from its main process once it really
serves, then ``WATCHDOG=1``, and the first SIGTERM stops it with exit code 0
within ``TimeoutStopSec``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from pricepipe import notify
from pricepipe.acl import Role
from pricepipe.embedded import free_port
from tests.helpers import slow_stage

from . import unitfile
from .helpers import DEPLOY, INSTALLED_VENV, UNITS_DIR

VENV_BIN = Path(sys.executable).parent
HOSTNAME = "testvm"
READY_TIMEOUT_S = 45.0
#: How long start-up pings are ignored before the idle watchdog cadence is checked.
IDLE_SETTLE_S = 2.0
#: ucred: pid, uid, gid (three C ints), sent along each datagram with SO_PASSCRED.
UCRED = struct.Struct("3i")


@dataclass
class NotifySocket:
    """The receiving end of sd_notify, as systemd holds it for a service."""

    path: str
    sock: socket.socket
    messages: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    def receive(self, timeout_s: float) -> tuple[int, dict[str, str]] | None:
        self.sock.settimeout(timeout_s)
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[:UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((pid, fields))
        return pid, fields

    def wait_for(self, key: str, proc: subprocess.Popen[bytes], timeout_s: float
                 ) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode} before {key}: "
                                     f"{output_of(proc)}")
            got = self.receive(min(0.5, max(deadline - time.monotonic(), 0.01)))
            if got and got[1].get(key) == "1":
                return got
        raise AssertionError(f"no {key}=1 within {timeout_s}s; got {self.messages}")


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    directory = tempfile.mkdtemp(prefix="ppn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(path)
    yield NotifySocket(path, sock)
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def output_of(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    return proc.stdout.read().decode(errors="replace")[-3000:]


def read_environment_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's EnvironmentFile= reads them."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    unit: unitfile.Unit
    port: int | None = None


#: The URL variables of a role's secrets file (install.sh sets them from its passwords).
URL_KEYS = ("PRICEPIPE_REDIS_URL", "PRICEPIPE_DATABASE_URL", "PRICEPIPE_DATABASE_READ_URL")


def prepare(name: str, instance: str, *, pipeline_env: dict[str, str], database_url: str,
            role_urls: dict[Role, str], state_dir: Path, notify_path: str) -> Launch:
    """The command line and environment systemd would give ``instance`` of unit ``name``,
    pointed at the test servers."""
    unit = unitfile.load(UNITS_DIR / name)
    # /etc/pricepipe/pricepipe.env: the shipped example (settings only) and the test layout.
    files = unitfile.environment_files(unit, unit_name=instance, hostname=HOSTNAME)
    assert files[0] == ("/etc/pricepipe/pricepipe.env", True)
    env_file = read_environment_file(DEPLOY / "pricepipe.env.example")
    assert not set(URL_KEYS) & set(env_file)
    env_file.update({k: v for k, v in pipeline_env.items()
                     if k in ("PRICEPIPE_REDIS_PREFIX", "PRICEPIPE_REDIS_SHARDS")})
    # /etc/pricepipe/role-<role>.env: the role's example, its URLs the test servers'.
    role_file, required = files[1]
    assert required and role_file.startswith("/etc/pricepipe/role-")
    role = Path(role_file).name.removeprefix("role-").removesuffix(".env")
    role_env = read_environment_file(DEPLOY / "roles" / f"role-{role}.env.example")
    for key in role_env:
        assert key in URL_KEYS, (role, key)
        role_env[key] = role_urls[Role(role)] if key == "PRICEPIPE_REDIS_URL" else database_url
    env_file.update(role_env)
    env = {k: v for k, v in pipeline_env.items()
           if not k.startswith(("PRICEPIPE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update(env_file)
    env.update(unitfile.environment(unit, unit_name=instance, hostname=HOSTNAME))
    env["PRICEPIPE_DATA_DIR"] = str(state_dir)  # StateDirectory= /var/lib/pricepipe
    env["NOTIFY_SOCKET"] = notify_path
    watchdog_s = unitfile.seconds(unit.get("Service", "WatchdogSec") or "0")
    if watchdog_s:
        env["WATCHDOG_USEC"] = str(int(watchdog_s * 1_000_000))
    argv = unitfile.exec_start(unit, unit_name=instance, hostname=HOSTNAME, env=env)
    assert argv[0].startswith(INSTALLED_VENV + "/bin/")
    argv[0] = str(VENV_BIN / Path(argv[0]).name)
    port = None
    if "--port" in argv:  # the API's fixed 8000, a websocket instance's port
        i = argv.index("--port") + 1
        port = int(argv[i])
        if port == 8000:
            port = free_port()
            argv[i] = str(port)
    return Launch(argv, env, state_dir, unit, port)


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return int(response.status)


LONG_RUNNING = {
    "pricepipe-publisher@.service": "pricepipe-publisher@gbm.service",
    "pricepipe-persist@.service": "pricepipe-persist@1.service",
    "pricepipe-ws@.service": None,  # instance = a free port, chosen per test
    "pricepipe-api.service": "pricepipe-api.service",
    "pricepipe-jobs-worker@.service": "pricepipe-jobs-worker@1.service",
    "pricepipe-jobs-scheduler.service": "pricepipe-jobs-scheduler.service",
}


@slow_stage
@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_unit_notifies_ready_and_watchdog_then_stops_cleanly(
    name: str, pipeline_env: dict[str, str], database_url: str, tmp_path: Path,
    notify_socket: NotifySocket, redis_role_urls: dict[Role, str],
) -> None:
    instance = LONG_RUNNING[name] or f"pricepipe-ws@{free_port()}.service"
    launch = prepare(name, instance, pipeline_env=pipeline_env, database_url=database_url,
                     role_urls=redis_role_urls, state_dir=tmp_path, notify_path=notify_socket.path)
    proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pid, _ = notify_socket.wait_for("READY", proc, READY_TIMEOUT_S)
        # NotifyAccess=main: systemd only believes the main process.
        assert pid == proc.pid, f"READY=1 came from pid {pid}, main is {proc.pid}"
        if launch.port is not None:  # "really serving": the port answers at once
            assert healthz(launch.port) == 200
        watchdog_s = unitfile.seconds(launch.unit.get("Service", "WatchdogSec") or "0")
        pid, _ = notify_socket.wait_for("WATCHDOG", proc, watchdog_s)
        assert pid == proc.pid
        # Start-up often pings several times at once; once idle, the pings must keep
        # coming at least every WatchdogSec, or systemd kills a healthy process.
        settle_until = time.monotonic() + IDLE_SETTLE_S
        while time.monotonic() < settle_until:
            notify_socket.receive(max(settle_until - time.monotonic(), 0.01))
        pid, _ = notify_socket.wait_for("WATCHDOG", proc, watchdog_s)
        assert pid == proc.pid
        stop_s = unitfile.seconds(launch.unit.get("Service", "TimeoutStopSec") or "90")
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(stop_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {stop_s}s after SIGTERM: {output_of(proc)}"
                                 ) from None
        assert code == 0, output_of(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_migrate_unit_runs_once(pipeline_env: dict[str, str], database_url: str,
                                tmp_path: Path, notify_socket: NotifySocket,
                                redis_role_urls: dict[Role, str]) -> None:
    name = "pricepipe-migrate.service"
    launch = prepare(name, name, pipeline_env=pipeline_env, database_url=database_url,
                     role_urls=redis_role_urls, state_dir=tmp_path, notify_path=notify_socket.path)
    assert launch.unit.get("Service", "Type") == "oneshot"
    timeout_s = unitfile.seconds(launch.unit.get("Service", "TimeoutStartSec") or "90")
    result = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True,
                            text=True, timeout=min(timeout_s, 100))
    assert result.returncode == 0, result.stderr
    assert "applied 0 migration(s)" in result.stdout  # the test database is already migrated


def finished_jobs(redis_url: str, prefix: str) -> tuple[int, int]:
    """(finished, failed) jobs over pricepipe's rq queues."""
    from rq import Queue

    client = redis.Redis.from_url(redis_url)
    try:
        queues = [q for q in Queue.all(connection=client) if q.name.startswith(f"{prefix}-")]
        return (sum(q.finished_job_registry.count for q in queues),
                sum(q.failed_job_registry.count for q in queues))
    finally:
        client.close()


def test_jobs_worker_children_never_notify(
    pipeline_env: dict[str, str], database_url: str, tmp_path: Path,
    notify_socket: NotifySocket, redis_role_urls: dict[Role, str],
) -> None:
    """rq runs each job in a forked work horse, which heartbeats too. With
    NotifyAccess=main systemd logs "Got notification message from PID ..., but
    reception only permitted for main PID" for every message of a child, so
    only the main process may send any."""
    name, instance = "pricepipe-jobs-worker@.service", "pricepipe-jobs-worker@1.service"
    launch = prepare(name, instance, pipeline_env=pipeline_env, database_url=database_url,
                     role_urls=redis_role_urls, state_dir=tmp_path, notify_path=notify_socket.path)
    proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        notify_socket.wait_for("READY", proc, READY_TIMEOUT_S)
        jobs = [str(VENV_BIN / "pricepipe"), "jobs", "enqueue", "partitions"]
        env = {k: v for k, v in launch.env.items() if k != "NOTIFY_SOCKET"}
        for _ in range(2):  # two jobs: two work horses
            done = subprocess.run(jobs, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        redis_url, prefix = launch.env["PRICEPIPE_REDIS_URL"], launch.env["PRICEPIPE_REDIS_PREFIX"]
        deadline = time.monotonic() + 60
        while finished_jobs(redis_url, prefix) != (2, 0):
            assert time.monotonic() < deadline, f"jobs not done: {output_of(proc)}"
            assert proc.poll() is None, output_of(proc)
            notify_socket.receive(0.2)
        # The horses heartbeat before their job runs, so whatever they sent is queued by
        # now: read the socket empty (datagrams stay in order).
        while notify_socket.receive(0.5) is not None:
            pass
        senders = {pid for pid, _ in notify_socket.messages}
        assert senders == {proc.pid}, (f"notifications from {senders - {proc.pid}} besides the "
                                       f"main pid {proc.pid}: {notify_socket.messages}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_forked_children_do_not_notify(notify_socket: NotifySocket,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """pricepipe.notify in-process: the parent notifies, a forked child does not,
    and the programs a child runs do not inherit the socket."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
    assert notify.status("parent")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        try:
            sent = notify.status("child")
            inherited = "NOTIFY_SOCKET" in os.environ
            os.write(write, f"{int(sent)}{int(inherited)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child == "00", "the child notified" if child[:1] == "1" else "the child kept the socket"
    got = notify_socket.receive(1.0)
    assert got is not None and got == (os.getpid(), {"STATUS": "parent"})
    assert notify_socket.receive(0.2) is None  # nothing from the child
    assert os.environ["NOTIFY_SOCKET"] == notify_socket.path  # the parent keeps it
