"""The access matrix: what each role's credentials can and cannot do, on
real servers (issue 16, points 1, 4 and 9).

* Redis: every role's ACL user (:mod:`pricepipe.acl`) against one command
  list (``ACL DRYRUN``: the server's own verdict, nothing executed), then
  the calls each role really makes and the ones it must never make, run for
  real; a restart keeps what the scripts wrote (the admin is the ``default``
  user for that reason); the ``redis-acl`` commands render and apply the
  users.
* Every role running end to end with only its own user (publisher, persist
  worker, websocket server, API with its rate limiter, strategy readers, a
  jobs worker), and Redis's ``ACL LOG`` empty afterwards: nothing any of
  them did was refused.
* PostgreSQL: connections need the password; the API's read-only login
  reads and cannot write, create or grant.
* ``pricepipe up``: each child connects as its own user, and the files
  holding passwords are readable by their owner only.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import orjson
import psycopg2
import psycopg2.errors
import pytest
import redis
from websockets.sync.client import connect

from pricepipe import passwords, sources, streams
from pricepipe.acl import (
    ADMIN_USER,
    FORBIDDEN,
    Patterns,
    Role,
    acl_file,
    grant,
    password_hash,
    role_urls,
    user_name,
    with_credentials,
)
from pricepipe.config import RedisSettings, mask_url
from pricepipe.embedded import PostgresServer, RedisServer, free_port
from pricepipe.events import Trade
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.subscriber.ws import scripts
from pricepipe.supervisor import ensure_reader_login
from tests.helpers import slow_stage, wait_http, wait_until

pytestmark = pytest.mark.timeout(240)

SERVICE_ROLES = [role for role in Role if role is not Role.ADMIN]
TS_US = 1_767_323_045_000_000


def trades(symbol: str, n: int) -> list[Trade]:
    now_us = time.time_ns() // 1000
    return [Trade(symbol, now_us - 1_000_000 + i, 100.0 + i, 1.0, "test") for i in range(n)]


# --- the rules themselves (pure) ---------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["pp", "other-deploy"])
def test_patterns_cover_exactly_the_keys_of_their_kind(prefix: str) -> None:
    keys = Keys(prefix, 16)
    p = Patterns.of(keys)
    for symbol in ("AAPL", "BTC-USD", "X.Y"):
        assert fnmatch.fnmatchcase(keys.trades(symbol), p.trades)
        assert fnmatch.fnmatchcase(keys.quotes(symbol), p.quotes)
        assert fnmatch.fnmatchcase(keys.bars(symbol), p.bars)
        assert fnmatch.fnmatchcase(keys.bar_state(symbol), p.bar_state)
        assert not fnmatch.fnmatchcase(keys.trades(symbol), p.quotes)
        assert not fnmatch.fnmatchcase(Keys("else", 16).trades(symbol), p.trades)
    for shard in keys.all_shards():
        assert fnmatch.fnmatchcase(keys.dead_letters(shard), p.dead_letters)
        assert fnmatch.fnmatchcase(keys.group_gaps(shard), p.group_gaps)
        assert not fnmatch.fnmatchcase(keys.dead_letters(shard), p.trades)
    assert fnmatch.fnmatchcase(f"{keys.rate_limits()}:LIMITER/x/1/minute", p.rate_limits)


def test_only_the_admin_may_run_anything_dangerous() -> None:
    keys = Keys()
    admin = grant(Role.ADMIN, keys).rules()
    assert "+@all" in admin and "~*" in admin
    for role in SERVICE_ROLES:
        rules = grant(role, keys).rules()
        assert rules[:2] == ("resetchannels", "-@all"), role
        assert "+@all" not in rules and "~*" not in rules and "&*" not in rules, role
        # -@dangerous comes after every category a role is given.
        categories = [i for i, rule in enumerate(rules) if rule.startswith("+@")]
        assert max(categories) < rules.index("-@dangerous"), role
        assert not {f"+{c}" for c in FORBIDDEN} & set(rules), role


def test_the_acl_file_holds_hashes_and_needs_the_admin() -> None:
    secret = {role: passwords.generate() for role in Role}
    text = acl_file(secret, Keys())
    lines = text.splitlines()
    assert [line.split()[1] for line in lines] == [user_name(r, Keys()) for r in Role]
    assert user_name(Role.ADMIN, Keys()) == ADMIN_USER == "default"
    for password in secret.values():
        assert password not in text and f"#{password_hash(password)}" in text
    with pytest.raises(ValueError, match="admin"):
        acl_file({Role.PUBLISHER: "x" * 20}, Keys())


def test_credentials_in_urls_survive_any_character() -> None:
    odd = "p@ss:w/rd?#%&="
    url = with_credentials("rediss://old:gone@h:6380/0?ssl_ca_certs=/ca.pem", "pp-ws", odd)
    kwargs = redis.connection.parse_url(url)
    assert (kwargs["username"], kwargs["password"], kwargs["host"], kwargs["port"]) == (
        "pp-ws", odd, "h", 6380)
    assert kwargs["ssl_ca_certs"] == "/ca.pem" and url.startswith("rediss://")


def test_role_urls_never_print_their_passwords() -> None:
    secret = {role: passwords.generate() for role in Role}
    for role, url in role_urls("rediss://127.0.0.1:6380/0?ssl_ca_certs=/ca.pem", secret,
                               Keys()).items():
        shown = [str(mask_url(url)), repr(RedisSettings(url=url))]
        assert all(secret[role] not in text and "****" in text for text in shown), shown
        assert f"//{user_name(role, Keys())}:****@127.0.0.1:6380/0?ssl_ca_certs=" in shown[0]
    assert mask_url("postgresql://h/db?user=a&password=s3cr3t&x=1") == (
        "postgresql://h/db?user=a&password=****&x=1")


def test_password_files_are_private_and_never_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "pw"
    first = passwords.ensure(directory, ["a", "b"])
    again = passwords.ensure(directory, ["a", "b", "c"])
    assert {k: again[k] for k in first} == first and again["c"] not in first.values()
    assert passwords.read(directory, ["a", "b", "c"]) == again
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in "abc":
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    with pytest.raises(Exception, match="no password for"):
        passwords.read(directory, ["missing"])


# --- Redis: the matrix, as the server judges it -------------------------------------------------


def _commands(keys: Keys) -> dict[str, tuple[str, ...]]:
    t, b = keys.trades("AAPL"), keys.bars("AAPL")
    return {
        "append script": ("EVALSHA", streams.APPEND_SHA, "1", t, "t", "x"),
        "snapshot script": ("EVALSHA_RO", scripts.LATEST_SHA, "1", t),
        "resume script": ("EVALSHA_RO", scripts.RESUME_SHA, "1", t, "0-0", "64"),
        "load script": ("SCRIPT", "LOAD", scripts.LATEST_SCRIPT),
        "xadd trades": ("XADD", t, "*", "t", "x"),
        "xadd bars": ("XADD", b, "*", "b", "x"),
        "create group": ("XGROUP", "CREATE", t, "g", "0", "MKSTREAM"),
        "destroy group": ("XGROUP", "DESTROY", t, PERSIST_GROUP),
        "set group id": ("XGROUP", "SETID", t, PERSIST_GROUP, "0"),
        "xread trades": ("XREAD", "STREAMS", t, "0"),
        "xrevrange bars": ("XREVRANGE", b, "+", "-", "COUNT", "1"),
        "xreadgroup": ("XREADGROUP", "GROUP", PERSIST_GROUP, "c", "STREAMS", t, ">"),
        "xack": ("XACK", t, PERSIST_GROUP, "1-0"),
        "xtrim": ("XTRIM", t, "MINID", "0"),
        "read dead letters": ("XRANGE", keys.dead_letters(0), "-", "+"),
        "write dead letters": ("XADD", keys.dead_letters(0), "*", "d", "x"),
        "read trimmed": ("HGET", keys.trimmed(0), t),
        "write trimmed": ("HSET", keys.trimmed(0), t, "1-0"),
        "take group gaps": ("HDEL", keys.group_gaps(0), f"{t}|g"),
        "register symbol": ("SADD", keys.symbols(0), "AAPL"),
        "read registry": ("SMEMBERS", keys.symbols(0)),
        "claim source": ("HSET", keys.sources(), "AAPL", "gbm"),
        "write feed status": ("XADD", keys.feed_status(), "*", "s", "{}"),
        "read feed status": ("XRANGE", keys.feed_status(), "-", "+"),
        "bar state": ("HSET", keys.bar_state("AAPL"), "1", "1"),
        "ws heartbeat": ("SET", keys.heartbeat("ws", "w1"), "{}", "EX", "10"),
        "persist heartbeat": ("SET", keys.heartbeat("persist", "p1"), "{}", "EX", "10"),
        "rate limit": ("SET", f"{keys.rate_limits()}:LIMITER/x", "1", "PX", "1000"),
        "rq queue": ("LPUSH", "rq:queue:pp-maintenance", "job"),
        "rq channel": ("PUBLISH", "rq:pubsub:worker", "{}"),
        "other channel": ("PUBLISH", "elsewhere", "x"),
        "other key": ("SET", "not-pricepipe", "x"),
        "scan": ("SCAN", "0"),
        "eval": ("EVAL", "return 1", "0"),
        "info": ("INFO", "server"),
        "ping": ("PING",),
    }


#: What each role may do of :func:`_commands`; every other line is refused.
ALLOWED: dict[Role, set[str]] = {
    Role.PUBLISHER: {"append script", "load script", "xadd trades", "create group",
                     "register symbol", "read registry", "claim source", "write feed status",
                     "info", "ping"},
    Role.PERSIST: {"append script", "load script", "xadd trades", "xadd bars", "create group",
                   "xread trades", "xrevrange bars", "xreadgroup", "xack", "xtrim",
                   "read dead letters", "write dead letters", "read trimmed", "write trimmed",
                   "take group gaps", "read registry", "bar state", "persist heartbeat",
                   "info", "ping"},
    Role.WS: {"snapshot script", "resume script", "load script", "xread trades", "xrevrange bars",
              "read trimmed", "read registry", "read feed status", "ws heartbeat", "info",
              "ping"},
    Role.READER: {"xread trades", "xrevrange bars", "read trimmed", "read registry",
                  "read feed status", "info", "ping"},
    Role.GROUP_READER: {"append script", "load script", "create group", "xread trades",
                        "xrevrange bars",
                        "xreadgroup", "xack", "read trimmed", "take group gaps",
                        "read registry", "read feed status", "info", "ping"},
    Role.API: {"load script", "xread trades", "xrevrange bars", "read trimmed",
               "read dead letters", "read registry", "read feed status", "rate limit", "scan",
               "info", "ping"},
    Role.JOBS: {"load script", "claim source", "read registry", "rq queue", "rq channel",
                "eval", "info", "ping"},
}


def _dryrun(admin: Any, user: str, command: tuple[str, ...]) -> str:
    reply = admin.execute_command("ACL", "DRYRUN", user, *command)
    return reply.decode() if isinstance(reply, bytes) else str(reply)


@pytest.mark.parametrize("role", SERVICE_ROLES, ids=str)
def test_each_role_may_run_what_it_needs_and_nothing_else(
        role: Role, r: Any, keys: Keys) -> None:
    user = user_name(role, keys)
    verdicts = {name: _dryrun(r, user, command) for name, command in _commands(keys).items()}
    allowed = {name for name, verdict in verdicts.items() if verdict == "OK"}
    # "append script" for a group reader: EVALSHA on a stream it may change
    # (its groups) is allowed, but the script's XADD is refused when it runs
    # (test_readers_read_and_write_nothing_but_their_own).
    assert allowed == ALLOWED[role], {n: v for n, v in verdicts.items() if n in allowed
                                      ^ ALLOWED[role]}
    for command in ("FLUSHALL", "FLUSHDB", "KEYS *", "CONFIG GET maxmemory", "CONFIG SET save x",
                    "DEBUG SLEEP 0", "SHUTDOWN NOSAVE", "ACL SETUSER x on", "ACL LIST",
                    "MONITOR", "REPLICAOF NO ONE", "SAVE", "BGREWRITEAOF", "CLIENT KILL ID 1",
                    "CLIENT LIST", "SCRIPT FLUSH", "FUNCTION FLUSH", "SWAPDB 0 1",
                    "MODULE LIST", "SORT x"):
        verdict = _dryrun(r, user, tuple(command.split()))
        assert "no permissions" in verdict, (role, command, verdict)


def test_nothing_goes_unauthenticated(redis_server: RedisServer,
                                      redis_role_urls: dict[Role, str]) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=redis_server.port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    for role, url in redis_role_urls.items():
        wrong = redis.Redis.from_url(with_credentials(url, user_name(role, Keys()), "wrong"))
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
        wrong.close()
        client = redis.Redis.from_url(url)
        assert client.ping() is True, role
        client.close()


# --- Redis: the real calls of each role ---------------------------------------------------------


@pytest.fixture
def as_role(redis_role_urls: dict[Role, str]) -> Iterator[Callable[[Role], Any]]:
    clients: list[Any] = []  # redis-py's sync/async union types: Any, as elsewhere

    def client(role: Role) -> Any:
        clients.append(redis.Redis.from_url(redis_role_urls[role]))
        return clients[-1]

    yield client
    for c in clients:
        c.close()


def test_the_publisher_appends_through_its_script_and_reads_no_dead_letter(
        as_role: Callable[[Role], Any], r: Any, keys: Keys) -> None:
    r.script_flush()  # the publisher loads the script itself (NOSCRIPT, then SCRIPT LOAD)
    pub = as_role(Role.PUBLISHER)
    streams.register_symbols(pub, keys, ["AAPL"])
    ids = streams.append_events(pub, keys, trades("AAPL", 3))
    assert [eid for eid, _ in r.xrange(keys.trades("AAPL"))] == ids
    assert sources.claim(pub, keys, ["AAPL"], "test") == {}
    r.xadd(keys.dead_letters(keys.shard("AAPL")), {"d": "secret"})
    for refused in (lambda: pub.xrange(keys.dead_letters(keys.shard("AAPL"))),
                    lambda: pub.xreadgroup(PERSIST_GROUP, "c", {keys.trades("AAPL"): ">"}),
                    lambda: pub.xtrim(keys.trades("AAPL"), minid="0"),
                    lambda: pub.xrange(keys.bars("AAPL")),
                    lambda: pub.flushall(),
                    lambda: pub.config_get("*"),
                    lambda: pub.keys("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    assert r.xlen(keys.trades("AAPL")) == 3


def test_the_persist_worker_reads_acks_trims_and_dead_letters(
        as_role: Callable[[Role], Any], r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["AAPL"])
    streams.append_events(r, keys, trades("AAPL", 4))
    worker = as_role(Role.PERSIST)
    stream = keys.trades("AAPL")
    (_, entries), = worker.xreadgroup(PERSIST_GROUP, "w1", {stream: ">"})
    assert worker.xack(stream, PERSIST_GROUP, *[eid for eid, _ in entries]) == 4
    # The window ends now, in milliseconds: entries of this very millisecond stay.
    time.sleep(0.005)
    assert streams.trim_stream(worker, keys, stream, window_ms=0, max_age_ms=None,
                               persisted=True) == 4
    assert streams.trimmed_since(worker, keys, stream, "0-0") is not None
    worker.xadd(keys.dead_letters(keys.shard("AAPL")), {"d": "x"})
    worker.set(keys.heartbeat("persist", "w1"), "{}", ex=10)
    for refused in (lambda: worker.hset(keys.sources(), "AAPL", "evil"),
                    lambda: worker.lpush("rq:queue:pp-bulk", "job"),
                    lambda: worker.set(keys.heartbeat("ws", "w1"), "{}"),
                    lambda: worker.flushall()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()


def test_readers_read_and_write_nothing_but_their_own(
        as_role: Callable[[Role], Any], r: Any, keys: Keys) -> None:
    from pricepipe.subscriber.client import Delivery, GroupReader, StreamReader

    streams.register_symbols(r, keys, ["AAPL"])
    ids = [eid.decode() for eid in streams.append_events(r, keys, trades("AAPL", 3))]
    ws, reader, group = as_role(Role.WS), as_role(Role.READER), as_role(Role.GROUP_READER)
    assert [e.decode() for e, _ in ws.xrange(keys.trades("AAPL"))] == ids
    ws.set(keys.heartbeat("ws", "w1"), "{}", ex=10)
    with StreamReader(reader, keys, ["AAPL"], channels=["trades"], start="0") as plain:
        got = [plain.get(timeout_s=30) for _ in ids]
    assert [d.entry_id for d in got if isinstance(d, Delivery)] == ids
    with GroupReader(group, keys, ["AAPL"], channels=["trades"], group="strategy",
                     consumer="c1", start="0") as grouped:
        got = [grouped.get(timeout_s=30) for _ in ids]
        for delivery in got:
            assert isinstance(delivery, Delivery), delivery
            grouped.ack(delivery)
    assert [d.entry_id for d in got if isinstance(d, Delivery)] == ids
    for client in (ws, reader, group):
        for refused in (lambda c=client: c.xadd(keys.trades("AAPL"), {"t": "x"}),
                        lambda c=client: c.xrange(keys.dead_letters(keys.shard("AAPL"))),
                        lambda c=client: c.xtrim(keys.trades("AAPL"), minid="0"),
                        lambda c=client: c.set(keys.heartbeat("persist", "x"), "{}"),
                        lambda c=client: c.flushall()):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        # Refused as a whole (ws, reader: EVALSHA) or at its XADD (a group
        # reader may run scripts on its streams): nothing appended either way.
        with pytest.raises(redis.ResponseError, match="no permissions|can't run this command"):
            streams.append_events(client, keys, trades("AAPL", 1))
    with pytest.raises(redis.exceptions.NoPermissionError):
        group.xgroup_destroy(keys.trades("AAPL"), PERSIST_GROUP)
    assert r.xlen(keys.trades("AAPL")) == 3


def test_the_api_and_jobs_keep_to_their_keys(
        as_role: Callable[[Role], Any], r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["AAPL"])
    streams.append_events(r, keys, trades("AAPL", 2))
    api, jobs = as_role(Role.API), as_role(Role.JOBS)
    assert len(api.xrevrange(keys.trades("AAPL"), count=1)) == 1
    api.set(f"{keys.rate_limits()}:LIMITER/a", 1, px=1000)
    jobs.lpush("rq:queue:pp-maintenance", "job")
    assert jobs.publish("rq:pubsub:w", "{}") == 0
    for client in (api, jobs):
        for refused in (lambda c=client: c.xadd(keys.trades("AAPL"), {"t": "x"}),
                        lambda c=client: c.delete(keys.trades("AAPL")),
                        lambda c=client: c.set(keys.heartbeat("ws", "x"), "{}"),
                        lambda c=client: c.flushall()):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
    for forbidden in (lambda: jobs.xrange(keys.trades("AAPL")), lambda: jobs.scan(0)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.lpush("rq:queue:pp-maintenance", "job")
    assert r.xlen(keys.trades("AAPL")) == 2


def test_what_the_scripts_wrote_survives_a_restart(
        make_redis_server: Callable[..., RedisServer], redis_passwords: dict[Role, str],
        keys: Keys) -> None:
    # Script writes are logged in the AOF as MULTI/EXEC, which Redis (< 8)
    # replays checking the default user's rights: see pricepipe.acl.
    server = make_redis_server(acl=acl_file(redis_passwords, keys),
                               extra_args=("--appendfsync", "always"))
    urls = role_urls(server.url, redis_passwords, keys)
    pub = redis.Redis.from_url(urls[Role.PUBLISHER])
    streams.register_symbols(pub, keys, ["AAPL"])
    ids = streams.append_events(pub, keys, trades("AAPL", 5))
    pub.close()
    server.restart()
    admin: Any = redis.Redis.from_url(server.url)
    try:
        assert [eid for eid, _ in admin.xrange(keys.trades("AAPL"))] == ids
        assert "NOPERM" not in (server.data_dir / "redis.log").read_text()
    finally:
        admin.close()


# --- the redis-acl commands ---------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pricepipe", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_render_gives_a_file_redis_loads(
        make_redis_server: Callable[..., RedisServer], pipeline_env: dict[str, str],
        tmp_path: Path, keys: Keys) -> None:
    secrets_dir = tmp_path / "redis-passwords"
    done = _cli(["redis-acl", "passwords", str(secrets_dir)], pipeline_env)
    assert done.returncode == 0 and "8 password(s) generated" in done.stdout, done.stderr
    out = tmp_path / "users.acl"
    done = _cli(["redis-acl", "render", "--passwords-from", str(secrets_dir),
                 "--out", str(out)], pipeline_env)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pw = passwords.read(secrets_dir, [role.value for role in Role])
    assert not any(password in out.read_text() for password in pw.values())
    server = make_redis_server(auth=(ADMIN_USER, pw["admin"]), acl=out.read_text())
    base = f"redis://127.0.0.1:{server.port}/0"
    url = _cli(["redis-acl", "url", "ws", "--passwords-from", str(secrets_dir),
                "--base", base], pipeline_env).stdout.strip()
    ws = redis.Redis.from_url(url)
    try:
        assert ws.xrange(keys.trades("AAPL")) == []
        with pytest.raises(redis.exceptions.NoPermissionError):
            ws.xadd(keys.trades("AAPL"), {"t": "x"})
    finally:
        ws.close()


def test_apply_turns_an_open_redis_into_one_user_per_role(
        make_redis_server: Callable[..., RedisServer], pipeline_env: dict[str, str],
        tmp_path: Path, keys: Keys) -> None:
    # As install.sh finds a stock Redis: no password, an (empty) ACL file configured.
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("")
    server = make_redis_server(auth=None, extra_args=("--aclfile", str(aclfile)))
    open_url = f"redis://127.0.0.1:{server.port}/0"
    env = {**pipeline_env, **{passwords.env_name(role.value): passwords.generate()
                              for role in Role}}
    for _ in range(2):  # idempotent: the second run finds the users and sets them again
        done = _cli(["redis-acl", "apply", "--passwords-from", "env", "--redis-url", open_url],
                    env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "saved with ACL SAVE" in done.stdout
        assert not any(env[passwords.env_name(r.value)] in done.stdout + done.stderr
                       for r in Role)
        open_url = with_credentials(open_url, ADMIN_USER, env[passwords.env_name("admin")])
    saved = aclfile.read_text()
    assert [line.split()[1] for line in saved.splitlines()] == sorted(
        user_name(role, keys) for role in Role)
    assert not any(env[passwords.env_name(r.value)] in saved for r in Role)
    admin = redis.Redis.from_url(open_url)
    admin.execute_command("ACL", "LOAD")  # what a restart reads: the saved file
    admin.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port).ping()
    urls = role_urls(f"redis://127.0.0.1:{server.port}/0",
                     {r: env[passwords.env_name(r.value)] for r in Role}, keys)
    pub = redis.Redis.from_url(urls[Role.PUBLISHER])
    try:
        streams.register_symbols(pub, keys, ["AAPL"])
        assert len(streams.append_events(pub, keys, trades("AAPL", 2))) == 2
        with pytest.raises(redis.exceptions.NoPermissionError):
            pub.flushall()
    finally:
        pub.close()


# --- every role end to end, each with only its own user ------------------------------------------


def _finish(proc: Any, timeout_s: float = 120) -> str:
    code = proc.wait(timeout_s)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert code == 0, out
    return out


def _acl_log(r: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = r.acl_log()
    return entries


@pytest.fixture
def api_login(db: Any, database_url: str) -> str:
    """A read-only login in pricepipe_reader (as ``pricepipe up`` makes the
    API's), with its password; its URL."""
    login, password = "pp_access_api", passwords.generate()
    ensure_reader_login(db, login, password)
    return with_credentials(database_url, login, password)


def test_every_role_runs_with_only_its_own_user(
        spawn: Any, pipeline_env: dict[str, str], r: Any, keys: Keys, db: Any,
        redis_role_urls: dict[Role, str], api_login: str) -> None:
    from pricepipe.subscriber.client import Delivery, GroupReader, StreamReader

    r.acl_log_reset()
    symbols = ["AAPL", "MSFT"]

    def env_of(role: Role, **extra: str) -> dict[str, str]:
        return {**pipeline_env, "PRICEPIPE_REDIS_URL": redis_role_urls[role], **extra}

    no_db = {"PRICEPIPE_DATABASE_URL": ""}
    ws_port, api_port = free_port(), free_port()
    ws_proc = spawn(["ws", "--port", str(ws_port)], env=env_of(Role.WS, **no_db))
    api_proc = spawn(["api", "--port", str(api_port)], env=env_of(
        Role.API, PRICEPIPE_DATABASE_URL="", PRICEPIPE_DATABASE_READ_URL=api_login,
        PRICEPIPE_API_RATE_LIMIT="1000/minute"))
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws_proc)
    wait_http(f"http://127.0.0.1:{api_port}/healthz", api_proc)

    _finish(spawn(["publish", "--source", "gbm", "--symbols", ",".join(symbols),
                   "--count", "300", "--seed", "3"], env=env_of(Role.PUBLISHER, **no_db)))
    received: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def listen() -> None:
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=10) as ws:
            ws.send(orjson.dumps({"op": "subscribe", "channels": ["trades", "quotes"],
                                  "symbols": symbols, "snapshot": True}).decode())
            deadline = time.monotonic() + 60
            while not received and time.monotonic() < deadline:
                message = orjson.loads(ws.recv(timeout=30))
                if message.get("type") == "subscribed":
                    subscribed.set()
                elif message.get("type") == "snapshot" and message.get("trades"):
                    received.extend(message["trades"])

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    _finish(spawn(["persist", "--burst", "--name", "access"], env=env_of(Role.PERSIST)))
    listener.join(90)
    assert subscribed.is_set() and received, "the websocket server sent no trade"
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM trades")
        (persisted_trades,) = cur.fetchone()
    assert persisted_trades > 0
    assert any(r.xlen(keys.bars(s)) for s in symbols)  # the worker's bars script ran

    api = f"http://127.0.0.1:{api_port}"
    response = httpx.get(f"{api}/v1/trades/AAPL", params={"start": int(time.time()) - 3600},
                         timeout=10)
    assert response.status_code == 200 and response.json()["trades"], response.text
    response = httpx.get(f"{api}/v1/quotes", params={"symbols": "AAPL"}, timeout=10)
    assert response.status_code == 200, response.text
    # /metrics reads the pipeline's state from Redis as the api user too.
    response = httpx.get(f"{api}/metrics", timeout=10)
    assert response.status_code == 200
    assert "pricepipe_pipeline_redis_up 1.0" in response.text, response.text[-3000:]

    for role, reader in (
            (Role.READER, lambda c: StreamReader(c, keys, symbols, start="0")),
            (Role.GROUP_READER, lambda c: GroupReader(c, keys, symbols, group="strategy",
                                                      consumer="c1", start="0"))):
        client = redis.Redis.from_url(redis_role_urls[role])
        try:
            with reader(client) as strategy:
                got = [strategy.get(timeout_s=30) for _ in range(20)]
                for delivery in got:
                    assert isinstance(delivery, Delivery), (role, delivery)
                    strategy.ack(delivery)
        finally:
            client.close()

    jobs_env = env_of(Role.JOBS)
    _finish(spawn(["jobs", "enqueue", "partitions"], env=jobs_env))
    _finish(spawn(["jobs", "worker", "--burst"], env=jobs_env))

    assert r.zcard(f"rq:finished:{keys.rq_queue('maintenance')}") == 1  # the job ran, and passed
    # Each role wrote what it writes: rate-limit counters, heartbeats.
    assert list(r.scan_iter(match=f"{keys.rate_limits()}*"))
    assert list(r.scan_iter(match=keys.heartbeat_pattern("ws")))
    assert list(r.scan_iter(match=keys.heartbeat_pattern("persist")))
    refused = _acl_log(r)
    assert refused == [], refused  # not one command of any role was refused
    clients = r.client_list()
    assert {c["user"] for c in clients if c.get("user")} >= {user_name(Role.WS, keys),
                                                            user_name(Role.API, keys)}


