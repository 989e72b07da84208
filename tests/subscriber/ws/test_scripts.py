"""The websocket server's read scripts against the commands they stand for,
on a real Redis: every stream state a resume verdict tells apart."""

from __future__ import annotations

from typing import Any

import redis

from pricepipe.subscriber.ws import scripts
from pricepipe.subscriber.ws.resume import verdict


def _states(r: Any) -> dict[str, str]:
    """Keys in each state, by what they hold; their cursors to resume after."""
    r.delete("sc:full", "sc:ahead", "sc:trimmed", "sc:emptied", "sc:missing", "sc:string")
    ids = [r.xadd("sc:full", {"f": str(i)}).decode() for i in range(5)]
    r.xadd("sc:ahead", {"f": "0"})
    trimmed = [r.xadd("sc:trimmed", {"f": str(i)}).decode() for i in range(6)]
    r.xtrim("sc:trimmed", maxlen=2, approximate=False)
    emptied = [r.xadd("sc:emptied", {"f": str(i)}).decode() for i in range(3)]
    r.xtrim("sc:emptied", maxlen=0, approximate=False)
    r.set("sc:string", "not a stream")
    # The largest ID there is: Redis refuses a range after it.
    return {"sc:full": ids[1], "sc:ahead": f"{2**64 - 1}-{2**64 - 1}",
            "sc:trimmed": trimmed[1], "sc:emptied": emptied[-1],
            "sc:missing": "5-0", "sc:string": "0-0"}


def _by_commands(r: Any, key: str, cursor: str, count: int) -> tuple[Any, Any]:
    """What the session read command by command (errors: no stream)."""
    try:
        info: Any = r.xinfo_stream(key)
    except redis.ResponseError:
        return None, []
    try:
        return info, r.xrange(key, min=f"({cursor}", max="+", count=count)
    except redis.ResponseError:  # no entries to replay
        return info, []


def test_the_resume_script_gives_what_xinfo_and_xrange_give(r: Any) -> None:
    cursors = _states(r)
    keys = list(cursors)
    r.script_load(scripts.RESUME_SCRIPT)
    reply = r.evalsha_ro(scripts.RESUME_SHA, len(keys), *keys,
                         *scripts.resume_args(list(cursors.values()), 3))
    for key, part in zip(keys, reply, strict=True):
        info, rows = scripts.resume_state(part)
        want_info, want_rows = _by_commands(r, key, cursors[key], 3)
        # The same verdict, for the client's cursor and for others around it.
        for cursor in (cursors[key], "0-0", "1-0", "99999999999999-0"):
            for record in (None, cursors[key].encode()):
                assert verdict(cursor, info, record) == verdict(cursor, want_info, record), \
                    (key, cursor, record)
        assert [(i, dict(zip(f[::2], f[1::2], strict=True))) for i, f in rows] == want_rows
    assert scripts.resume_state(reply[keys.index("sc:missing")]) == (None, [])
    assert scripts.resume_state(reply[keys.index("sc:string")]) == (None, [])


def test_the_latest_script_gives_what_xrevrange_gives(r: Any) -> None:
    cursors = _states(r)
    keys = [key for key in cursors if key != "sc:string"]
    r.script_load(scripts.LATEST_SCRIPT)
    reply = r.evalsha_ro(scripts.LATEST_SHA, len(keys), *keys)
    for key, rows in zip(keys, reply, strict=True):
        assert [(i, dict(zip(f[::2], f[1::2], strict=True))) for i, f in rows] == \
            r.xrevrange(key, count=1)
