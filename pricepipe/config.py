"""Configuration: one frozen settings dataclass per concern.

Each class reads ``PRICEPIPE_<PREFIX>_<FIELD>`` environment variables through
:meth:`Settings.from_env`; keyword overrides (CLI flags) win over the
environment, and ``None`` overrides are ignored so an unset flag falls back.
Role packages define their own settings classes on the same base; ``pricepipe
config`` lists every variable of every class with its default.

Secrets (fields marked ``secret=True`` and passwords inside URLs) print as
``****``.

Where settings come from, in order: keyword overrides (a command's flags),
the process environment, then the URLs a running ``pricepipe up`` published
in ``<data_dir>/embedded.env`` (see :func:`environment`), then the defaults.
Settings are resolved once, here, when a command starts; services receive
settings objects and never read the environment or command-line arguments.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from .exceptions import ConfigError
from .keys import Keys

S = TypeVar("S", bound="Settings")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def setting(default: Any, help: str, *, secret: bool = False) -> Any:  # noqa: A002
    """Declare a settings field with its documentation."""
    return field(default=default, metadata={"help": help, "secret": secret})


def mask_url(url: str | None) -> str | None:
    """Hide the password of ``scheme://user:password@host`` as ``****``, and
    a ``password=`` query parameter (libpq and redis-py accept both)."""
    if url is None:
        return None
    url = re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1****@", url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1****", url)


def _coerce(name: str, hint: Any, raw: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if raw.strip().lower() in ("", "none", "null"):
            return None
        return _coerce(name, args[0], raw)
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(name, item, part.strip()) for part in raw.split(",") if part.strip())
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read {raw!r} as {hint.__name__}") from exc
    raise ConfigError(f"{name}: unsupported setting type {hint!r}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of every settings class; subclasses set ``env_prefix``."""

    env_prefix: ClassVar[str] = "PRICEPIPE_"

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return f"{cls.env_prefix}{field_name.upper()}"

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Build from ``environ`` (default ``os.environ``); overrides win unless ``None``.

        Raises :exc:`ConfigError` for a value that does not parse.
        """
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            name = cls.env_name(f.name)
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
            elif name in environ:
                values[f.name] = _coerce(name, hints[f.name], environ[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} options: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """``(variable, default, help)`` for every field, for the README table."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            elif isinstance(default, bool):
                default = "true" if default else "false"
            shown = "(unset)" if default is None else str(default)
            rows.append((cls.env_name(f.name), shown, f.metadata.get("help", "")))
        return rows

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "****"
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


@dataclass(frozen=True, kw_only=True, repr=False)
class RedisSettings(Settings):
    """Where the streams live and how they are laid out."""

    env_prefix: ClassVar[str] = "PRICEPIPE_REDIS_"

    url: str | None = setting(
        None, "Redis URL (redis:// or rediss://); unset: `pricepipe up` starts an embedded one"
    )
    cluster: bool = setting(False, "Connect in Redis Cluster mode")
    prefix: str = setting("pp", "Prefix of every Redis key")
    shards: int = setting(
        8, "Hash-tag shards symbols are grouped into; fixed for the life of the data"
    )
    socket_timeout_s: float = setting(10.0, "Socket timeout of Redis commands, seconds")

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ConfigError("PRICEPIPE_REDIS_SHARDS must be at least 1")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", self.prefix):
            raise ConfigError("PRICEPIPE_REDIS_PREFIX must be 1-32 of [A-Za-z0-9_.-]")

    @property
    def keys(self) -> Keys:
        """The deployment's key layout (prefix and shard count)."""
        return Keys(self.prefix, self.shards)

    def require_url(self) -> str:
        if not self.url:
            raise ConfigError(
                "PRICEPIPE_REDIS_URL is not set (or run `pricepipe up` for embedded servers)"
            )
        return self.url


@dataclass(frozen=True, kw_only=True, repr=False)
class DatabaseSettings(Settings):
    """PostgreSQL connection for writers (workers, jobs) and readers (API)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_DATABASE_"

    url: str | None = setting(
        None, "PostgreSQL URL of the writer role; unset: `pricepipe up` starts an embedded one"
    )
    read_url: str | None = setting(
        None, "PostgreSQL URL for read-only queries (API; a replica or read-only role); "
        "defaults to PRICEPIPE_DATABASE_URL"
    )
    statement_timeout_ms: int = setting(10_000, "Statement timeout of read queries, ms")
    pool_max: int = setting(8, "Most connections in the API's read pool")

    def require_url(self) -> str:
        if not self.url:
            raise ConfigError(
                "PRICEPIPE_DATABASE_URL is not set (or run `pricepipe up` for embedded servers)"
            )
        return self.url

    def require_read_url(self) -> str:
        return self.read_url or self.require_url()


@dataclass(frozen=True, kw_only=True, repr=False)
class RuntimeSettings(Settings):
    """Process-wide settings: logging, local state, metrics."""

    env_prefix: ClassVar[str] = "PRICEPIPE_"

    data_dir: str = setting(".pricepipe", "Directory for embedded servers' data and state")
    log_level: str = setting("INFO", "Logging level (DEBUG, INFO, WARNING, ERROR)")
    log_json: bool = setting(False, "Log one JSON object per line (for the journal)")


CORE_SETTINGS: tuple[type[Settings], ...] = (RedisSettings, DatabaseSettings, RuntimeSettings)

#: Written by ``pricepipe up`` into its data directory while it runs embedded servers.
EMBEDDED_ENV_FILE = "embedded.env"


def read_env_file(path: Path) -> dict[str, str]:
    """``PRICEPIPE_*=value`` lines of an environment file (empty if unreadable)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().startswith("PRICEPIPE_"):
            out[key.strip()] = value.strip()
    return out


def environment(*, data_dir: str | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment settings are read from: ``environ`` (default
    ``os.environ``) over the URLs a running ``pricepipe up`` published in its
    data directory (``data_dir``, else ``PRICEPIPE_DATA_DIR``), so that
    ``pricepipe status`` or ``tail`` in another terminal find its servers."""
    base = dict(os.environ if environ is None else environ)
    runtime = RuntimeSettings.from_env(base, data_dir=data_dir)
    merged = read_env_file(Path(runtime.data_dir) / EMBEDDED_ENV_FILE)
    merged.update(base)
    return merged

