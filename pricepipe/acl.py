"""Redis ACL users, one per role: what each may run and touch. Pure.

Every process authenticates as its role's user (``redis://<user>:<password>@
host:port/0``), so a compromised websocket server cannot append to a stream,
a strategy cannot read the dead letters, and nothing but the admin user may
``FLUSHALL``, ``CONFIG``, ``KEYS``, ``DEBUG``, ``SHUTDOWN`` or ``ACL``.

The admin is Redis's ``default`` user, with a password: no connection goes
unauthenticated, and the ``default`` user keeps every right. It must: Redis
replays the ``MULTI``/``EXEC`` blocks of its AOF (every script's writes are
logged as one) as the ``default`` user and checks that user's rights at
``EXEC``, so with ``default`` disabled or restricted a restart silently drops
every event the append script wrote (redis/redis#14541, fixed in Redis 8;
Debian's 7.0 has it; tests/core/test_access.py restarts a server: they stay).

A role's rights are a :class:`Grant`: commands (subcommands spelled as ACL
spells them, ``xinfo|groups``), and key patterns derived from
:mod:`pricepipe.keys` (so they follow the deployment's prefix) in three
kinds, Redis 7's ``%R~`` (read only), ``%W~`` (write only) and ``~`` (both).
Redis decides from each command's key specifications which kind a key needs
(``XREADGROUP`` and ``XACK`` change the group, so a group reader needs ``~``
on the streams; ``SET`` needs ``%W~`` only; a script's declared keys need
``~``). Scripts run with their caller's rights: every command a script calls
is checked too, which is why a role that runs a script lists the commands
inside it (the append script: ``XADD``).

Roles (see docs/security.md for the table):

* ``publisher`` - the append script and ``XADD`` on trades and quotes
  streams, persist-group creation and the symbol registry, the source
  registry's claim script, writes of feed status; never the dead letters,
  bars, or any consumer-group read.
* ``persist`` - the persist workers: group reads, acks, claims, trims (the
  trim script), dead letters, the bars streams and their publish script,
  their own heartbeats.
* ``ws`` - the websocket server: reads streams, registries, trim records and
  feed status; writes only its heartbeat.
* ``reader`` - :class:`~pricepipe.subscriber.client.StreamReader` and
  ``pricepipe tail``: reads only.
* ``group-reader`` - a :class:`~pricepipe.subscriber.client.GroupReader`: a
  reader that also creates, reads and acknowledges its own consumer groups
  and takes its group gaps (the take script). Redis cannot scope a command
  to a group name: this user could acknowledge entries of the ``persist``
  group too, so give it only to strategies you trust with that.
* ``api`` - the HTTP API: reads of streams (latest quotes, coverage),
  registries, feed status and, for ``/metrics``, dead letters and the names
  of heartbeats (``SCAN``); reads and writes its rate-limit counters only.
* ``jobs`` - the rq worker and scheduler: rq's keys and channels (rq names
  them ``rq:...``; ``RQ_KEY_PREFIX``, read by rq >= 3 at import, changes
  that), the source registry (venue backfills claim their symbols) and,
  read only, the symbol registry (the metadata job refreshes every symbol).
* ``admin`` - the ``default`` user: ``status``, ``dlq``, ``jobs enqueue``,
  benchmarks, tests, ``pricepipe up``'s own loop: everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urlsplit, urlunsplit

from .keys import Keys

#: The prefix rq gives its keys and channels unless ``RQ_KEY_PREFIX`` says otherwise.
RQ_PREFIX = "rq"


class Role(StrEnum):
    """A Redis user of pricepipe; the user's name is :func:`user_name`."""

    PUBLISHER = "publisher"
    PERSIST = "persist"
    WS = "ws"
    READER = "reader"
    GROUP_READER = "group-reader"
    API = "api"
    JOBS = "jobs"
    ADMIN = "admin"


