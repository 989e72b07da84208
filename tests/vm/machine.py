"""A Debian machine booted with ``systemd-nspawn``: real systemd as PID 1, its
own network namespace with loopback only, commands run inside with
``nsenter`` into every namespace of its init.

``--register=no`` (and ``--keep-unit`` on a host without systemd, as CI
containers are): nothing is asked of systemd-machined, so ``machinectl``
does not know the machine; its init is found as the child of
``systemd-nspawn`` whose PID is 1 in its own PID namespace. A reboot from
inside ends ``systemd-nspawn`` with exit status 133, and
:meth:`Machine.reboot` boots the same root again, as a hypervisor would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

Log = Callable[[str], None]

#: systemd-nspawn's exit status when the container asked for a reboot.
REBOOT_STATUS = 133
#: The environment of every command run inside (nothing leaks in from the host).
INSIDE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LANG=C.UTF-8", "HOME=/root", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]


class MachineError(RuntimeError):
    """The machine did not boot, stop or run a command as expected."""


def _ns_pid(pid: int) -> tuple[int, ...]:
    """The PIDs of ``pid`` in each nested PID namespace (``NSpid:`` of its status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ()
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return tuple(int(x) for x in line.split()[1:])
    return ()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _host_runs_systemd() -> bool:
    """Whether the host booted with systemd (sd_booted(3)): then nspawn puts the machine
    in a scope of its own; without one (a CI container), --keep-unit makes it stay in
    the cgroup it was started in instead of asking a systemd that is not there."""
    return Path("/run/systemd/system").is_dir()


def kill_leftover(pid_file: Path) -> bool:
    """Kill the machine a crashed run left up, from its ``pid_file``: its init first
    (which ends every process of the machine), then systemd-nspawn. True if any."""
    try:
        pids = [int(x) for x in pid_file.read_text().split()]
    except (OSError, ValueError):
        return False
    if len(pids) != 2:
        return False
    nspawn, init = pids
    killed = False
    # The init of a container (PID 1 of its own namespace) and its nspawn, not whatever
    # process has taken up a pid since.
    for pid, ok in ((init, len(_ns_pid(init)) > 1 and _ns_pid(init)[-1] == 1),
                    (nspawn, True)):
        try:
            if ok and b"systemd" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
                killed = True
        except OSError:
            pass
    return killed


class Machine:
    """One machine on the root directory ``root``; every boot's console goes to
    ``console_log``. :meth:`stop` when done."""

    def __init__(self, root: Path, *, name: str, console_log: Path, log: Log,
                 pid_file: Path | None = None) -> None:
        self.root = root
        self.name = name
        self.console_log = console_log
        #: Holds the pids of systemd-nspawn and of the machine's init while they run
        #: (see :func:`kill_leftover`).
        self.pid_file = pid_file
        self.log = log
        self.boots = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._leader = 0

    # --- life cycle -------------------------------------------------------------------

    def boot(self, *, timeout_s: float = 180.0) -> str:
        """Boot and wait until systemd has finished starting up; returns the state
        (``running``, or ``degraded`` after :meth:`failed_units` was logged)."""
        if self._proc is not None:
            raise MachineError("already booted")
        started = time.monotonic()
        self._console = open(self.console_log, "ab")  # noqa: SIM115 - closed in _reap
        self._console.write(f"\n===== boot {self.boots + 1} =====\n".encode())
        self._console.flush()
        self._proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--private-network", "--register=no",
             *([] if _host_runs_systemd() else ["--keep-unit"]), f"--machine={self.name}",
             "--console=read-only", "--directory", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.boots += 1
        deadline = started + timeout_s
        self._leader = self._find_leader(deadline)
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self._proc.pid} {self._leader}\n")
        state = self._wait_started(deadline)
        self.log(f"machine: boot {self.boots} {state} in {time.monotonic() - started:.1f} s "
                 f"(init is pid {self._leader} on the host)")
        if state == "degraded":
            self.log("machine: degraded, failed units:\n" + self.failed_units())
        return state

    def _find_leader(self, deadline: float) -> int:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MachineError(f"systemd-nspawn exited with {self._proc.returncode}: "
                                   f"{self.console_tail()}")
            for child in _children(self._proc.pid):
                ns = _ns_pid(child)
                try:
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                except OSError:
                    continue
                # Before it execs systemd the child is still nspawn's own code.
                if len(ns) > 1 and ns[-1] == 1 and comm == "systemd":
                    return child
            time.sleep(0.05)
        raise MachineError(f"no init process within the boot timeout: {self.console_tail()}")

    def _wait_started(self, deadline: float) -> str:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MachineError("boot did not finish in time:\n" + self.jobs_and_failed())
            try:
                result = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                                  timeout_s=left)
            except subprocess.TimeoutExpired:
                continue
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return state
            if state in ("maintenance", "stopping"):
                raise MachineError(f"boot ended in state {state}:\n{self.jobs_and_failed()}")
            time.sleep(0.2)  # the bus is not up yet ("offline", connection refused)

    def reboot(self, *, timeout_s: float = 180.0) -> str:
        """``systemctl reboot`` inside; once the machine went down, boot it again."""
        self.log("machine: systemctl reboot")
        started = time.monotonic()
        self.run(["systemctl", "reboot"], check=False)
        code = self._reap(timeout_s)
        if code != REBOOT_STATUS:
            raise MachineError(f"systemd-nspawn ended with {code}, not {REBOOT_STATUS} "
                               f"(reboot): {self.console_tail()}")
        self.log(f"machine: went down in {time.monotonic() - started:.1f} s")
        return self.boot(timeout_s=timeout_s)

    def poweroff(self, *, timeout_s: float = 120.0) -> None:
        if self._proc is None:
            return
        self.run(["systemctl", "poweroff"], check=False)
        code = self._reap(timeout_s)
        self.log(f"machine: powered off ({code})")

    def kill(self) -> None:
        """Stop at once (the test failed): SIGKILL to nspawn's process group, then its
        leftover children (the kernel kills a PID namespace with its init)."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._leader:
            try:
                os.kill(self._leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap(30)

    def _reap(self, timeout_s: float) -> int:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise MachineError(f"still up {timeout_s:.0f} s after the request to stop: "
                               f"{self.console_tail()}") from None
        finally:
            if self._proc.returncode is not None:
                self._proc = None
                self._leader = 0
                if self._console is not None:
                    self._console.close()
                    self._console = None
        return code

    def stop(self) -> None:
        """Power off cleanly if it can, else kill."""
        if self._proc is None:
            return
        try:
            self.poweroff()
        except (MachineError, subprocess.TimeoutExpired) as exc:
            self.log(f"machine: {exc}; killing it")
            self.kill()

    @property
    def leader(self) -> int:
        """The machine's init, as a host PID (0 when down)."""
        return self._leader

    @property
    def nspawn_pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    # --- commands -----------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout_s: float = 120.0,
            check: bool = True, cwd: str = "/") -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside as root, in every namespace of the machine's init."""
        if not self._leader:
            raise MachineError("not booted")
        result = subprocess.run(
            # env --chdir: nsenter's own --wd= would name a directory of the host.
            ["nsenter", "--target", str(self._leader), "--all",
             "env", "-i", f"--chdir={cwd}", *INSIDE_ENV, *argv],
            input=input, capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise MachineError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                               f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], **kwargs)

    # --- what systemd says ----------------------------------------------------------------

    def failed_units(self) -> str:
        failed = self.run(["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"],
                          check=False).stdout
        out = [failed]
        for line in failed.splitlines():
            unit = line.split()[0]
            out.append(self.run(["systemctl", "status", "--no-pager", "--lines=20", unit],
                                check=False).stdout)
        return "\n".join(out)

    def jobs_and_failed(self) -> str:
        jobs = self.run(["systemctl", "list-jobs", "--no-pager"], check=False).stdout
        return f"jobs:\n{jobs}\n{self.failed_units()}"

    def unit_property(self, unit: str, name: str) -> str:
        return self.run(["systemctl", "show", "--value", "-p", name, unit]).stdout.strip()

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """Journal entries (``journalctl -o json``) of every boot, filtered by ``args``."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args], timeout_s=120).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def journal_cursor(self) -> str:
        """The cursor of the newest journal entry (to read only what comes after it)."""
        entries = self.journal("-n", "1")
        return str(entries[-1]["__CURSOR"]) if entries else ""

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
