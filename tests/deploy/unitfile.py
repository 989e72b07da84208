"""A small reader of systemd unit files, enough to run a unit's ``ExecStart``
the way systemd would (``systemd.unit(5)``, ``systemd.service(5)``,
``systemd.exec(5)``): sections, repeated keys, line continuations, the
specifiers the pricepipe units use, ``Environment=`` quoting and
``${VAR}`` expansion in command lines. Pure: no I/O beyond reading a file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Prefixes of ExecStart= ("-" ignore failure, "@" argv0, "+"/"!" privileges, ":" no env expansion).
_EXEC_PREFIXES = "-@+!:"


@dataclass
class Unit:
    """Parsed unit: ``sections[section][key]`` lists every assignment in order."""

    name: str
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else default

    @property
    def template(self) -> bool:
        return self.name.split(".")[0].endswith("@")


def parse(text: str, name: str) -> Unit:
    """Parse unit-file ``text``. Comments (``#``, ``;``) and blank lines are skipped,
    a trailing backslash continues a line, an empty assignment resets the key."""
    unit = Unit(name)
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.sections.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"{name}: cannot read line {raw!r}")
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            section[key] = []
        else:
            section.setdefault(key, []).append(value)
    return unit


def load(path: Path) -> Unit:
    return parse(path.read_text(), path.name)


def expand_specifiers(value: str, *, unit_name: str, hostname: str) -> str:
    """Replace ``%i %I %n %N %p %H %%`` as systemd does for an instance ``unit_name``."""
    stem = unit_name.rsplit(".", 1)[0]
    prefix, _, instance = stem.partition("@")
    table = {"i": instance, "I": instance, "n": unit_name, "N": stem, "p": prefix,
             "H": hostname, "%": "%"}

    def replace(match: re.Match[str]) -> str:
        letter = match[1]
        if letter not in table:
            raise ValueError(f"unsupported specifier %{letter} in {value!r}")
        return table[letter]

    return re.sub(r"%(.)", replace, value)


def environment(unit: Unit, *, unit_name: str, hostname: str) -> dict[str, str]:
    """The variables of every ``Environment=`` line (later ones win)."""
    out: dict[str, str] = {}
    for line in unit.values("Service", "Environment"):
        for item in shlex.split(expand_specifiers(line, unit_name=unit_name, hostname=hostname)):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{unit.name}: Environment item {item!r} has no '='")
            out[key] = value
    return out


def environment_files(unit: Unit, *, unit_name: str, hostname: str) -> list[tuple[str, bool]]:
    """``(path, required)`` of each ``EnvironmentFile=`` (a ``-`` prefix means optional)."""
    out = []
    for line in unit.values("Service", "EnvironmentFile"):
        value = expand_specifiers(line, unit_name=unit_name, hostname=hostname)
        out.append((value.lstrip("-"), not value.startswith("-")))
    return out


def exec_start(unit: Unit, *, unit_name: str, hostname: str,
               env: Mapping[str, str]) -> list[str]:
    """argv of the (single) ``ExecStart=``, specifiers and ``${VAR}``/``$VAR`` expanded."""
    lines = unit.values("Service", "ExecStart")
    if len(lines) != 1:
        raise ValueError(f"{unit.name}: expected one ExecStart, found {len(lines)}")
    line = expand_specifiers(lines[0], unit_name=unit_name, hostname=hostname)
    expand = True
    while line and line[0] in _EXEC_PREFIXES:
        expand = expand and line[0] != ":"
        line = line[1:]
    argv = []
    for word in shlex.split(line):
        if expand:
            word = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), word)
            if re.fullmatch(r"\$(\w+)", word):  # "$VAR" alone splits on whitespace
                argv.extend(env.get(word[1:], "").split())
                continue
        argv.append(word)
    return argv


def seconds(value: str) -> float:
    """A systemd time span (``30``, ``30s``, ``2min``, ``1h 5min``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600,
             "ms": 0.001, "us": 1e-6}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        if suffix not in units:
            raise ValueError(f"unknown time unit {suffix!r} in {value!r}")
        total += float(number) * units[suffix]
    return total
