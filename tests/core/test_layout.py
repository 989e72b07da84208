"""The package as users get it: one import name, and a house whose arrows only
run down (roles import the core, never each other; the core imports a role
only lazily, from the command; nothing imports the benchmarks but the
command; no import circles)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

#: Installed module prefix -> folder of the checkout (pyproject's package-dir).
FOLDERS = {
    "pricepipe.publisher": "publisher", "pricepipe.workers": "workers",
    "pricepipe.subscriber": "subscriber", "pricepipe.api": "api", "pricepipe": "pricepipe",
}
ROLES = ("pricepipe.publisher", "pricepipe.workers", "pricepipe.subscriber", "pricepipe.api")
#: Modules that make up the command line; they may reach everything, lazily.
COMMAND = ("pricepipe.cli", "pricepipe.flags", "pricepipe.__main__")


def module_files() -> dict[str, Path]:
    """Installed module name -> its file in the checkout."""
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            out.setdefault(name.removesuffix(".__init__"), path)
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Every pricepipe module ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "pricepipe" or m.startswith("pricepipe.")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: {m for m in imports_of(name, path) if m in files and m != name}
            for name, path in files.items()}


def owner(module: str) -> str:
    for prefix in (*ROLES, "pricepipe.bench"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return "pricepipe"


def test_roles_import_the_core_only(graph: dict[str, set[str]]) -> None:
    for module, targets in graph.items():
        room = owner(module)
        if room not in ROLES:
            continue
        for target in targets:
            if module.endswith(".cli") and target in COMMAND:
                continue  # a role's subcommands use the shared flags
            assert owner(target) in (room, "pricepipe"), f"{module} -> {target}"
            assert target not in COMMAND or module.endswith("__main__"), f"{module} -> {target}"


def test_the_core_imports_no_role_and_no_benchmark_but_from_the_command(
        graph: dict[str, set[str]]) -> None:
    for module, targets in graph.items():
        if owner(module) != "pricepipe" or module in COMMAND:
            continue
        for target in targets:
            assert owner(target) == "pricepipe", f"{module} -> {target}"
            assert target not in COMMAND, f"{module} -> {target}: only the command imports it"


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circle = path[path.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_package_folder_is_listed_for_setuptools() -> None:
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    packages = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert packages == listed


def test_the_wheel_installs_only_pricepipe(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves a build/ folder in the tree it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *FOLDERS.values()):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(tmp_path), str(source)],
                   check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("pricepipe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {
        "pricepipe", f"{wheel.name.split('-py')[0]}.dist-info"}
    assert "pricepipe/migrations/0001_init.sql" in names
    assert "pricepipe/api/static/index.html" in names
    # Installed where the checkout is not on the path, every module imports
    # from the installed tree and no role appears under its folder's name.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    check = """
import importlib, pkgutil, sys
import pricepipe
site = sys.argv[1]
for info in pkgutil.walk_packages(pricepipe.__path__, "pricepipe."):
    if info.name.endswith("__main__"):
        continue  # runs the command
    module = importlib.import_module(info.name)
    assert module.__file__.startswith(site), (info.name, module.__file__)
roles = sorted(m for m in sys.modules if m.split(".")[0] in ("publisher", "workers",
                                                             "subscriber", "api"))
assert not roles, roles
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", check, str(site)], cwd=tmp_path,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
