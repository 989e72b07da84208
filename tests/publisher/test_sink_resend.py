"""A round trip that Redis applied but whose reply was lost (a connection
dropped mid-pipeline, a Redis restart) must not append its ticks twice when
the sink sends the batch again."""

from __future__ import annotations

from typing import Any

import redis
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.sink import StreamSink

from pricepipe.codec import decode_fields
from pricepipe.keys import Keys
from pricepipe.stop import StopRequest
from pricepipe.tick import Tick

TS = 1_767_323_045_000_000


class LosesReplies:
    """A Redis client whose next ``fail`` pipelines are applied by the server
    but answered with a connection error, as when the link drops after the
    commands were written. ``applied`` of them run for real first."""

    def __init__(self, r: Any, fail: int, apply_first: int | None = None) -> None:
        self.r, self.fail, self.apply_first = r, fail, apply_first

    def __getattr__(self, name: str) -> Any:
        return getattr(self.r, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self.r.pipeline(*args, **kwargs)
        outer = self
        real_execute = pipe.execute

        def execute(*a: Any, **kw: Any) -> Any:
            xadds = [c for c in pipe.command_stack if c[0][0] == "XADD"]
            if outer.fail and xadds:
                outer.fail -= 1
                if outer.apply_first is not None:  # only part of it reached Redis
                    del pipe.command_stack[outer.apply_first:]
                real_execute(*a, **kw)
                raise redis.ConnectionError("connection lost before the reply")
            return real_execute(*a, **kw)

        pipe.execute = execute
        return pipe


def _ticks(n: int) -> list[Tick]:
    return [Tick(s, TS + i, 100.0 + i, None, "gbm") for i in range(n) for s in ("AAPL", "MSFT")]


def _stored(r: Any, keys: Keys) -> list[Tick]:
    return [decode_fields(f) for s in ("AAPL", "MSFT") for _, f in r.xrange(keys.stream(s))]


def test_lost_reply_does_not_duplicate(r: Any, keys: Keys) -> None:
    sink = StreamSink(LosesReplies(r, fail=2), keys, stop=StopRequest(),
                      metrics=PublisherMetrics())
    ticks = _ticks(50)
    assert sink.publish(ticks) == len(ticks)
    stored = _stored(r, keys)
    assert sorted(stored, key=lambda t: (t.symbol, t.ts_us)) == \
        sorted(ticks, key=lambda t: (t.symbol, t.ts_us))


def test_partly_applied_round_trip_sends_only_the_rest(r: Any, keys: Keys) -> None:
    sink = StreamSink(LosesReplies(r, fail=1, apply_first=31), keys, stop=StopRequest(),
                      metrics=PublisherMetrics())
    ticks = _ticks(40)
    sink.publish(ticks)
    for symbol in ("AAPL", "MSFT"):
        got = [t for t in _stored(r, keys) if t.symbol == symbol]
        assert got == [t for t in ticks if t.symbol == symbol]  # each once, in order
