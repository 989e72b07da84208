"""What the VM test copies into the machine, built on the host: the checkout
as an operator's clone would have it, and a wheelhouse of pricepipe, every
dependency and the build backend, so that ``install.sh --offline`` needs no
network (the machine has loopback only).

pip picks dependencies by environment markers evaluated for the Python it
runs on, so the wheelhouse is completed for the machine's own marker
environment (:func:`missing_for`). Dependency wheels are cached beside the
image (``<cache>/wheels-<key>``, keyed by the dependency list and the Python
tag). A run first builds offline from that cache and reaches for the package
index only when a requirement is missing there; pricepipe's own wheel is
built from the checkout every run.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

Log = Callable[[str], None]


def checkout_files(repo: Path) -> list[str]:
    """Files of the working tree as git sees them: tracked and untracked, not ignored
    (uncommitted work included, .venv and caches left out)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True, timeout=60)
    return [name for name in out.stdout.decode().split("\0")
            if name and (repo / name).is_file()]


def copy_checkout(repo: Path, target: Path) -> None:
    """A copy of the working tree at ``target`` (a clone with local changes)."""
    for name in checkout_files(repo):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, destination)


def _requirements(source: Path) -> tuple[list[str], list[str]]:
    """(build requirements, run-time dependencies) of the project at ``source``."""
    project = tomllib.loads((source / "pyproject.toml").read_text())
    return list(project["build-system"]["requires"]), list(project["project"]["dependencies"])


def cache_key(source: Path) -> str:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    build_requires, dependencies = _requirements(source)
    text = "\n".join([tag, *sorted(build_requires), *sorted(dependencies)])
    return f"{tag}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _wheel_requires(path: Path) -> tuple[str, Version, list[Requirement]]:
    """(canonical name, version, Requires-Dist) of a wheel, from its METADATA."""
    with zipfile.ZipFile(path) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(whl.read(name).decode())
    return (canonicalize_name(meta["Name"]), Version(meta["Version"]),
            [Requirement(r) for r in meta.get_all("Requires-Dist") or []])


def missing_for(wheels: Path, roots: list[str], environment: dict[str, str]) -> list[str]:
    """Requirements, with their extras followed, that no wheel in ``wheels`` satisfies
    on a machine with marker ``environment``. pip evaluates markers for the Python
    it runs on, so a wheelhouse built on the host can lack what the target needs
    (``async-timeout; python_full_version < "3.11.3"`` on bookworm's 3.11.2)."""
    found = {}
    for path in wheels.glob("*.whl"):
        name, version, requires = _wheel_requires(path)
        found[name] = (version, requires)
    missing: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    queue: list[tuple[Requirement, frozenset[str]]] = [(Requirement(r), frozenset())
                                                       for r in roots]
    while queue:
        req, parent_extras = queue.pop()
        if req.marker is not None and not any(
                req.marker.evaluate({**environment, "extra": extra})
                for extra in parent_extras | {""}):
            continue
        name = canonicalize_name(req.name)
        have = found.get(name)
        if have is None or not req.specifier.contains(have[0], prereleases=True):
            missing.append(str(Requirement(f"{req.name}{req.specifier}")))
            continue
        key = (name, frozenset(req.extras))
        if key not in seen:
            seen.add(key)
            queue.extend((dep, frozenset(req.extras)) for dep in have[1])
    return sorted(set(missing))


def _pip_wheel(base: list[str], wanted: list[str], log: Log) -> None:
    """``pip wheel`` from the cache alone if it can, else with the package index."""
    offline = subprocess.run([*base, "--no-index", *wanted], capture_output=True, text=True,
                             timeout=900)
    if offline.returncode != 0:
        log(f"wheelhouse: not all of {len(wanted)} requirement(s) cached, asking the index")
        online = subprocess.run([*base, *wanted], capture_output=True, text=True, timeout=1800)
        if online.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{online.stdout[-3000:]}{online.stderr[-3000:]}")


def build(source: Path, out: Path, cache: Path, log: Log, *,
          environment: dict[str, str]) -> list[str]:
    """Wheels of pricepipe (from ``source``), its dependencies and its build backend
    into ``out``, complete for a machine with marker ``environment``; returns their
    file names."""
    cached = cache / f"wheels-{cache_key(source)}"
    cached.mkdir(parents=True, exist_ok=True)
    os.utime(cached)  # in use (image.prune removes sets unused for a week)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    build_requires, dependencies = _requirements(source)
    base = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
            "--prefer-binary", "--wheel-dir", str(out), "--find-links", str(cached)]
    # The build requirements too: install.sh builds the checkout inside the machine.
    _pip_wheel(base, [str(source), *build_requires], log)
    # Then what the target's markers add, until nothing is missing.
    for _ in range(10):
        missing = missing_for(out, [*build_requires, *dependencies], environment)
        if not missing:
            break
        log(f"wheelhouse: the target also needs {missing}")
        _pip_wheel([*base, "--no-deps"], missing, log)
    else:
        raise RuntimeError(f"wheelhouse: still missing {missing}")
    # pip builds in the tree: leave the copy as a clone would be.
    shutil.rmtree(source / "build", ignore_errors=True)
    for info in source.glob("*.egg-info"):
        shutil.rmtree(info, ignore_errors=True)
    names = sorted(p.name for p in out.glob("*.whl"))
    for name in names:
        if not name.startswith("pricepipe-") and not (cached / name).exists():
            shutil.copy2(out / name, cached / name)
    log(f"wheelhouse: {len(names)} wheels in {time.monotonic() - started:.0f} s")
    return names
