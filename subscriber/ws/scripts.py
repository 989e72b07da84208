"""The websocket server's read-only Redis scripts, and the decoding of
their replies.

A snapshot or a resume reads a few facts of each of a client's streams. As
one pipelined command per stream, redis-py's asyncio pipeline reads and
parses every reply on its own: a quarter of the server's time while 10,000
clients connected (docs/bench.md, findings 29 and 32). Each script does the
same reads inside Redis and answers once.

Both run with ``EVALSHA_RO`` (the server's Redis user may only read the
streams, and ``EVALSHA`` declares its keys written) and are flagged
``no-writes``, so a replica and a full Redis run them as they answer the
reads themselves. Not on a cluster: a script's keys must share a hash slot,
and redis-py's cluster pipeline refuses scripts; the session reads command
by command there.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: The newest entry of each stream of KEYS, each as ``XREVRANGE key + -
#: COUNT 1`` replies (an empty list for a missing stream).
LATEST_SCRIPT = """#!lua flags=no-writes
local out = {}
for i = 1, #KEYS do
    out[i] = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
end
return out
"""

#: What a resume after ``ARGV[i]`` needs of each stream ``KEYS[i]``: false
#: when there is no such stream (or the key is no stream), else the oldest
#: entry's ID (false when empty), ``XINFO STREAM``'s ``last-generated-id``,
#: ``max-deleted-entry-id``, ``entries-added`` and ``length``, and the
#: entries after ``ARGV[i]`` as ``XRANGE`` replies, at most ``ARGV[#KEYS + 1]``
#: (none when Redis refuses the range: after the largest ID there is, the
#: verdict says ``cursor_ahead``). An error of one stream is that stream's,
#: as it was for the commands one by one: it never fails the others.
RESUME_SCRIPT = """#!lua flags=no-writes
local n = #KEYS
local count = ARGV[n + 1]
local out = {}
for i = 1, n do
    local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[i])
    if ok then
        local f = {}
        for j = 1, #info, 2 do
            f[info[j]] = info[j + 1]
        end
        local first = f['first-entry']
        local read, rows = pcall(redis.call, 'XRANGE', KEYS[i], '(' .. ARGV[i], '+',
                                 'COUNT', count)
        if not read then
            rows = {}
        end
        out[i] = {first and first[1] or false, f['last-generated-id'] or false,
                  f['max-deleted-entry-id'] or false, f['entries-added'] or false,
                  f['length'], rows}
    else
        out[i] = false
    end
end
return out
"""

#: Every script here: what a Redis that answered ``NOSCRIPT`` is given.
SCRIPTS = (LATEST_SCRIPT, RESUME_SCRIPT)
LATEST_SHA = hashlib.sha1(LATEST_SCRIPT.encode()).hexdigest()
RESUME_SHA = hashlib.sha1(RESUME_SCRIPT.encode()).hexdigest()


def resume_args(cursors: list[str], count: int) -> list[str]:
    """``ARGV`` of :data:`RESUME_SCRIPT` for streams read after ``cursors``."""
    return [*cursors, str(count)]


def resume_state(reply: Any) -> tuple[dict[str, Any] | None, list[Any]]:
    """One stream's part of a :data:`RESUME_SCRIPT` reply: the stream's
    ``XINFO STREAM`` as :func:`pricepipe.subscriber.ws.resume.verdict`
    reads it (None: no such stream) and the first entries after the cursor."""
    if not reply:
        return None, []
    first, last_generated, max_deleted, added, length, rows = reply
    info = {
        "first-entry": (first,) if first else None,
        "last-generated-id": last_generated,
        "max-deleted-entry-id": max_deleted,
        "entries-added": added,
        "length": length,
    }
    return info, rows