#: Connection handling every user needs, whatever the client: ``AUTH``,
#: ``HELLO``, ``PING``, ``SELECT``, ``CLIENT SETNAME|SETINFO|INFO|ID``,
#: ``COMMAND`` (cluster clients read it) ... (the ``@connection`` category
#: less what is ``@dangerous``: ``CLIENT KILL|LIST|PAUSE``), transactions,
#: the cluster topology a cluster client asks for, ``TIME``, and ``INFO``:
#: epochs are a server's run ID (:func:`pricepipe.streams.epoch_of`) and
#: backpressure reads ``INFO memory``. ``INFO`` is ``@dangerous`` only for
#: what it tells (versions, counts, paths), not for anything it changes.
BASE_COMMANDS = (
    "+@connection", "-@dangerous", "+info", "+time",
    "+multi", "+exec", "+discard", "+watch", "+unwatch",
    "+cluster|slots", "+cluster|shards", "+cluster|nodes", "+cluster|info", "+cluster|myid",
)

#: The few ``@dangerous`` commands no role but admin may run, named so that a
#: test can show each user is refused them (the category rules already are).
FORBIDDEN = ("flushall", "flushdb", "config", "keys", "debug", "shutdown", "acl", "monitor",
             "save", "bgsave", "bgrewriteaof", "replicaof", "slaveof", "swapdb", "migrate",
             "restore", "module", "sort", "client|kill", "client|list", "script|flush",
             "script|kill", "function")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one role may do. Patterns are Redis glob patterns."""

    commands: tuple[str, ...]
    #: ``~``: read and write.
    keys: tuple[str, ...] = ()
    #: ``%R~``: read only.
    read_keys: tuple[str, ...] = ()
    #: ``%W~``: write only.
    write_keys: tuple[str, ...] = ()
    #: ``&``: Pub/Sub channels.
    channels: tuple[str, ...] = ()

    def rules(self) -> tuple[str, ...]:
        """The ACL rules, in the order Redis applies them, after a ``reset``
        (which also clears every key and channel pattern)."""
        return (
            "resetchannels", "-@all", *self.commands,
            *(f"~{p}" for p in self.keys),
            *(f"%R~{p}" for p in self.read_keys),
            *(f"%W~{p}" for p in self.write_keys),
            *(f"&{c}" for c in self.channels),
        )


@dataclass(frozen=True, slots=True)
class Patterns:
    """The key patterns of one deployment, derived from :class:`Keys`."""

    trades: str
    quotes: str
    bars: str
    bar_state: str
    symbols: str
    trimmed: str
    group_gaps: str
    dead_letters: str
    feed_status: str
    feed_states: str
    sources: str
    rate_limits: str

    @classmethod
    def of(cls, keys: Keys) -> Patterns:
        # A real key of shard 0 and a placeholder symbol, generalised: so the
        # patterns can never drift from the names keys.py builds.
        one = Keys(keys.prefix, 1)
        tag = one.tag(0)

        def any_shard(key: str, symbol: str | None = None) -> str:
            head, found, tail = key.partition(f":{tag}:")
            assert found, key
            if symbol is not None:
                assert tail.endswith(symbol), key
                tail = tail[: -len(symbol)] + "*"
            return f"{head}:{{s*}}:{tail}"

        sample = "SYMBOL"
        return cls(
            trades=any_shard(one.trades(sample), sample),
            quotes=any_shard(one.quotes(sample), sample),
            bars=any_shard(one.bars(sample), sample),
            bar_state=any_shard(one.bar_state(sample), sample),
            symbols=any_shard(one.symbols(0)),
            trimmed=any_shard(one.trimmed(0)),
            group_gaps=any_shard(one.group_gaps(0)),
            dead_letters=any_shard(one.dead_letters(0)),
            feed_status=keys.feed_status(),
            feed_states=keys.feed_states(),
            sources=keys.sources(),
            # The limits library appends ":<window key>" to its prefix.
            rate_limits=f"{keys.rate_limits()}*",
        )

    @property
    def streams(self) -> tuple[str, str, str]:
        return (self.trades, self.quotes, self.bars)

    @property
    def feeds(self) -> tuple[str, str]:
        return (self.feed_status, self.feed_states)


#: Read commands of a stream reader (``StreamReader``, the websocket server).
_STREAM_READS = ("+xread", "+xrange", "+xrevrange", "+xlen", "+xinfo|stream",
                 "+hget", "+hmget", "+hgetall", "+smembers", "+sismember")
#: ``EVALSHA`` of our scripts, loading them after ``NOSCRIPT``. Not ``EVAL``:
#: nothing of ours sends a script's text to run.
_SCRIPTS = ("+evalsha", "+script|load", "+script|exists")
#: ``EVALSHA_RO`` of our read-only scripts (``EVALSHA`` declares its keys
#: written, which read-only keys refuse): the websocket server's snapshot
#: and resume reads (``pricepipe.subscriber.ws.scripts``).
_READ_SCRIPTS = ("+evalsha_ro", "+script|load")


def grant(role: Role, keys: Keys, *, rq_prefix: str = RQ_PREFIX) -> Grant:
    """The rights of ``role`` in the deployment laid out by ``keys``."""
    p = Patterns.of(keys)
    if role is Role.ADMIN:
        return Grant(commands=("+@all",), keys=("*",), channels=("*",))
    if role is Role.PUBLISHER:
        return Grant(
            commands=(*BASE_COMMANDS, *_SCRIPTS, "+xadd", "+xgroup|create", "+xrevrange",
                      "+sadd", "+smembers", "+hget", "+hset"),
            # The append script's keys; XREVRANGE finds where a retried batch stopped.
            keys=(p.trades, p.quotes, p.symbols, p.sources),
            write_keys=p.feeds,
        )
    if role is Role.PERSIST:
        return Grant(
            commands=(*BASE_COMMANDS, *_SCRIPTS, *_STREAM_READS,
                      "+xreadgroup", "+xack", "+xautoclaim", "+xclaim", "+xpending",
                      "+xinfo|groups", "+xinfo|consumers", "+xgroup|create",
                      "+xgroup|createconsumer", "+xgroup|delconsumer", "+xtrim", "+xadd",
                      "+hset", "+hdel", "+hkeys", "+hexists", "+pexpire", "+set", "+get"),
            keys=(*p.streams, p.bar_state, p.trimmed, p.group_gaps, p.dead_letters,
                  keys.heartbeat("persist", "*")),
            read_keys=(p.symbols,),
        )
    if role is Role.WS:
        return Grant(
            commands=(*BASE_COMMANDS, *_STREAM_READS, *_READ_SCRIPTS, "+set", "+get"),
            keys=(keys.heartbeat("ws", "*"),),
            read_keys=(*p.streams, p.trimmed, p.symbols, *p.feeds),
        )
    if role is Role.READER:
        return Grant(
            # The persist group's place: a fill of an epoch gap waits for it.
            commands=(*BASE_COMMANDS, *_STREAM_READS, "+xinfo|groups", "+xpending"),
            read_keys=(*p.streams, p.trimmed, p.symbols, *p.feeds),
        )
    if role is Role.GROUP_READER:
        return Grant(
            commands=(*BASE_COMMANDS, *_SCRIPTS, *_STREAM_READS,
                      "+xgroup|create", "+xgroup|createconsumer", "+xreadgroup", "+xack",
                      "+xclaim", "+xautoclaim", "+xpending", "+xinfo|groups",
                      "+xinfo|consumers", "+hdel"),
            keys=(*p.streams, p.group_gaps),
            read_keys=(p.trimmed, p.symbols, *p.feeds),
        )
    if role is Role.API:
        return Grant(
            commands=(*BASE_COMMANDS, *_SCRIPTS, *_STREAM_READS, "+xinfo|groups", "+xpending",
                      # the limits library's sliding-window scripts and calls
                      "+get", "+set", "+incrby", "+expire", "+pttl", "+ttl", "+exists",
                      "+rename", "+del",
                      # /metrics (pricepipe.pipelinemetrics) counts heartbeats by
                      # their names: SCAN has no key to check, so it shows every
                      # key's name (never a value)
                      "+scan"),
            keys=(p.rate_limits,),
            # dead letters: /metrics counts them (XINFO STREAM)
            read_keys=(*p.streams, p.trimmed, p.symbols, *p.feeds, p.dead_letters),
        )
    if role is Role.JOBS:
        # rq's command set changes between releases: categories, then every
        # dangerous command out again (FLUSHALL, KEYS, CONFIG ...), and the
        # few harmful ones that are not in @dangerous.
        return Grant(
            commands=("+@read", "+@write", "+@keyspace", "+@string", "+@list", "+@hash",
                      "+@set", "+@sortedset", "+@pubsub", "+eval", "+evalsha",
                      "+script|load", "+script|exists", *BASE_COMMANDS, "-@admin",
                      "-function", "-scan", "-randomkey"),
            keys=(f"{rq_prefix}:*", p.sources),
            # the metadata job refreshes every registered symbol
            read_keys=(p.symbols,),
            channels=(f"{rq_prefix}:*",),
        )
    raise ValueError(f"unknown role {role!r}")  # pragma: no cover - exhaustive


#: The admin role's user (see the module docstring for why it is ``default``).
ADMIN_USER = "default"


def user_name(role: Role, keys: Keys) -> str:
    """The Redis user of ``role``: ``<prefix>-<role>`` (``pp-persist``), as
    patterns differ per prefix, so do users of two deployments on one Redis;
    the admin's is :data:`ADMIN_USER`."""
    return ADMIN_USER if role is Role.ADMIN else f"{keys.prefix}-{role}"


