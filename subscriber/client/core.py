"""Every decision of the stream readers, made once for the sync and the
asyncio flavour (sans-I/O, as httpx's ``BaseClient`` and websockets'
protocol objects do it).

A reader reads each shard of its symbols separately (multi-key commands stay
inside one hash slot, see :mod:`pricepipe.keys`). The state of one shard is a
:class:`LatestShard` (plain ``XREAD``) or a :class:`GroupShard`
(``XREADGROUP`` in a consumer group). Their methods ``prepare``, ``read`` and
``ack`` are *plans*: generators that yield the Redis commands to run
(:class:`Call`, or a :class:`Pipeline` of calls sent in one round trip),
receive each reply (or the exception it raised, thrown back into the
generator) and return their result. :func:`run_sync` and :func:`run_async`
are the only code that talks to Redis, so the two flavours differ in I/O only:
which entries to ask for, where a cursor stands, when to claim another
consumer's entries, what to acknowledge without delivering, and how to
recover from a vanished group are all decided here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from pricepipe import codec
from pricepipe.keys import PERSIST_GROUP, Channel, Keys
from pricepipe.streams import reply_streams

from .delivery import Delivery
from .settings import ClientSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors after which a reader waits (backoff) and runs its plan again: the
#: plan leaves its state as it was, so nothing is skipped or doubled.
RETRYABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Call:
    """One Redis command as a redis-py method call: ``client.method(*args, **kwargs)``
    (the sync and the asyncio clients have the same methods)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Calls sent in one round trip (not a transaction); the reply is the list
    of their replies (an error reply is raised into the plan)."""

    calls: tuple[Call, ...]


Step = Call | Pipeline
Plan = Generator[Step, Any, T]


def run_sync(r: Any, plan: Plan[T]) -> T:
    """Run ``plan`` against the sync client ``r``; returns its result."""
    try:
        step = next(plan)
        while True:
            try:
                reply = _execute_sync(r, step)
            except redis.ResponseError as exc:
                step = plan.throw(exc)
                continue
            step = plan.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


async def run_async(r: Any, plan: Plan[T]) -> T:
    """Run ``plan`` against the asyncio client ``r``; returns its result."""
    try:
        step = next(plan)
        while True:
            try:
                reply = await _execute_async(r, step)
            except redis.ResponseError as exc:
                step = plan.throw(exc)
                continue
            step = plan.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


def _execute_sync(r: Any, step: Step) -> Any:
    if isinstance(step, Call):
        return getattr(r, step.method)(*step.args, **step.kwargs)
    pipe = r.pipeline(transaction=False)
    for call in step.calls:
        getattr(pipe, call.method)(*call.args, **call.kwargs)
    return pipe.execute()


async def _execute_async(r: Any, step: Step) -> Any:
    if isinstance(step, Call):
        return await getattr(r, step.method)(*step.args, **step.kwargs)
    pipe = r.pipeline(transaction=False)
    for call in step.calls:
        getattr(pipe, call.method)(*call.args, **call.kwargs)
    return await pipe.execute()


# --- decoding --------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(keys: Keys, stream_key: bytes | str, raw_id: bytes | str,
                 fields: Any, *, redelivered: bool) -> Delivery | None:
    """The delivery of one entry, or None for one that cannot be delivered:
    trimmed away while pending (no fields), or unreadable (it stays in the
    stream for the persist workers, which dead-letter it)."""
    entry_id = _text(raw_id)
    if fields is None:
        return None
    try:
        channel, symbol = keys.parse_stream(stream_key)
        return Delivery(entry_id, codec.decode_entry(channel, symbol, fields), redelivered)
    except ValueError as exc:
        log.warning("skipping bad entry %s of %r: %s", entry_id, stream_key, exc)
        return None


# --- starting points -------------------------------------------------------------------------


#: ``"$"``, ``"last"``, ``"0"``, or per symbol and channel the last entry ID handled:
#: ``{"AAPL": {"quotes": "1767323045251-1"}}`` (streams missing from it start at ``"$"``).
Start = str | Mapping[str, Mapping[str, str]]

#: What a reader reads when not told: both kinds of market event.
DEFAULT_CHANNELS = (Channel.TRADES, Channel.QUOTES)


def channel_list(channels: Iterable[str]) -> list[Channel]:
    """Channels validated, duplicates removed, order kept; at least one."""
    out = list(dict.fromkeys(Channel(c) for c in channels))
    if not out:
        raise ValueError("give at least one channel")
    return out


def validate_start(start: Start, symbol: str, channel: Channel) -> str:
    """One stream's start: ``"$"``, ``"last"``, ``"0"`` or an entry ID (normalised)."""
    if isinstance(start, Mapping):
        value = start.get(symbol, {}).get(str(channel), "$")
    else:
        value = start
    if value not in ("$", "last", "0"):
        return "{}-{}".format(*codec.parse_entry_id(value))
    return value


