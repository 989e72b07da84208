"""The deployment, proven under real systemd (issue 17, points 4 and 5).

A Debian bookworm machine (``image.py``: debootstrap, cached) boots with
``systemd-nspawn`` (``machine.py``) on a fresh copy of the image, with
loopback as its only network. ``deploy/install.sh --offline`` installs the
checkout from a wheelhouse built on the host (``wheelhouse.py``), twice (the
second run must change nothing it should keep: passwords, the ACL file, the
environment files). Least privilege (issue 16): Redis refuses a client
without a password (``NOAUTH``), the websocket server's user may not
``XADD``, each role's secrets file is root's alone and the API's, websocket
server's and publisher's hold no writer URL; every listener but nginx's is
on loopback, each persist worker serves its metrics on its own port. Then,
through nginx on port 80 and with a client inside the machine
(``probe.py``): events arrive over HTTP and over the websocket. Faults
follow: a persist worker is SIGKILLed during a bulk publish, Redis
restarts, the machine reboots right after another bulk publish; after each
the units come back on their own. Finally
the publishers stop and every persisted stream has exactly as many rows in
PostgreSQL as entries Redis ever received (the two bulk GBM runs, of known
sizes, to the event), each once; the journal holds no warning of our units
beyond those the faults explain (read window by window, fault by fault);
``systemd-analyze security`` rates every unit at most 1.5; and the system
is ``running``, no unit failed.

``PRICEPIPE_VM_TEST=1`` runs it (``.ci/run`` does, after the main suite);
deploy/README.md, "The VM test", says how to run it locally and what it
keeps for inspection.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO

from . import image, wheelhouse
from .machine import Machine, kill_leftover

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]

NAME = "pricepipe-vm"
CLONE = "/root/pricepipe"
WHEELS = "/root/wheelhouse"
PROBE = "/root/probe.py"
VENV_PYTHON = "/opt/pricepipe/venv/bin/python"
INSTALL = ["bash", f"{CLONE}/deploy/install.sh", "--offline", "--wheelhouse", WHEELS,
           "--publishers", "gbm", "--persist-workers", "2", "--jobs-workers", "1",
           "--ws-ports", "8101,8102", "--redis-maxmemory", "256mb"]
#: The services those options enable: all active once pricepipe.target has started.
SERVICES = ["pricepipe-migrate.service", "pricepipe-api.service",
            "pricepipe-jobs-scheduler.service", "pricepipe-jobs-worker@1.service",
            "pricepipe-publisher@gbm.service", "pricepipe-persist@1.service",
            "pricepipe-persist@2.service", "pricepipe-ws@8101.service",
            "pricepipe-ws@8102.service"]
#: The secrets install.sh writes, kept as they are by a second run.
SECRETS = ["/etc/pricepipe/db-passwords", "/etc/pricepipe/pricepipe.env",
           "/etc/pricepipe/admin.env", "/etc/redis/users.acl", "/etc/redis/redis.conf",
           *(f"/etc/pricepipe/redis-passwords/{role}" for role in
             ("admin", "publisher", "persist", "ws", "reader", "group-reader", "api", "jobs")),
           *(f"/etc/pricepipe/role-{role}.env" for role in
             ("publisher", "persist", "ws", "api", "jobs", "migrate"))]
#: What each role's secrets file may hold.
ROLE_URLS = {"publisher": {"PRICEPIPE_REDIS_URL"},
             "persist": {"PRICEPIPE_REDIS_URL", "PRICEPIPE_DATABASE_URL"},
             "ws": {"PRICEPIPE_REDIS_URL"},
             "api": {"PRICEPIPE_REDIS_URL", "PRICEPIPE_DATABASE_READ_URL"},
             "jobs": {"PRICEPIPE_REDIS_URL", "PRICEPIPE_DATABASE_URL"},
             "migrate": {"PRICEPIPE_DATABASE_URL"}}
#: The servers install.sh sets up beside them.
SERVERS = ["redis-server.service", "postgresql@15-main.service", "nginx.service"]
#: How many of the realtime publisher's symbols (the unit's: 10 demo symbols) the
#: HTTP and websocket checks follow.
LIVE_SYMBOLS = 3
#: Bulk publisher runs by the operator, of known sizes, for exact counts: one while a
#: persist worker is SIGKILLed, one right before the reboot (the workers stop mid-backlog).
#: Their own symbols each: the same events twice would be the same trades (venue ids).
BULK = {"sigkill": (["VMA", "VMB", "VMC"], 100_000, 17), "reboot": (["VMD", "VME"], 40_000, 18)}
BULK_SYMBOLS = [s for symbols, _, _ in BULK.values() for s in symbols]
MAX_EXPOSURE = 1.5
#: Warnings each fault explains (patterns, searched in "<unit>: <message>"). Anything else
#: of our units at warning level or above, in any window, fails the test.
EXPLAINED: dict[str, list[str]] = {
    "steady": [],
    "sigkill": [
        r"^pricepipe-persist@1\.service: .*(Main process exited, code=killed, status=9/KILL"
        r"|Failed with result 'signal')",
    ],
    "redis restart": [
        # Our roles retry Redis with backoff (pricepipe.workers.persister, publisher.sink...).
        r'"level":"WARNING","logger":"pricepipe\.[a-z._]+","msg":"[^"]*(failed|unreachable) '
        r'\((Connection closed by server|Error \d+ connecting|Redis is loading|Error while '
        r'reading|Connection reset|Timeout)[^"]*\); retry \d+ in',
        # The rq cron scheduler's loop starts a new scheduler after a Redis error
        # (pricepipe.workers.jobrunner.run_scheduler), loading included.
        r'"logger":"pricepipe\.workers\.jobrunner","msg":"rq cron scheduler [^"]* stopped: '
        r'(ConnectionError|BusyLoadingError|TimeoutError): [^"]*; starting again in',
        # rq's worker logs its own reconnection at ERROR.
        r'"logger":"rq\.worker","msg":"Worker [^"]*: could not connect to Redis instance',
        # rq's worker runs its scheduler in a child process, which dies with Redis (and is
        # started again by the worker's next maintenance, within 10 minutes).
        r'"level":"ERROR","logger":"rq\.scheduler","msg":"Scheduler \[PID \d+\] raised an '
        r'exception.*redis\.exceptions\.(ConnectionError|BusyLoadingError)',
    ],
    "jobs sigkill": [
        r"^pricepipe-jobs-worker@1\.service: .*(Main process exited, code=killed, "
        r"status=9/KILL|Failed with result 'signal')",
        # The new life clears the registration the killed one left (workers.jobrunner).
        r'"logger":"pricepipe\.workers\.jobrunner","msg":"clearing the registration '
        r'[^"]* left by a previous life"',
        # rq's scheduler child, orphaned by the kill, is stopped with the unit's cgroup.
        r"^pricepipe-jobs-worker@1\.service: .*(Killing process|left-over process)",
    ],
    "reboot": [],
    "drain": [],
}
#: The realtime publisher skips (and says so) what it could not publish in time
#: (PRICEPIPE_PUBLISHER_MAX_LAG_S): while Redis restarts, or starved of CPU by a bulk run
#: and the persist workers catching up on 2 CPUs.
FELL_BEHIND = (r'^pricepipe-publisher@gbm\.service: .*"logger":"pricepipe\.publisher\.simulator",'
               r'"msg":"fell \d+ period\(s\) behind schedule; skipped them"')
for _fault in ("sigkill", "redis restart", "reboot"):
    EXPLAINED[_fault].append(FELL_BEHIND)
#: Restarts each fault explains; any other restart of a service is unexplained (with
#: Restart=always a role that ends by itself is restarted, so only the count tells).
RESTARTS = {"sigkill": {"pricepipe-persist@1.service": 1},
            "jobs sigkill": {"pricepipe-jobs-worker@1.service": 1}}


@dataclass
class Run:
    """One run's directory, log, phase timings and unexplained warnings."""

    dir: Path
    phases: dict[str, float] = field(default_factory=dict)
    unexplained: dict[str, list[str]] = field(default_factory=dict)
    cursor: str = ""
    #: NRestarts of each service at the end of the last window (systemd counts per boot).
    restarts: dict[str, int] = field(default_factory=dict)

    def log(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        with open(self.dir / "vm.log", "a") as out:
            out.write(line + "\n")

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self.log(f"=== {name}")
        yield
        self.phases[name] = round(time.monotonic() - started, 1)
        self.log(f"=== {name}: {self.phases[name]} s")


def _reclaim_old_runs(runs: Path, log: Callable[[str], None]) -> None:
    """Remove the directories of earlier runs that are over (their lock is free); a
    failed run's stays until then, for inspection."""
    for old in sorted(runs.glob("run-*")):
        with open(old / "lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another run in progress
            if kill_leftover(old / "nspawn.pid"):  # its test process died, the machine up
                log(f"killed the machine {old} left running")
            log(f"removing the earlier run {old}")
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture
def run(vm_host: None) -> Iterator[Run]:
    runs = image.cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    directory = runs / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    directory.mkdir()
    with open(directory / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        this = Run(directory)
        _reclaim_old_runs(runs, this.log)
        yield this
        this.log("phases (s): " + json.dumps(this.phases))
        (directory / "phases.json").write_text(json.dumps(this.phases, indent=1))
    this.log(f"run directory (kept until the next run): {directory}")


def passed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return bool(report is not None and report.passed)


@pytest.fixture
def machine(run: Run, request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A booted machine on a fresh copy of the image, holding the checkout, the
    wheelhouse and the probe. After a failure its root stays for inspection
    (``journalctl -D <run>/root/var/log/journal``); with ``PRICEPIPE_VM_KEEP=1``
    the machine even stays up."""
    root = run.dir / "root"
    with run.phase("image (debootstrap, cached)"):
        cached = image.ensure_image(run.log)
    with run.phase("fresh copy of the image"):
        image.fresh_copy(cached, root, run.log, hostname=NAME)
    with run.phase("wheelhouse (pip wheel on the host)"):
        source = run.dir / "src"
        wheelhouse.copy_checkout(REPO, source)
        wheelhouse.build(source, run.dir / "wheelhouse", image.cache_dir(), run.log,
                         environment=image.marker_environment(root, run.log))
        shutil.copytree(source, root / CLONE.lstrip("/"), symlinks=True)
        shutil.copytree(run.dir / "wheelhouse", root / WHEELS.lstrip("/"))
        shutil.copy2(Path(__file__).with_name("probe.py"), root / PROBE.lstrip("/"))
    vm = Machine(root, name=NAME, console_log=run.dir / "console.log", log=run.log,
                 pid_file=run.dir / "nspawn.pid")
    try:
        with run.phase("boot"):
            state = vm.boot()
        assert state in ("running", "degraded")
        yield vm
    finally:
        if not passed(request) and os.environ.get("PRICEPIPE_VM_KEEP") == "1":
            run.log(f"machine left running: nsenter -t {vm.leader} -a bash; to end it, "
                    f"kill -KILL {vm.leader} {vm.nspawn_pid} (or run the test again)")
        else:
            with run.phase("power off"):
                vm.stop()
    if passed(request):
        shutil.rmtree(root, ignore_errors=True)  # the 600 MB copy is not needed


# --- what the machine says -------------------------------------------------------------------

def units_state(vm: Machine, units: list[str]) -> dict[str, dict[str, str]]:
    out = vm.run(["systemctl", "show", "--no-pager",
                  "-p", "Id,ActiveState,SubState,NRestarts,Result", *units]).stdout
    states = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[props["Id"]] = props
    return states


def wait_active(vm: Machine, run: Run, *, timeout_s: float = 120.0) -> dict[str, dict[str, str]]:
    """Every service and server active (the oneshot migrate too: active, exited)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = units_state(vm, SERVICES + SERVERS)
        inactive = {u: s for u, s in states.items() if s["ActiveState"] != "active"}
        if not inactive:
            return states
        if time.monotonic() > deadline:
            details = "\n".join(
                vm.run(["systemctl", "status", "--no-pager", "--lines=0", u], check=False).stdout
                + vm.run(["journalctl", "--no-pager", "-o", "cat", "-n", "40", "-u", u],
                         check=False).stdout for u in inactive)
            raise AssertionError(f"not active after {timeout_s:.0f} s: {inactive}\n{details}")
        time.sleep(1)


def probe(vm: Machine, command: str, *args: str, timeout_s: float = 90.0) -> dict[str, Any]:
    result = vm.run([VENV_PYTHON, PROBE, command, *args, "--timeout-s", str(timeout_s)],
                    check=False, timeout_s=timeout_s + 60)
    try:
        out = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"probe {command}: {result.stdout}\n{result.stderr}") from None
    assert "error" not in out, f"probe {command} {args}: {out['error']}\n{result.stderr}"
    return dict(out)


def message(entry: dict[str, Any]) -> str:
    text = entry.get("MESSAGE", "")
    if isinstance(text, list):  # not UTF-8: journalctl gives the bytes
        return bytes(text).decode(errors="replace")
    return str(text)


def our_unit(entry: dict[str, Any]) -> str | None:
    """The pricepipe unit an entry is from or about (systemd's own lines name it in UNIT)."""
    for key in ("_SYSTEMD_UNIT", "UNIT", "SYSLOG_IDENTIFIER"):
        value = str(entry.get(key, ""))
        if value.startswith("pricepipe"):
            return value
    return None


def warnings_of(entries: list[dict[str, Any]]) -> list[str]:
    """Warnings (and worse) of our units: journal priority 0-4, and our JSON log
    lines at WARNING or above (the units' output reaches the journal as info)."""
    out = []
    for entry in entries:
        unit, text = our_unit(entry), message(entry)
        if unit is None and "reception only permitted for main PID" not in text:
            continue
        level = None
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            level = parsed.get("level") if isinstance(parsed, dict) else None
        if int(entry.get("PRIORITY", 6)) <= 4 or level in ("WARNING", "ERROR", "CRITICAL"):
            out.append(f"{unit}: {text}")
    return out


def journal_window(vm: Machine, run: Run, fault: str) -> None:
    """Read the journal since the last window: log our units' warnings, keep those
    ``fault`` does not explain (asserted at the end, so one run shows them all); the
    same for the services' restarts."""
    counts = {u: int(s["NRestarts"]) for u, s in units_state(vm, SERVICES).items()}
    restarted = {u: n - run.restarts.get(u, 0) for u, n in counts.items()
                 if n != run.restarts.get(u, 0)}
    run.restarts = counts
    if restarted != RESTARTS.get(fault, {}):
        run.unexplained[f"{fault}: restarts"] = [json.dumps(restarted)]
    entries = vm.journal(f"--after-cursor={run.cursor}") if run.cursor else vm.journal()
    if entries:
        run.cursor = str(entries[-1]["__CURSOR"])
    warnings = warnings_of(entries)
    bad = [w for w in warnings if not any(re.search(p, w) for p in EXPLAINED[fault])]
    run.log(f"journal, {fault}: {len(warnings)} warning(s), {len(bad)} unexplained"
            + "".join(f"\n  {w}" for w in warnings))
    if bad:
        run.unexplained[fault] = bad


def env_keys(vm: Machine, path: str) -> set[str]:
    """The variables an environment file sets (names only: the values are secrets)."""
    text = vm.run(["cat", path]).stdout
    return {line.split("=", 1)[0] for line in text.splitlines()
            if "=" in line and not line.lstrip().startswith("#")}


def check_least_privilege(vm: Machine, run: Run) -> None:
    """Issue 16 on the installed machine (the values of the files are never logged)."""
    for role, urls in ROLE_URLS.items():
        path = f"/etc/pricepipe/role-{role}.env"
        assert vm.run(["stat", "-c", "%a %U", path]).stdout.split() == ["600", "root"], path
        assert {k for k in env_keys(vm, path) if k.endswith("_URL")} == urls, path
    assert vm.run(["stat", "-c", "%a %U", "/etc/pricepipe/admin.env"]).stdout.split() == [
        "600", "root"]
    shared = env_keys(vm, "/etc/pricepipe/pricepipe.env")
    assert not {k for k in shared if k.endswith("_URL")}, shared
    writer = next(line for line in vm.run(["cat", "/etc/pricepipe/role-persist.env"]).stdout
                  .splitlines() if line.startswith("PRICEPIPE_DATABASE_URL="))
    for role in ("api", "ws", "publisher"):
        holds = writer in vm.run(["cat", f"/etc/pricepipe/role-{role}.env"]).stdout
        assert not holds, f"role-{role}.env holds the writer URL"  # (never the value)
    # Each unit's environment as systemd gives it: the API's has no writer URL.
    for unit, absent in (("pricepipe-api.service", "PRICEPIPE_DATABASE_URL="),
                         ("pricepipe-ws@8101.service", "PRICEPIPE_DATABASE"),
                         ("pricepipe-publisher@gbm.service", "PRICEPIPE_DATABASE")):
        pid = vm.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
        environ = vm.run(["cat", f"/proc/{pid}/environ"]).stdout.split("\0")
        assert not any(v.startswith(absent) for v in environ), unit
        assert any(v.startswith("PRICEPIPE_REDIS_URL=redis://pp-") for v in environ), unit
    access = probe(vm, "access")
    run.log(f"access: {access}")
    assert access["anonymous"].startswith("NOAUTH"), access
    assert access["ws_xadd"].startswith("NOPERM"), access
    assert access["ws_flushall"].startswith("NOPERM"), access
    assert access["ws_xlen"] >= 0
    # Loopback only, but nginx's public port: metrics and health endpoints included.
    listeners = vm.run(["ss", "-ltnH"]).stdout.split("\n")
    local = [line.split()[3] for line in listeners if line.strip()]
    public = [a for a in local if not a.startswith(("127.", "[::1]:"))]
    assert all(a.rsplit(":", 1)[1] == "80" for a in public), local
    for n in (1, 2):  # each persist worker its own metrics port
        assert f"127.0.0.1:{9300 + n}" in local, local
        body = vm.run(["curl", "-fsS", f"http://127.0.0.1:{9300 + n}/metrics"]).stdout
        assert "pricepipe_" in body


def file_digest(vm: Machine, path: str) -> str:
    return hashlib.sha256(vm.run(["cat", path]).stdout.encode()).hexdigest()


def bulk_publish(name: str) -> str:
    """The operator's bulk GBM run ``name`` of :data:`BULK`, as a shell command."""
    symbols, events, seed = BULK[name]
    return (f"pricepipe publish --source gbm --symbols {','.join(symbols)} "
            f"--count {events} --seed {seed}")


def wait_job_done(vm: Machine, call: str, *, timeout_s: float = 60.0) -> None:
    """Until the jobs worker logged a job ``call`` (``function(args)`` as rq
    logs it) as done (rq's "Job OK")."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [message(e) for e in vm.journal("-u", "pricepipe-jobs-worker@1.service")]
        ran = [i for i, line in enumerate(lines) if call in line]
        if ran and any("Job OK" in line for line in lines[ran[-1]:]):
            return
        assert time.monotonic() < deadline, "the job did not finish:\n" + "\n".join(lines[-20:])
        time.sleep(1)


def backlog(counts: dict[str, Any]) -> int:
    """Entries Redis received that have no row yet."""
    return (sum(s["entries_added"] for s in counts["streams"].values())
            - sum(r["rows"] for r in counts["rows"].values()))


def settled(counts: dict[str, Any]) -> bool:
    """Every entry of every persisted stream delivered to the group and acknowledged."""
    return all(s["pending"] == 0 and s["last_delivered"] == s["last_generated"]
               for s in counts["streams"].values())


# --- the test ---------------------------------------------------------------------------------

def test_install_run_break_reboot_and_nothing_lost(machine: Machine, run: Run) -> None:
    vm = machine
    with run.phase("install.sh --offline"):
        installed = vm.run(INSTALL, timeout_s=900, cwd=CLONE)
        run.log(installed.stdout[-3000:])
        wait_active(vm, run)
    # The first install restarts everything it configures: judge from here on.
    run.cursor = vm.journal_cursor()
    run.restarts = {u: int(s["NRestarts"]) for u, s in units_state(vm, SERVICES).items()}

    with run.phase("install.sh again (idempotent)"):
        kept = {p: file_digest(vm, p) for p in SECRETS}
        vm.run(INSTALL, timeout_s=900, cwd=CLONE)
        changed = [p for p in kept if file_digest(vm, p) != kept[p]]
        assert not changed, f"the second run changed secrets: {changed}"
        states = wait_active(vm, run)

    with run.phase("least privilege: Redis users, secrets files, loopback listeners"):
        check_least_privilege(vm, run)

    with run.phase("events over HTTP and the websocket, through nginx"):
        symbols = probe(vm, "http")["symbols"]
        live = [s for s in symbols if s not in BULK_SYMBOLS][:LIVE_SYMBOLS]
        assert len(live) == LIVE_SYMBOLS, symbols
        http = probe(vm, "http", *live)
        run.log(f"http: trades per symbol {http['trades']}")
        ws = probe(vm, "ws", *live)
        run.log(f"websocket: frames {ws['frames']}")
        assert ws["hello"]["version"] == 2
        # The operator's tools from deploy/README.md, from root's home as an operator would.
        vm.run(["curl", "-fsS", "http://localhost/healthz"])
        status = vm.run(["pricepipe", "status"], cwd="/root")
        run.log("pricepipe status:\n" + status.stdout[-1500:])
        # A job, so that rq forks a work horse under systemd.
        vm.run(["pricepipe", "jobs", "enqueue", "partitions"], cwd="/root")
        wait_job_done(vm, "maintain_partitions()")
    journal_window(vm, run, "steady")

    with run.phase("bulk publish, SIGKILL a persist worker meanwhile"):
        restarts = int(states["pricepipe-persist@1.service"]["NRestarts"])
        bulk = vm.sh(f"{bulk_publish('sigkill')} & sleep 1; "
                     "systemctl kill -s KILL pricepipe-persist@1; wait $!",
                     cwd="/root", timeout_s=600)
        run.log("bulk publisher: " + (bulk.stdout + bulk.stderr)[-300:])
        run.log(f"entries not yet in PostgreSQL after the kill: {backlog(probe(vm, 'counts'))}")
        deadline = time.monotonic() + 60
        while int(units_state(vm, ["pricepipe-persist@1.service"])[
                "pricepipe-persist@1.service"]["NRestarts"]) <= restarts:
            assert time.monotonic() < deadline, "systemd did not restart the killed worker"
            time.sleep(0.5)
        wait_active(vm, run)
        time.sleep(5)
    journal_window(vm, run, "sigkill")

    with run.phase("SIGKILL the jobs worker"):
        unit = "pricepipe-jobs-worker@1.service"
        restarts = int(units_state(vm, [unit])[unit]["NRestarts"])
        vm.run(["systemctl", "kill", "-s", "KILL", unit])
        deadline = time.monotonic() + 60
        while int(units_state(vm, [unit])[unit]["NRestarts"]) <= restarts:
            assert time.monotonic() < deadline, "systemd did not restart the jobs worker"
            time.sleep(0.5)
        wait_active(vm, run)
        # Its registration outlived it; the new life starts anyway and runs jobs.
        vm.run(["pricepipe", "jobs", "enqueue", "partitions", "days_ahead=9"], cwd="/root")
        wait_job_done(vm, "maintain_partitions(days_ahead=9)")
        lines = [message(e) for e in vm.journal("-u", unit)]
        assert any("left by a previous life" in line for line in lines), lines[-20:]
    journal_window(vm, run, "jobs sigkill")

    with run.phase("restart Redis"):
        vm.run(["systemctl", "restart", "redis-server"])
        wait_active(vm, run)
        probe(vm, "ws", *live)  # live again through the restarted Redis
        time.sleep(5)
    journal_window(vm, run, "redis restart")

    with run.phase("bulk publish, then reboot at once"):
        bulk = vm.sh(bulk_publish("reboot"), cwd="/root", timeout_s=600)
        run.log("bulk publisher: " + (bulk.stdout + bulk.stderr)[-300:])
        vm.reboot()
        run.restarts = {}  # a new boot counts from 0
        wait_active(vm, run)
        http = probe(vm, "http", *live, *BULK_SYMBOLS)
        ws = probe(vm, "ws", *live)
        run.log(f"after the reboot: http {http['trades']}, websocket {ws['frames']}")
    journal_window(vm, run, "reboot")

    with run.phase("stop publishing, persist everything, count"):
        vm.run(["systemctl", "stop", "pricepipe-publisher@gbm"])
        deadline = time.monotonic() + 120
        counts = probe(vm, "counts")
        while not settled(counts):
            assert time.monotonic() < deadline, f"not all persisted: {counts['streams']}"
            time.sleep(1)
            counts = probe(vm, "counts")
        streams, rows = counts["streams"], counts["rows"]
        assert set(rows) == set(streams), (sorted(rows), sorted(streams))
        for key, stream in streams.items():
            got = rows[key]
            assert got["rows"] == got["distinct"] == stream["entries_added"], (key, got, stream)
        for name, (symbols, events, _) in BULK.items():
            added = sum(s["entries_added"] for k, s in streams.items()
                        if k.split(":", 1)[1] in symbols)
            stored = sum(r["rows"] for k, r in rows.items() if k.split(":", 1)[1] in symbols)
            assert added == stored == events, (name, added, stored, events)
        run.log(f"rows = entries added, each once, in all {len(streams)} streams: "
                f"{sum(r['rows'] for r in rows.values())} rows, "
                f"{sum(n for _, n, _ in BULK.values())} of them from the bulk runs")
    journal_window(vm, run, "drain")

    with run.phase("systemd-analyze security"):
        for unit in SERVICES:
            report = vm.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
            exposure = float(re.findall(r"Overall exposure level for \S+: ([\d.]+)", report)[0])
            run.log(f"{unit}: exposure {exposure}")
            assert exposure <= MAX_EXPOSURE, report[-3000:]

    state = vm.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state == "running", f"{state}:\n{vm.failed_units()}"
    # systemd's complaint about children of a unit notifying is never explained.
    assert not run.unexplained, "warnings no fault explains:\n" + json.dumps(
        run.unexplained, indent=1)
