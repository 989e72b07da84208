"""The bars stream: the new state of every bar a commit changed, published
to ``keys.bars(symbol)`` (field ``b``, :func:`pricepipe.codec.encode_bar`).

A bar's life on the stream:

* **open** - published after each commit that added trades to it, while its
  minute runs (plus a grace: trades travel a little);
* **final** - once: by :class:`FinalPass`, a periodic pass that reads
  ``bars_1m`` for the minutes that ended more than the grace ago and are
  not final yet, or by the first commit that changes the bar after that
  (a worker catching up);
* **revised** - when a late trade changes a bar already final.

Several workers may publish states of the same bar at once (each committed
a different batch). :data:`PUBLISH_LUA` keeps them in order: per symbol a
hash (``keys.bar_state``) holds, per recent minute, the trade count last
published and whether it was final; a state with no more trades than the
last one published is dropped. Trade counts only grow (a commit adds
trades, never removes them), so the stream never shows an older state
after a newer one, and the newest committed state is never the one dropped.
The same check makes a retried publication harmless: sending a state again
publishes nothing.

Bar messages are **derived data**: the rows in PostgreSQL are the truth.
A bar that cannot be published (Redis refuses the script, e.g. out of
memory) is skipped with a log line (once per stretch of refusals when
Redis is full); the next commit of that bar, or the final pass, publishes
its newer state (the final pass reads the minutes a full Redis refused again
on its next run). Nothing here ever touches a row.
The hash forgets minutes older than ``horizon_s``; a late trade of such a
minute is published as a revision (its minute is long final).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
import redis
from redis.exceptions import NoScriptError

from pricepipe import codec
from pricepipe.backpressure import is_oom_error
from pricepipe.clock import now_us, us_to_datetime
from pricepipe.connections import pg_connect
from pricepipe.events import US_PER_MINUTE, BarState, bucket_of
from pricepipe.exceptions import InvalidEventError
from pricepipe.keys import Keys

from .bars import BAR_STATE_COLUMNS_SQL, BarStateRow, bar_event, bar_state
from .episode import Episode

log = logging.getLogger(__name__)

_FIELD = codec.F_BAR.decode()

#: KEYS[1] the symbol's bar-state hash, KEYS[2] its bars stream.
#: ARGV[1] ``live`` or ``final``; ARGV[2] TTL of the hash, ms; ARGV[3] the
#: bucket (us) below which the hash forgets minutes, or empty; then per bar
#: five values: bucket_us, trade count, value, value if already final, and
#: 1 if the value is a final one (live mode; it marks the bar final).
#: Returns per bar 1 (published), 0 (not newer, or already final) or, in
#: ``final`` mode, 2 (a newer state was published meanwhile: read it again).
#: Bucket numbers stay below 2^53, exact in Lua's doubles.
PUBLISH_LUA = """
local mode = ARGV[1]
local out = {}
for i = 4, #ARGV, 5 do
    local bucket = ARGV[i]
    local count = tonumber(ARGV[i + 1])
    local last = tonumber(redis.call('HGET', KEYS[1], bucket))
    local final = redis.call('HEXISTS', KEYS[1], bucket .. ':f') == 1
    local status = 0
    if mode == 'final' then
        if final then
            status = 0
        elseif last and count < last then
            status = 2
        else
            redis.call('XADD', KEYS[2], '*', '""" + _FIELD + """', ARGV[i + 2])
            redis.call('HSET', KEYS[1], bucket, count, bucket .. ':f', 1)
            status = 1
        end
    elseif not (last and count <= last) then
        if final then
            redis.call('XADD', KEYS[2], '*', '""" + _FIELD + """', ARGV[i + 3])
            redis.call('HSET', KEYS[1], bucket, count)
        else
            redis.call('XADD', KEYS[2], '*', '""" + _FIELD + """', ARGV[i + 2])
            redis.call('HSET', KEYS[1], bucket, count)
            if ARGV[i + 4] == '1' then redis.call('HSET', KEYS[1], bucket .. ':f', 1) end
        end
        status = 1
    end
    out[#out + 1] = status
end
if ARGV[3] ~= '' then
    local floor = tonumber(ARGV[3])
    for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
        local bucket = tonumber(string.match(field, '^%d+'))
        if bucket and bucket < floor then redis.call('HDEL', KEYS[1], field) end
    end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return out
"""
PUBLISH_SHA = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest()

PUBLISHED, SKIPPED, STALE = 1, 0, 2
#: Not a script status: Redis refused the call because it is full.
REFUSED = -1

#: The hash forgets minutes this much later than live publishing treats
#: them as forgotten, so clocks a little apart never disagree about one.
PRUNE_MARGIN_US = 10 * US_PER_MINUTE

#: A script call: (keys, args) for one symbol.
Call = tuple[list[str], list[str | int]]


def live_state(bucket_us: int, at_us: int, *, grace_us: int, horizon_us: int) -> BarState:
    """The state a commit publishes a bar in, unless the bar is already
    final (then it is a revision, decided in Redis): open while its minute
    runs (plus the grace), final after, revised once older than the horizon
    (the hash has forgotten whether it was final; it long was)."""
    if bucket_us < bucket_of(at_us - horizon_us):
        return BarState.REVISED
    if bucket_us + US_PER_MINUTE + grace_us <= at_us:
        return BarState.FINAL
    return BarState.OPEN


class BarFeed:
    """Publishes bar states to the bars streams through :data:`PUBLISH_LUA`.

    Thread-safe (its only state is the :attr:`refusals` episode, for logs;
    the Redis client's pool is shared). ``clock`` gives the time now in
    microseconds (tests set it).
    """

    def __init__(self, r: Any, keys: Keys, *, grace_ms: int = 2000, horizon_s: int = 3600,
                 clock: Callable[[], int] = now_us) -> None:
        self.r = r
        self.keys = keys
        self.grace_us = grace_ms * 1000
        self.horizon_us = horizon_s * 1_000_000
        self.clock = clock
        #: Calls a full Redis refused (logged once per stretch of refusals).
        self.refusals = Episode("bar messages", "they are skipped (derived data: the rows are "
                                "committed; the final pass publishes ended minutes later)", log)

    def publish(self, bars: Sequence[BarStateRow]) -> int:
        """Publish the new states of bars a commit changed (see
        :func:`live_state`; revised when already final). Returns how many
        were published.

        Safe to call again with the same states (after a connection error):
        they are not newer than what was published, so nothing is added.
        Raises Redis connection errors; a call Redis refuses is logged and
        its bars skipped.
        """
        calls = self._calls(bars, final=False, now=self.clock())
        return sum(status == PUBLISHED for _, status in self._run(calls))

    def publish_final(self, bars: Sequence[BarStateRow]) -> tuple[int, list[tuple[str, int]]]:
        """Publish bars of ended minutes as final, unless already final.

        Returns how many were published and the ``(symbol, bucket_us)`` of
        those a newer state overtook meanwhile, or that a full Redis refused
        (read them again and retry). Raises as :meth:`publish`.
        """
        calls = self._calls(bars, final=True, now=self.clock())
        published, stale = 0, []
        for key, status in self._run(calls):
            if status == PUBLISHED:
                published += 1
            elif status in (STALE, REFUSED):
                stale.append(key)
        return published, stale

    # Internals

    def _calls(self, bars: Iterable[BarStateRow], *, final: bool, now: int
               ) -> list[tuple[list[tuple[str, int]], Call]]:
        """One script call per symbol, with the (symbol, bucket) of each bar in it."""
        by_symbol: dict[str, list[BarStateRow]] = {}
        for bar in bars:
            by_symbol.setdefault(bar[0], []).append(bar)
        ttl_ms = (self.horizon_us + 2 * PRUNE_MARGIN_US) // 1000
        prune = str(bucket_of(now - self.horizon_us) - PRUNE_MARGIN_US) if final else ""
        calls = []
        for symbol, rows in sorted(by_symbol.items()):
            args: list[str | int] = ["final" if final else "live", ttl_ms, prune]
            refs = []
            for row in sorted(rows, key=lambda b: (b[1], b[8])):
                try:
                    if final:
                        state = BarState.FINAL
                        revised = ""
                    else:
                        state = live_state(row[1], now, grace_us=self.grace_us,
                                           horizon_us=self.horizon_us)
                        revised = codec.encode_bar(bar_event(row, BarState.REVISED))
                    value = codec.encode_bar(bar_event(row, state))
                except InvalidEventError as exc:
                    log.warning("bar %s %s not published: %s", symbol, row[1], exc)
                    continue
                args.extend((row[1], row[8], value, revised,
                             1 if state is BarState.FINAL else 0))
                refs.append((symbol, row[1]))
            if refs:
                calls.append((refs, ([self.keys.bar_state(symbol), self.keys.bars(symbol)],
                                     args)))
        return calls

    def _run(self, calls: list[tuple[list[tuple[str, int]], Call]]
             ) -> list[tuple[tuple[str, int], int]]:
        """Run the calls; ``(key, status)`` per bar. A call Redis refuses
        (anything but a connection error) is logged and its bars count as
        skipped, or as :data:`REFUSED` when Redis is full (logged once per
        stretch of such refusals: they come with every commit)."""
        if not calls:
            return []
        replies = _run_scripts(self.r, [call for _, call in calls])
        out: list[tuple[tuple[str, int], int]] = []
        for (refs, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                if is_oom_error(reply):
                    self.refusals.refused(reply)
                    out.extend((ref, REFUSED) for ref in refs)
                    continue
                log.warning("bars of %s not published (derived data, skipped): %s",
                            refs[0][0], reply)
                out.extend((ref, SKIPPED) for ref in refs)
                continue
            out.extend(zip(refs, (int(s) for s in reply), strict=True))
        if len(out) and all(status != REFUSED for _, status in out):
            self.refusals.accepted()
        return out


def _run_scripts(r: Any, calls: list[Call]) -> list[Any]:
    """One ``EVALSHA`` of :data:`PUBLISH_LUA` per call, pipelined (one by one
    on a cluster, each to its slot's node); replies or refusals in order.
    ``NOSCRIPT`` (a new or restarted Redis) ran nothing: loaded and sent again."""
    if isinstance(r, redis.RedisCluster):
        return [_evalsha_loading(r, keys_, args) for keys_, args in calls]
    pipe = r.pipeline(transaction=False)
    for keys_, args in calls:
        pipe.evalsha(PUBLISH_SHA, len(keys_), *keys_, *args)
    replies = list(pipe.execute(raise_on_error=False))
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        r.script_load(PUBLISH_LUA)
        pipe = r.pipeline(transaction=False)
        for i in missing:
            keys_, args = calls[i]
            pipe.evalsha(PUBLISH_SHA, len(keys_), *keys_, *args)
        for i, reply in zip(missing, pipe.execute(raise_on_error=False), strict=True):
            replies[i] = reply
    return replies


def _evalsha_loading(r: Any, keys_: list[str], args: list[str | int]) -> Any:
    try:
        try:
            return r.evalsha(PUBLISH_SHA, len(keys_), *keys_, *args)
        except NoScriptError:
            r.script_load(PUBLISH_LUA)
            return r.evalsha(PUBLISH_SHA, len(keys_), *keys_, *args)
    except redis.ResponseError as exc:
        return exc


# --- the final pass --------------------------------------------------------------------------

ENDED_SQL = """
    SELECT""" + BAR_STATE_COLUMNS_SQL + """
    FROM bars_1m
    WHERE symbol = ANY(%(symbols)s) AND bucket >= %(since)s AND bucket < %(until)s
    ORDER BY symbol, bucket
"""

AGAIN_SQL = """
    SELECT""" + BAR_STATE_COLUMNS_SQL + """
    FROM bars_1m
    JOIN unnest(%(symbols)s::text[], %(buckets)s::timestamptz[]) AS k(s, b)
      ON symbol = k.s AND bucket = k.b
    ORDER BY symbol, bucket
"""


class FinalPass:
    """Publishes the bars of ended minutes as final: those that ended more
    than the feed's grace ago, read from ``bars_1m`` (so also bars no worker
    published live: a worker crashed after its commit, or a backfill).

    Each run reads the minutes that became due since the last successful
    run (the first run: the last ``horizon_s``), plus those a newer state
    overtook last time. Owns one read connection, opened lazily. A failed run
    (either server) raises and is simply run again later: the script skips
    what is already final. Not thread-safe.
    """

    def __init__(self, feed: BarFeed, database_url: str, *,
                 application_name: str = "pricepipe-persist-bars") -> None:
        self.feed = feed
        self._url = database_url
        self._application_name = application_name
        self._since_us: int | None = None
        self._again: set[tuple[str, int]] = set()
        self._conn: psycopg2.extensions.connection | None = None

    def run(self, symbols: Sequence[str]) -> int:
        """One pass over ``symbols``; returns the bars published final.
        Raises ``psycopg2.Error`` and Redis errors (nothing is marked done then)."""
        now = self.feed.clock()
        until = bucket_of(now - self.feed.grace_us)  # minutes before it ended > grace ago
        horizon_floor = bucket_of(now - self.feed.horizon_us)
        since = horizon_floor if self._since_us is None else max(self._since_us,
                                                                 horizon_floor)
        again = sorted(k for k in self._again if k[1] >= horizon_floor)
        if (until <= since or not symbols) and not again:
            return 0
        rows = self._read(list(symbols), since, until, again)
        published, stale = self.feed.publish_final(rows)
        self._since_us = max(since, until)
        self._again = set(stale)
        return published

    def _read(self, symbols: list[str], since_us: int, until_us: int,
              again: list[tuple[str, int]]) -> list[BarStateRow]:
        conn = self._connect()
        try:
            rows: list[Any] = []
            with conn.cursor() as cur:
                if symbols and until_us > since_us:
                    cur.execute(ENDED_SQL, {"symbols": symbols, "since": us_to_datetime(since_us),
                                            "until": us_to_datetime(until_us)})
                    rows.extend(cur.fetchall())
                if again:
                    cur.execute(AGAIN_SQL, {"symbols": [s for s, _ in again],
                                            "buckets": [us_to_datetime(b) for _, b in again]})
                    rows.extend(cur.fetchall())
            conn.commit()
        except BaseException:
            self.close()
            raise
        return [bar_state(row) for row in rows]

    def _connect(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = pg_connect(self._url, application_name=self._application_name,
                                    readonly=True, statement_timeout_ms=10_000)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None
