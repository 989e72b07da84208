"""A round trip that Redis applied but whose reply was lost (a connection
dropped mid-pipeline, a Redis restart) must not append its events twice when
the sink sends the batch again; the check is per stream (symbol, channel):
a symbol's trades and quotes are two streams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from pricepipe.codec import decode_entry
from pricepipe.events import Event, Quote, Side, Trade
from pricepipe.keys import Channel, Keys
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.sink import StreamSink
from pricepipe.stop import StopRequest
from pricepipe.streams import APPEND_SCRIPT

TS = 1_767_323_045_000_000


class LosesReplies:
    """A Redis client whose next ``fail`` pipelines that append are applied
    by the server but answered with a connection error, as when the link
    drops after the commands were written. With ``apply_first``, only the
    first that many commands (one append script call per shard) reach Redis."""

    def __init__(self, r: Any, fail: int, apply_first: int | None = None) -> None:
        self.r, self.fail, self.apply_first = r, fail, apply_first

    def __getattr__(self, name: str) -> Any:
        return getattr(self.r, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self.r.pipeline(*args, **kwargs)
        outer = self
        real_execute = pipe.execute

        def execute(*a: Any, **kw: Any) -> Any:
            appends = [c for c in pipe.command_stack if c[0][0] in ("EVALSHA", "XADD")]
            if outer.fail and appends:
                outer.fail -= 1
                if outer.apply_first is not None:  # only part of it reached Redis
                    del pipe.command_stack[outer.apply_first:]
                real_execute(*a, **kw)
                raise redis.ConnectionError("connection lost before the reply")
            return real_execute(*a, **kw)

        pipe.execute = execute
        return pipe


SYMBOLS = ("AAPL", "MSFT", "GOOG", "TSLA", "NVDA", "META")


def _events(n: int) -> list[Event]:
    """Per symbol, a quote and a trade against it per step: two streams each."""
    out: list[Event] = []
    for i in range(n):
        for symbol in SYMBOLS:
            bid, ask = 100.0 + i, 100.02 + i
            out.append(Quote(symbol, TS + i, bid, 5.0, ask, 7.0, "gbm"))
            out.append(Trade(symbol, TS + i, ask, 1.0 + i, "gbm", None, Side.BUY))
    return out


def _stored(r: Any, keys: Keys) -> list[Event]:
    return [decode_entry(channel, s, f) for s in SYMBOLS for channel in (Channel.TRADES,
                                                                         Channel.QUOTES)
            for _, f in r.xrange(keys.stream(s, channel))]


def _by_stream(events: list[Event]) -> dict[tuple[str, type], list[Event]]:
    out: dict[tuple[str, type], list[Event]] = {}
    for event in events:
        out.setdefault((event.symbol, type(event)), []).append(event)
    return out


def test_lost_reply_does_not_duplicate(r: Any, keys: Keys) -> None:
    r.script_load(APPEND_SCRIPT)  # so that the first call is not a NOSCRIPT miss
    metrics = PublisherMetrics()
    sink = StreamSink(LosesReplies(r, fail=1), keys, stop=StopRequest(), metrics=metrics)
    events = _events(50)
    assert sink.publish(events) == len(events)
    assert _by_stream(_stored(r, keys)) == _by_stream(events)  # each once, in order
    # Everything had been stored: nothing was sent again, yet all is counted.
    assert metrics.value("pricepipe_publisher_redis_errors") == 1
    assert metrics.value("pricepipe_publisher_events_published", channel="trades") == 300
    assert metrics.value("pricepipe_publisher_events_published", channel="quotes") == 300


def test_lost_replies_before_the_script_is_loaded(r: Any, keys: Keys) -> None:
    """A new Redis answers NOSCRIPT (nothing run); losing those replies too
    must neither lose nor duplicate anything."""
    r.script_flush()
    sink = StreamSink(LosesReplies(r, fail=2), keys, stop=StopRequest(),
                      metrics=PublisherMetrics())
    events = _events(20)
    assert sink.publish(events) == len(events)
    assert _by_stream(_stored(r, keys)) == _by_stream(events)


def test_partly_applied_round_trip_sends_only_the_rest(r: Any, keys: Keys) -> None:
    # One append call per shard: 6 symbols over 8 shards make several calls,
    # and only the first reaches Redis.
    r.script_load(APPEND_SCRIPT)  # so that the first call is not a NOSCRIPT miss
    sink = StreamSink(LosesReplies(r, fail=1, apply_first=1), keys, stop=StopRequest(),
                      metrics=PublisherMetrics())
    sent: list[int] = []
    send = sink._send

    def counting_send(events: Sequence[Event]) -> list[Any]:
        sent.append(len(events))
        return send(events)

    sink._send = counting_send  # type: ignore[method-assign]
    events = _events(40)
    assert len({keys.shard(s) for s in SYMBOLS}) > 1
    assert sink.publish(events) == len(events)
    assert _by_stream(_stored(r, keys)) == _by_stream(events)
    assert sent[0] == len(events) and 0 < sent[1] < len(events)  # only the rest went again


def test_resend_looks_at_each_channel_of_a_symbol(r: Any, keys: Keys) -> None:
    """The trades stream already holds the batch's trade, the quotes stream
    does not hold its quote: only the quote is sent again."""
    sink = StreamSink(r, keys, stop=StopRequest(), metrics=PublisherMetrics())
    quote = Quote("AAPL", TS, 100.0, 1.0, 100.5, 2.0, "gbm")
    trade = Trade("AAPL", TS, 100.5, 3.0, "gbm", None, Side.BUY)
    sink.publish([trade])
    assert sink._not_yet_stored([quote, trade]) == [quote]
    assert sink.newest(["AAPL", "MSFT"], Channel.TRADES) == {"AAPL": trade}