def resolve_starts(starts: Mapping[str, str], replies: list[Any]) -> dict[str, str]:
    """Turn ``$`` / ``last`` into explicit IDs from ``XREVRANGE ... COUNT 2``
    replies (``starts`` and the result are keyed by stream).

    An explicit ID is what makes reading gap-free across reads and reconnects
    (``$`` would mean "the end at the time of each call").
    """
    out = {}
    for (stream, start), rows in zip(starts.items(), replies, strict=True):
        ids = [_text(row[0]) for row in rows]
        if start == "$":
            out[stream] = ids[0] if ids else "0-0"
        elif start == "last":
            out[stream] = ids[1] if len(ids) > 1 else "0-0"
        else:
            out[stream] = start
    return out


# --- latest-only reading ---------------------------------------------------------------------


class LatestShard:
    """A plain reader's place in the streams of one shard (each symbol's
    stream of each channel).

    ``start`` per stream: ``"$"`` (from when :meth:`prepare` ran), ``"last"``
    (the latest event first), ``"0"`` (all the stream holds) or an entry ID
    (resume after it). :attr:`ids` holds the last entry ID read per stream.
    """

    def __init__(self, keys: Keys, symbols: Iterable[str], channels: Iterable[Channel],
                 start: Start, settings: ClientSettings) -> None:
        self.keys = keys
        self.settings = settings
        self._starts = {keys.stream(s, c): validate_start(start, s, c)
                        for s in symbols for c in channels}
        self.ids: dict[str, str] = {}

    def prepare(self) -> Plan[None]:
        starts = self._starts
        replies = yield Pipeline(tuple(
            Call("xrevrange", (stream,), {"count": 2}) for stream in starts))
        self.ids = resolve_starts(starts, replies)

    def read(self) -> Plan[list[Delivery]]:
        """One blocking ``XREAD``; its deliveries, cursors advanced past them."""
        reply = yield Call("xread", (dict(self.ids),), {
            "count": self.settings.count, "block": self.settings.block_ms})
        out: list[Delivery] = []
        for stream_key, entries in reply_streams(reply):
            name = _text(stream_key)
            for raw_id, fields in entries:
                delivery = decode_entry(self.keys, name, raw_id, fields, redelivered=False)
                if delivery is not None:
                    out.append(delivery)
            if entries:
                self.ids[name] = _text(entries[-1][0])
        return out


# --- consumer groups -------------------------------------------------------------------------


def _group_gone(exc: redis.ResponseError) -> bool:
    """The group (or its stream) no longer exists: NOGROUP, or a blocked read
    that Redis 7 unblocks because the stream key was deleted."""
    text = str(exc)
    return "NOGROUP" in text or text.startswith("UNBLOCKED")