# --- PostgreSQL -------------------------------------------------------------------------------


def test_postgres_wants_the_password(pg_server: PostgresServer) -> None:
    assert pg_server.password and f":{pg_server.password}@" in pg_server.url
    for url in (pg_server.url_for("postgres", "postgres", "wrong"),
                re.sub(r":[^:@/]+@", "@", pg_server.url)):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(url).close()
    psycopg2.connect(pg_server.url).close()


def test_a_trusting_cluster_gets_its_password() -> None:
    # A data directory of an older `pricepipe up`, made with trust authentication.
    directory = Path(tempfile.mkdtemp(prefix="pricepipe-pg-trust-"))
    directory.chmod(0o755)  # PostgreSQL may run as another user when we are root
    try:
        old = PostgresServer(directory / "pg", database="x", fsync=False)
        old.start()
        old.stop()
        server = PostgresServer(directory / "pg", port=old.port, database="x", fsync=False,
                                password=passwords.generate())
        server.start()
        try:
            psycopg2.connect(server.url).close()
            with pytest.raises(psycopg2.OperationalError, match="password"):
                psycopg2.connect(old.url).close()
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_api_login_reads_and_can_change_nothing(api_login: str, db: Any) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO instruments (symbol) VALUES ('RO')")
    conn = psycopg2.connect(api_login)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT symbol FROM instruments")
            assert cur.fetchall() == [("RO",)]
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("INSERT INTO instruments (symbol) VALUES ('X')")
            cur.execute("SET default_transaction_read_only = off")  # only the grants are left
            for statement in ("INSERT INTO instruments (symbol) VALUES ('X')",
                              "DELETE FROM trades", "UPDATE bars_1m SET close = 0",
                              "TRUNCATE quotes", "CREATE TABLE sneaky (x int)",
                              "CREATE ROLE sneaky", "ALTER ROLE pp_access_api CREATEROLE",
                              "SELECT ensure_partitions('trades', '2099-01-01', '2099-01-01')"):
                with pytest.raises((psycopg2.errors.InsufficientPrivilege,
                                    psycopg2.errors.ReadOnlySqlTransaction)):
                    cur.execute(statement)
    finally:
        conn.close()


