"""Generated passwords, one file per credential, readable by the owner only.

A password directory holds one file per name (``publisher``, ``persist``
...), each the password alone on one line, mode 0600 in a 0700 directory.
:func:`ensure` creates the missing ones and keeps every existing one, so it
is safe to run on every install or start: nothing already handed to a
service or stored by a server changes under it. The same passwords can come
from the environment instead (``PRICEPIPE_REDIS_PASSWORD_<NAME>``, see
:func:`from_env`), e.g. from a secret store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from .exceptions import ConfigError

#: Random bytes per generated password (base64url: 43 characters, no
#: character a URL or a shell would need quoted).
PASSWORD_BYTES = 32

#: Environment variables :func:`from_env` reads: this plus the name, upper
#: case, ``-`` as ``_`` (``PRICEPIPE_REDIS_PASSWORD_GROUP_READER``).
ENV_PREFIX = "PRICEPIPE_REDIS_PASSWORD_"


def generate() -> str:
    """A new random password (``secrets.token_urlsafe``)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


#: PBKDF2 rounds of a SCRAM verifier (PostgreSQL's default, ``scram_iterations``).
SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password``
    (RFC 5802 and 7677; the ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:
    <ServerKey>`` form of ``pg_authid.rolpassword``), so that ``CREATE ROLE
    ... PASSWORD`` is given the verifier and the password itself never
    reaches the server or its logs. PostgreSQL stores a value of this form as
    it is. (Passwords are SASLprep-normalised first; :func:`generate`'s are
    ASCII, which it leaves unchanged.)"""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 whatever the umask, atomically
    (a temporary file renamed over it: a reader never sees half a file, and
    the file is never readable by others, not even for a moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing temporary file keeps its mode otherwise
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)


def read(directory: Path, names: Iterable[str]) -> dict[str, str]:
    """The passwords of ``names`` in ``directory``. Raises :exc:`ConfigError`
    naming every missing or empty one."""
    out: dict[str, str] = {}
    missing = []
    for name in names:
        try:
            password = (directory / name).read_text().strip()
        except FileNotFoundError:
            password = ""
        if password:
            out[name] = password
        else:
            missing.append(name)
    if missing:
        raise ConfigError(f"no password for {missing} in {directory}")
    return out


def ensure(directory: Path, names: Iterable[str]) -> dict[str, str]:
    """The passwords of ``names`` in ``directory``, generating (0600) each
    one that is missing; existing ones are kept as they are."""
    _private_dir(directory)
    out = {}
    for name in names:
        path = directory / name
        try:
            password = path.read_text().strip()
        except FileNotFoundError:
            password = ""
        if not password:
            password = generate()
            write_private(path, password + "\n")
        out[name] = password
    return out


def env_name(name: str) -> str:
    """The environment variable holding ``name``'s password."""
    return ENV_PREFIX + name.upper().replace("-", "_")


def from_env(environ: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The passwords of ``names`` from ``environ`` (:func:`env_name`).
    Raises :exc:`ConfigError` naming every variable missing."""
    out: dict[str, str] = {}
    missing = []
    for name in names:
        value = environ.get(env_name(name), "").strip()
        if value:
            out[name] = value
        else:
            missing.append(env_name(name))
    if missing:
        raise ConfigError(f"password variables not set: {missing}")
    return out
