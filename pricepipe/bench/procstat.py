"""CPU and memory of processes, read from Linux ``/proc`` (proc(5)).

Parsing is pure (:func:`parse_stat`, :func:`parse_status_kib`); the
:class:`ProcessSampler` reads ``/proc`` and keeps, per named process, its CPU
share between samples and its resident memory over time. A "process" may be
a whole tree (PostgreSQL forks a backend per connection): its figures are
the sums over the tree.

CPU time comes from ``utime + stime`` in clock ticks (``SC_CLK_TCK``), memory
from ``VmRSS`` (what the kernel counts as resident, shared pages included, so
a tree's sum over-counts PostgreSQL's shared buffers) and ``RssAnon`` (private
memory only: the figure that grows when a process leaks).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class StatFields:
    """The fields of ``/proc/<pid>/stat`` we use."""

    pid: int
    comm: str
    ppid: int
    cpu_ticks: int  # utime + stime, in SC_CLK_TCK units
    #: cutime + cstime: children that exited and were waited for (a
    #: PostgreSQL backend's CPU moves to the postmaster's here when it ends).
    children_cpu_ticks: int = 0


def parse_stat(text: str) -> StatFields:
    """Parse ``/proc/<pid>/stat``. ``comm`` may hold spaces and parentheses,
    so the fields are split after its *last* closing parenthesis (proc(5)).

    Raises ``ValueError`` on malformed text.
    """
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren])
    comm = text[open_paren + 1:close_paren]
    rest = text[close_paren + 2:].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    ppid = int(rest[1])
    utime, stime = int(rest[11]), int(rest[12])
    cutime, cstime = int(rest[13]), int(rest[14])
    return StatFields(pid, comm, ppid, utime + stime, cutime + cstime)


def parse_status_kib(text: str, *names: str) -> dict[str, int]:
    """``{"VmRSS": kib, ...}`` for the requested lines of ``/proc/<pid>/status``
    (missing ones are left out: kernel threads have no ``VmRSS``)."""
    wanted = set(names)
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in wanted:
            parts = value.split()
            if parts:
                out[key] = int(parts[0])
    return out


def read_stat(pid: int) -> StatFields | None:
    """Stat of ``pid``, or None if it is gone (or not ours to read)."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def read_memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``RssAnon`` of ``pid`` in KiB (empty if it is gone)."""
    try:
        return parse_status_kib((PROC / str(pid) / "status").read_text(), "VmRSS", "RssAnon")
    except OSError:
        return {}


def all_stats() -> dict[int, StatFields]:
    """Stat of every process we can see."""
    out: dict[int, StatFields] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                out[stat.pid] = stat
    return out


def descendants(root: int, stats: dict[int, StatFields]) -> list[int]:
    """``root`` and every process below it in ``stats`` (pure)."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


def local_pid(pid: int | None, comm_prefix: str) -> int | None:
    """``pid`` if it is a process on this machine whose name starts with ``comm_prefix``."""
    if pid is None:
        return None
    stat = read_stat(pid)
    return pid if stat is not None and stat.comm.startswith(comm_prefix) else None


def redis_pid(r: Any) -> int | None:
    try:
        return local_pid(int(r.info("server")["process_id"]), "redis")
    except Exception:  # noqa: BLE001 - remote or restricted server: just not sampled
        return None


def postgres_pid(conn: Any) -> int | None:
    """The postmaster's pid (parent of our backend), if it runs here."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    backend = read_stat(int(row[0])) if row else None
    if backend is None:
        return None
    return local_pid(backend.ppid, "postgres")