# --- pricepipe up ---------------------------------------------------------------------------


@pytest.fixture
def up_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pricepipe-up-acl-"))
    path.chmod(0o755)  # embedded PostgreSQL may run as an unprivileged user
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@slow_stage  # initdb and the whole pipeline, 13-16 s
def test_up_runs_each_child_as_its_own_user(up_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICEPIPE_")}
    env.update({"PRICEPIPE_DATA_DIR": str(up_dir), "PYTHONUNBUFFERED": "1"})
    api_port, ws_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pricepipe", "up", "--symbols", "2", "--rate", "20",
         "--api-port", str(api_port), "--ws-port", str(ws_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{api_port}/healthz", proc, timeout_s=150)
        env_file = up_dir / "embedded.env"
        assert _mode(env_file) == 0o600 and _mode(up_dir / "secrets") == 0o700
        for path in (up_dir / "secrets").rglob("*"):
            assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
        urls = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        redis_url, database_url = urls["PRICEPIPE_REDIS_URL"], urls["PRICEPIPE_DATABASE_URL"]
        assert urlsplit(redis_url).password and urlsplit(database_url).password
        port = urlsplit(redis_url).port
        assert port is not None
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).ping()
        admin: Any = redis.Redis.from_url(redis_url)
        try:
            wanted = {user_name(role, Keys()) for role in
                      (Role.PUBLISHER, Role.PERSIST, Role.WS, Role.API)}
            wait_until(lambda: {c.get("user") for c in admin.client_list()} >= wanted,
                       timeout_s=60, proc=proc)
            assert admin.acl_log() == []
        finally:
            admin.close()
        # The API reads history through its read-only login (a pooled
        # connection stays open after the request).
        symbols = httpx.get(f"http://127.0.0.1:{api_port}/v1/symbols", timeout=10).json()
        symbol = symbols["symbols"][0]["symbol"]
        response = httpx.get(f"http://127.0.0.1:{api_port}/v1/trades/{symbol}",
                             params={"start": int(time.time()) - 600}, timeout=10)
        assert response.status_code == 200, response.text
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(re.sub(r":[^:@/]+@", "@", database_url)).close()
        conn = psycopg2.connect(database_url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT DISTINCT usename FROM pg_stat_activity "
                            "WHERE application_name LIKE 'pricepipe-api%%'")
                assert {row[0] for row in cur.fetchall()} == {"pricepipe_api"}
        finally:
            conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
    # The terminal shows where the passwords are, never one.
    secrets_text = " ".join(p.read_text().strip() for p in (up_dir / "secrets").rglob("*")
                            if p.is_file())
    assert secrets_text and not any(pw in out for pw in secrets_text.split()), out
    assert not env_file.exists()  # removed when up stops
