"""The source registry: which source each symbol is published from.

A symbol's stream must never mix two sources unnoticed: two venues' prices
of "the same" instrument differ, and so do their trade ids (see
:mod:`pricepipe.venues`). The first publisher of a symbol records its source
in the hash :meth:`~pricepipe.keys.Keys.sources` (``pp:sources``); a later
publisher of another source is refused unless forced, which then records
the new source.

Thin I/O over one Lua script, so checking and recording are one atomic step
(two publishers starting at once cannot both win).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .keys import Keys
from .streams import run_script

#: KEYS[1]: the registry hash; ARGV[1]: the source; ARGV[2]: "1" to force;
#: ARGV[3..]: symbols. Returns [symbol, other source, ...] for every symbol
#: recorded with another source; records ARGV[1] for every symbol not
#: recorded with it yet, unless there are such conflicts and it is not
#: forced (then nothing is written). It writes only what changes: under
#: ``maxmemory`` Redis refuses a script at its first write, so a full Redis
#: still answers the check (conflicts, or a restart of the same source).
CLAIM_SCRIPT = """
local conflicts = {}
local missing = {}
for i = 3, #ARGV do
    local other = redis.call('HGET', KEYS[1], ARGV[i])
    if not other then
        missing[#missing + 1] = ARGV[i]
    elseif other ~= ARGV[1] then
        conflicts[#conflicts + 1] = ARGV[i]
        conflicts[#conflicts + 1] = other
        missing[#missing + 1] = ARGV[i]
    end
end
if #conflicts == 0 or ARGV[2] == '1' then
    for i = 1, #missing do
        redis.call('HSET', KEYS[1], missing[i], ARGV[1])
    end
end
return conflicts
"""


def claim(r: Any, keys: Keys, symbols: Iterable[str], source: str, *,
          force: bool = False) -> dict[str, str]:
    """Record ``source`` as the source of ``symbols``; returns the symbols
    recorded with another source, and that source.

    When that is not empty and ``force`` is False, nothing is recorded (the
    caller refuses to publish). Idempotent for the symbols' own source.
    Raises ``redis.ResponseError`` (``OOM``) when Redis is full and there is
    something to record: then no other source was found either."""
    wanted = sorted(set(symbols))
    if not wanted:
        return {}
    reply = run_script(r, CLAIM_SCRIPT, [keys.sources()], [source, "1" if force else "0",
                                                             *wanted])
    text = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
    return dict(zip(text[::2], text[1::2], strict=True))


def source_of(r: Any, keys: Keys, symbol: str) -> str | None:
    """The source ``symbol`` is recorded with, or None."""
    value = r.hget(keys.sources(), symbol)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