def tree_cpu_s(root: int | None) -> float:
    """CPU seconds (user + system) used so far by ``root`` and every process
    below it, those that already exited included: PostgreSQL's work is done by
    its backends, children of the postmaster, which may end meanwhile. 0.0
    when ``root`` is None or gone."""
    if root is None:
        return 0.0
    stats = all_stats()
    return sum(stats[pid].cpu_ticks + stats[pid].children_cpu_ticks
               for pid in descendants(root, stats)) / CLK_TCK


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation, None if empty."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return float(data[0])
    rank = (len(data) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return float(data[low] + (data[high] - data[low]) * (rank - low))


@dataclass
class ProcessSeries:
    """Samples of one named process (or tree)."""

    name: str
    #: ``(monotonic_s, cpu_ticks, rss_kib, anon_kib)`` per sample
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)

    def cpu_percent(self, start_s: float, end_s: float) -> float | None:
        """Average CPU share (100 = one core) between the samples closest to
        ``start_s`` and ``end_s``; None without two samples in range."""
        inside = [s for s in self.samples if start_s <= s[0] <= end_s]
        if len(inside) < 2:
            return None
        (t0, c0, _, _), (t1, c1, _, _) = inside[0], inside[-1]
        if t1 <= t0:
            return None
        # A restarted process starts its counter again: never report < 0.
        return max(c1 - c0, 0) / CLK_TCK / (t1 - t0) * 100.0

    def rss_max_mib(self, start_s: float = 0.0, end_s: float = float("inf")) -> float | None:
        inside = [s[2] for s in self.samples if start_s <= s[0] <= end_s]
        return max(inside) / 1024.0 if inside else None

    def anon_series_mib(self) -> list[tuple[float, float]]:
        return [(s[0], s[3] / 1024.0) for s in self.samples]


class ProcessSampler:
    """Samples named processes every ``interval_s`` in a daemon thread.

    ``targets`` maps a name to a callable returning the current pid (or
    None): roles are restarted during a soak, so the pid is looked up at
    every sample. Names in ``trees`` are summed over their descendants.
    Safe to call :meth:`series` while running (samples are appended only).
    """

    def __init__(self, targets: dict[str, Callable[[], int | None]], *,
                 trees: Iterable[str] = (), interval_s: float = 1.0) -> None:
        self.targets = dict(targets)
        self.trees = set(trees)
        self.interval_s = interval_s
        self._series = {name: ProcessSeries(name) for name in self.targets}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, name: str, pid_of: Callable[[], int | None], *, tree: bool = False) -> None:
        with self._lock:
            self.targets[name] = pid_of
            self._series.setdefault(name, ProcessSeries(name))
            if tree:
                self.trees.add(name)

    def sample(self) -> None:
        """Take one sample of every target now."""
        now = time.monotonic()
        with self._lock:
            targets = list(self.targets.items())
        stats = all_stats() if self.trees else {}
        for name, pid_of in targets:
            pid = pid_of()
            if pid is None:
                continue
            pids = descendants(pid, stats) if name in self.trees else [pid]
            cpu = rss = anon = 0
            seen = False
            for member in pids:
                stat = stats.get(member) if name in self.trees else read_stat(member)
                if stat is None:
                    continue
                memory = read_memory_kib(member)
                seen = True
                # A tree also counts its members' ended children (backends
                # that disconnected), or its CPU would drop when one exits.
                cpu += stat.cpu_ticks + (stat.children_cpu_ticks if name in self.trees else 0)
                rss += memory.get("VmRSS", 0)
                anon += memory.get("RssAnon", 0)
            if seen:
                self._series[name].samples.append((now, cpu, rss, anon))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> ProcessSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="procstat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def series(self) -> dict[str, ProcessSeries]:
        with self._lock:
            return dict(self._series)


def parse_machine_cpu(text: str) -> tuple[int, int]:
    """``(busy, total)`` clock ticks of all CPUs from ``/proc/stat`` (pure).
    Idle and iowait count as not busy."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])  # guest time is already inside user/nice
            return total - idle, total
    raise ValueError("no cpu line in /proc/stat")


def read_machine_cpu() -> tuple[int, int] | None:
    try:
        return parse_machine_cpu((PROC / "stat").read_text())
    except (OSError, ValueError):
        return None