class GroupShard:
    """A consumer-group reader's place in the streams of one shard.

    It starts by re-reading this consumer's pending entries (``XREADGROUP``
    from ID ``0``): entries delivered before a crash but never acknowledged
    come back first, marked ``redelivered``. Once a stream's pending list is
    exhausted it reads new entries (``>``). With ``settings.claim_idle_ms``
    it also claims what other consumers left pending that long (a consumer
    that died for good), never its own pending entries, which may still be
    in its hands. Pending entries that cannot be delivered (trimmed away,
    unreadable) are acknowledged without being handed out.
    """

    def __init__(self, keys: Keys, symbols: Iterable[str], channels: Iterable[Channel], *,
                 group: str, consumer: str, start: str, settings: ClientSettings,
                 clock: Any = time.monotonic) -> None:
        if start not in ("$", "0"):
            raise ValueError("group start must be '$' or '0'")
        if group == PERSIST_GROUP:
            raise ValueError(f"{PERSIST_GROUP!r} is the persist workers' group: choose another")
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.start = start
        self.settings = settings
        self.clock = clock
        self._streams = [keys.stream(s, c) for s in symbols for c in channels]
        self._pending: dict[str, str] = dict.fromkeys(self._streams, "0")
        self._claimed_at = 0.0

    @property
    def recovering(self) -> bool:
        """Still reading this consumer's own pending entries."""
        return bool(self._pending)

    def _ensure_groups(self) -> Plan[None]:
        for stream in self._streams:
            try:
                yield Call("xgroup_create", (stream, self.group),
                           {"id": self.start, "mkstream": True})
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def prepare(self) -> Plan[None]:
        """Create the group on each stream if missing, at ``start``."""
        yield from self._ensure_groups()

    def _read_streams(self) -> dict[str, str]:
        if self._pending:
            return dict(self._pending)
        return dict.fromkeys(self._streams, ">")

    def read(self) -> Plan[list[Delivery]]:
        recovering = self.recovering
        try:
            reply = yield Call("xreadgroup", (self.group, self.consumer, self._read_streams()), {
                "count": self.settings.count,
                "block": None if recovering else self.settings.block_ms})
        except redis.ResponseError as exc:
            if not _group_gone(exc):
                raise
            # The group vanished (a Redis that lost its data): recreate it and
            # read this consumer's pending list again.
            log.warning("consumer group %s missing, recreating it", self.group)
            yield from self._ensure_groups()
            self._pending = dict.fromkeys(self._streams, "0")
            return []
        out, discard = self._take(reply, recovering)
        claimed, more_discard = yield from self._claim()
        out.extend(claimed)
        discard.extend(more_discard)
        if discard:
            yield Pipeline(tuple(Call("xack", (stream, self.group, entry_id))
                                 for stream, entry_id in discard))
        return out

    def _take(self, reply: Any, recovering: bool
              ) -> tuple[list[Delivery], list[tuple[str, str]]]:
        out: list[Delivery] = []
        discard: list[tuple[str, str]] = []
        seen: set[str] = set()
        for stream_key, entries in reply_streams(reply):
            name = _text(stream_key)
            seen.add(name)
            for raw_id, fields in entries:
                delivery = decode_entry(self.keys, name, raw_id, fields,
                                        redelivered=recovering)
                if delivery is None:
                    discard.append((name, _text(raw_id)))
                else:
                    out.append(delivery)
            if recovering and name in self._pending:
                if entries:
                    self._pending[name] = _text(entries[-1][0])
                else:
                    del self._pending[name]  # this stream's pending list is exhausted
        if recovering:
            # Streams absent from the reply have no pending entries left.
            for name in [n for n in self._pending if n not in seen]:
                del self._pending[name]
        return out, discard

    def _claim(self) -> Plan[tuple[list[Delivery], list[tuple[str, str]]]]:
        """Entries other consumers left pending longer than ``claim_idle_ms``
        (looked for every half of it)."""
        idle = self.settings.claim_idle_ms
        now = self.clock()
        out: list[Delivery] = []
        discard: list[tuple[str, str]] = []
        if idle is None or self.recovering or now - self._claimed_at < idle / 2000:
            return out, discard
        self._claimed_at = now
        for stream in self._streams:
            rows = yield Call("xpending_range", (stream, self.group), {
                "min": "-", "max": "+", "count": self.settings.count, "idle": idle})
            theirs = [row["message_id"] for row in rows
                      if _text(row["consumer"]) != self.consumer]
            if not theirs:
                continue
            claimed = yield Call("xclaim", (stream, self.group, self.consumer, idle, theirs))
            for raw_id, fields in claimed:
                delivery = decode_entry(self.keys, stream, raw_id, fields, redelivered=True)
                if delivery is None:
                    discard.append((stream, _text(raw_id)))
                else:
                    out.append(delivery)
        return out, discard



def ack_plan(keys: Keys, group: str, deliveries: Iterable[Delivery]) -> Plan[None]:
    """Acknowledge handled deliveries of any shard in one round trip (idempotent)."""
    grouped: dict[str, list[str]] = {}
    for delivery in deliveries:
        grouped.setdefault(keys.stream(delivery.symbol, delivery.channel),
                           []).append(delivery.entry_id)
    if grouped:
        yield Pipeline(tuple(Call("xack", (stream, group, *ids))
                             for stream, ids in grouped.items()))


def symbol_list(symbols: Iterable[str]) -> list[str]:
    """Symbols validated, duplicates removed, order kept; at least one."""
    from pricepipe.events import validate_symbol

    out = list(dict.fromkeys(validate_symbol(s) for s in symbols))
    if not out:
        raise ValueError("give at least one symbol")
    return out