def password_hash(password: str) -> str:
    """What Redis stores of a password (``#<sha256 hex>`` in ACL rules), so
    ACL files and ``ACL SETUSER`` commands never carry the password itself."""
    return hashlib.sha256(password.encode()).hexdigest()


def setuser_args(role: Role, keys: Keys, password: str, *,
                 rq_prefix: str = RQ_PREFIX) -> list[str]:
    """Arguments of ``ACL SETUSER`` defining ``role``'s user from scratch
    (``reset`` first: applying it twice gives the same user)."""
    return [user_name(role, keys), "reset", "on", f"#{password_hash(password)}",
            *grant(role, keys, rq_prefix=rq_prefix).rules()]


def admin_line(password: str) -> str:
    """The ACL file line of the admin (``default``) user alone."""
    return "user " + " ".join([ADMIN_USER, "reset", "on", f"#{password_hash(password)}",
                               *grant(Role.ADMIN, Keys()).rules()])


def acl_file(passwords: Mapping[Role, str], keys: Keys, *,
             rq_prefix: str = RQ_PREFIX) -> str:
    """An ACL file (Redis ``aclfile``) with one user per role in
    ``passwords``, passwords hashed. The admin's password is required: a
    file without the ``default`` user leaves it without one. (No comment
    line: Redis refuses anything but ``user`` lines.)"""
    if Role.ADMIN not in passwords:
        raise ValueError("the admin role's password is required (it protects the default user)")
    lines = ["user " + " ".join(setuser_args(role, keys, passwords[role], rq_prefix=rq_prefix))
             for role in Role if role in passwords]
    return "\n".join(lines) + "\n"


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` (``redis://``, ``rediss://``, or any ``scheme://host`` URL;
    its query kept) authenticating as ``user``: credentials percent-encoded,
    any previous ones replaced."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def role_urls(base_url: str, passwords: Mapping[Role, str], keys: Keys) -> dict[Role, str]:
    """Each role's URL of the server at ``base_url``."""
    return {role: with_credentials(base_url, user_name(role, keys), password)
            for role, password in passwords.items()}


def parse_roles(names: Iterable[str]) -> list[Role]:
    """Roles by name; raises ``ValueError`` naming the unknown ones."""
    out, unknown = [], []
    for name in names:
        try:
            out.append(Role(name))
        except ValueError:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown roles {unknown}; known: {[r.value for r in Role]}")
    return out
