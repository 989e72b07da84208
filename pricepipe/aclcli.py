"""``pricepipe redis-acl``: create the Redis users of :mod:`pricepipe.acl`.

* ``passwords DIR`` - generate a password file (0600) for every role that
  has none; existing ones are kept.
* ``render --passwords-from DIR|env [--out FILE]`` - the ACL file (Redis's
  ``aclfile``): one user per role, the admin's being ``default`` (with a
  password: see :mod:`pricepipe.acl`), passwords as SHA-256 hashes only.
* ``apply --passwords-from DIR|env --redis-url URL`` - the same users over a
  connection (``ACL SETUSER``, idempotent), then saved where the server keeps
  its users (``ACL SAVE`` with an ``aclfile``, else ``CONFIG REWRITE``).
* ``url ROLE --passwords-from DIR|env --base URL`` - the role's URL, for the
  role's environment file.

``--passwords-from env`` reads ``PRICEPIPE_REDIS_PASSWORD_<ROLE>`` variables
(:mod:`pricepipe.passwords`). Key patterns follow ``PRICEPIPE_REDIS_PREFIX``.
Nothing here ever prints a password, except ``url``, whose output is one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

PASSWORDS_HELP = "directory of password files, or `env` (PRICEPIPE_REDIS_PASSWORD_<ROLE>)"


def _roles(args: argparse.Namespace) -> list[Any]:
    from .acl import Role, parse_roles

    return parse_roles(args.roles.split(",")) if args.roles else list(Role)


def _passwords(args: argparse.Namespace, roles: list[Any]) -> dict[Any, str]:
    from . import passwords

    names = [role.value for role in roles]
    if args.passwords_from == "env":
        found = passwords.from_env(os.environ, names)
    else:
        found = passwords.read(Path(args.passwords_from), names)
    return {role: found[role.value] for role in roles}


def _keys(args: argparse.Namespace) -> Any:
    from .config import RedisSettings

    return RedisSettings.from_env(prefix=args.prefix).keys


def _cmd_passwords(args: argparse.Namespace) -> int:
    from . import passwords

    directory = Path(args.directory)
    before = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    names = [role.value for role in _roles(args)]
    passwords.ensure(directory, names)
    made = [n for n in names if n not in before]
    print(f"{directory}: {len(made)} password(s) generated"
          + (f" ({', '.join(made)})" if made else "") + f", {len(names) - len(made)} kept")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from .acl import Role, acl_file
    from .passwords import write_private

    # The admin always: a file without the default user leaves it open.
    roles = list(dict.fromkeys([*_roles(args), Role.ADMIN]))
    text = acl_file(_passwords(args, roles), _keys(args), rq_prefix=args.rq_prefix)
    if args.out:
        write_private(Path(args.out), text)
        print(f"wrote {args.out}: {len(roles)} user(s)")
    else:
        print(text, end="")
    return 0


def apply_users(r: Any, passwords: dict[Any, str], keys: Any, *, rq_prefix: str) -> list[str]:
    """``ACL SETUSER`` every role of ``passwords``, each from scratch (the
    same result however often it runs), the admin (``default``) last: the
    connection ``r`` may be that user, still without a password. Returns
    the user names set."""
    from .acl import Role, setuser_args

    done = []
    for role in sorted(passwords, key=lambda role: role is Role.ADMIN):
        args = setuser_args(role, keys, passwords[role], rq_prefix=rq_prefix)
        r.execute_command("ACL", "SETUSER", *args)
        done.append(args[0])
    return done


def save_users(r: Any) -> str:
    """Make the server's users survive a restart: ``ACL SAVE`` when it keeps
    them in an ACL file, else ``CONFIG REWRITE`` (users in redis.conf).
    Returns which."""
    reply = r.config_get("aclfile")
    if reply.get("aclfile") or reply.get(b"aclfile"):
        r.execute_command("ACL", "SAVE")
        return "ACL SAVE"
    r.config_rewrite()
    return "CONFIG REWRITE"


def _cmd_apply(args: argparse.Namespace) -> int:
    import redis

    from .acl import Role, user_name, with_credentials
    from .exceptions import ConfigError

    roles = _roles(args)
    passwords = _passwords(args, roles)
    keys = _keys(args)
    url = args.redis_url or os.environ.get("PRICEPIPE_REDIS_URL")
    if not url:
        raise ConfigError("redis-acl apply needs --redis-url (an admin connection)")
    r = redis.Redis.from_url(url, socket_timeout=10)
    try:
        done = apply_users(r, passwords, keys, rq_prefix=args.rq_prefix)
    finally:
        r.close()
    # Saved over a new connection, as the admin with its (maybe new) password.
    admin = passwords.get(Role.ADMIN)
    if admin is None:
        print(f"set {', '.join(done)} (not saved: the admin role was not among them)")
        return 0
    r = redis.Redis.from_url(with_credentials(url, user_name(Role.ADMIN, keys), admin),
                             socket_timeout=10)
    try:
        how = save_users(r)
    finally:
        r.close()
    print(f"set {', '.join(done)}; saved with {how}")
    return 0


def _cmd_url(args: argparse.Namespace) -> int:
    from .acl import parse_roles, user_name, with_credentials

    (role,) = parse_roles([args.role])
    password = _passwords(args, [role])[role]
    print(with_credentials(args.base, user_name(role, _keys(args)), password))
    return 0


def register(sub: Any) -> None:
    from .acl import RQ_PREFIX

    p = sub.add_parser("redis-acl", help="Redis users per role: passwords, ACL file, apply")
    acl = p.add_subparsers(dest="acl_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser, *, roles: bool = True) -> None:
        if roles:
            q.add_argument("--roles", help="comma-separated roles (default: every role)")
        q.add_argument("--prefix", help="key prefix (env PRICEPIPE_REDIS_PREFIX)")
        q.add_argument("--passwords-from", required=True, metavar="DIR|env",
                       help=PASSWORDS_HELP)

    q = acl.add_parser("passwords", help="generate missing password files (0600), keep others")
    q.add_argument("directory")
    q.add_argument("--roles", help="comma-separated roles (default: every role)")
    q.set_defaults(func=_cmd_passwords)

    q = acl.add_parser("render", help="print (or --out) the ACL file of every role")
    common(q)
    q.add_argument("--out", help="write to this file (mode 0600) instead of stdout")
    q.add_argument("--rq-prefix", default=RQ_PREFIX,
                   help="rq's key prefix (rq's RQ_KEY_PREFIX; default rq)")
    q.set_defaults(func=_cmd_render)

    q = acl.add_parser("apply", help="ACL SETUSER every role on a running Redis, then save")
    common(q)
    q.add_argument("--redis-url", help="an admin connection (env PRICEPIPE_REDIS_URL)")
    q.add_argument("--rq-prefix", default=RQ_PREFIX,
                   help="rq's key prefix (rq's RQ_KEY_PREFIX; default rq)")
    q.set_defaults(func=_cmd_apply)

    q = acl.add_parser("url", help="print the URL of ROLE (its password included)")
    q.add_argument("role")
    q.add_argument("--base", required=True, help="the server's URL, e.g. redis://127.0.0.1:6379/0")
    common(q, roles=False)
    q.set_defaults(func=_cmd_url)
