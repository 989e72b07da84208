"""Every decision of the stream readers, made once for the sync and the
asyncio flavour (sans-I/O, as httpx's ``BaseClient`` and websockets'
protocol objects do it).

A reader reads each shard of its symbols separately (multi-key commands stay
inside one hash slot, see :mod:`pricepipe.keys`). The state of one shard is a
:class:`LatestShard` (plain ``XREAD``) or a :class:`GroupShard`
(``XREADGROUP`` in a consumer group). Their methods ``prepare``, ``read`` and
``ack`` are *plans*: generators that yield the Redis commands to run (a
:class:`Call`, a :class:`Pipeline` of calls sent in one round trip, a
:class:`Script`, or :class:`EpochOf`), receive each reply (or the error
reply it raised, thrown back into the generator) and return their result.
:func:`run_sync` and :func:`run_async` are the only code that talks to
Redis, so the two flavours differ in I/O only: which entries to ask for,
where a cursor stands, when to claim another consumer's entries, what to
acknowledge without delivering, how to recover from a vanished group or a
lost reply, and where entries may be missing are all decided here.

Nothing is lost silently. A reader hands out a :class:`~.delivery.Gap`
wherever entries may be missing: trimmed before it read them (the trimmed
record, :func:`pricepipe.streams.trimmed_since`), trimmed past its consumer
group by the hard cap (the group-gap record), or lost by Redis itself (the
epoch, :func:`pricepipe.streams.epoch`, changed: a restart or a failover).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import redis

from pricepipe import codec, streams
from pricepipe.keys import PERSIST_GROUP, Channel, Keys
from pricepipe.streams import next_id, prev_id, reply_streams

from .checkpoint import Mark
from .delivery import Delivery, Gap, GapReason
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


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script of :mod:`pricepipe.streams`, loaded on ``NOSCRIPT``."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class EpochOf:
    """The epoch of the server holding ``key`` (see :func:`pricepipe.streams.epoch`)."""

    key: str


Step = Call | Pipeline | Script | EpochOf
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
    if isinstance(step, Script):
        return streams.run_script(r, step.script, step.keys, step.args)
    if isinstance(step, EpochOf):
        return streams.epoch(r, step.key)
    pipe = r.pipeline(transaction=False)
    for call in step.calls:
        getattr(pipe, call.method)(*call.args, **call.kwargs)
    return pipe.execute()


async def _execute_async(r: Any, step: Step) -> Any:
    if isinstance(step, Call):
        return await getattr(r, step.method)(*step.args, **step.kwargs)
    if isinstance(step, Script):
        return await streams.async_run_script(r, step.script, step.keys, step.args)
    if isinstance(step, EpochOf):
        return await streams.async_epoch(r, step.key)
    pipe = r.pipeline(transaction=False)
    for call in step.calls:
        getattr(pipe, call.method)(*call.args, **call.kwargs)
    return await pipe.execute()


# --- decoding --------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _after(a: str, b: str) -> bool:
    """Whether entry ID ``a`` is after ``b``."""
    return codec.parse_entry_id(a) > codec.parse_entry_id(b)


def decode_entry(keys: Keys, stream_key: bytes | str, raw_id: bytes | str,
                 fields: Any, *, redelivered: bool, epoch: str | None) -> Delivery | None:
    """The delivery of one entry, or None for one that cannot be delivered:
    deleted while pending (no fields), or unreadable (it stays in the stream
    for the persist workers, which dead-letter it)."""
    entry_id = _text(raw_id)
    if not fields:
        # No entry has no fields (XADD takes one at least): deleted. RESP2
        # gives nil for it, some parsers an empty list or map.
        return None
    try:
        channel, symbol = keys.parse_stream(stream_key)
        return Delivery(entry_id, codec.decode_entry(channel, symbol, fields), redelivered,
                        epoch)
    except ValueError as exc:
        log.warning("skipping bad entry %s of %r: %s", entry_id, stream_key, exc)
        return None


# --- starting points -------------------------------------------------------------------------


#: ``"$"``, ``"last"``, ``"0"``, or per symbol and channel the last entry ID
#: handled, with the epoch it was read in: ``{"AAPL": {"quotes":
#: "1767323045251-1", "epoch": "1f2e..."}}`` (streams missing from it start
#: at ``"$"``; without ``"epoch"`` a restart of Redis since cannot be seen).
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


def start_epochs(start: Start) -> dict[str, str]:
    """Per symbol, the epoch its saved cursors were read in (when given)."""
    if not isinstance(start, Mapping):
        return {}
    return {symbol: cursors["epoch"] for symbol, cursors in start.items()
            if isinstance(cursors, Mapping) and "epoch" in cursors}


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


# --- what every shard shares -----------------------------------------------------------------


class _Shard:
    """The streams of one shard, its epoch, and the gap bookkeeping both
    kinds of reader share."""

    def __init__(self, keys: Keys, symbols: Iterable[str], channels: Iterable[Channel],
                 settings: ClientSettings) -> None:
        self.keys = keys
        self.settings = settings
        self.streams = [keys.stream(s, c) for s in symbols for c in channels]
        self.shard = keys.shard(keys.symbol_of(self.streams[0]))
        #: The epoch of the server the shard's streams were last read from.
        self.epoch: str | None = None
        self._lost = False
        #: Per stream, the newest trimmed record a gap was handed out for.
        self._reported: dict[str, str] = {}

    def connection_lost(self) -> None:
        """The driver saw a connection error: before the next read, look at
        the epoch again (the reconnection may have found another Redis)."""
        self._lost = True

    def _gap(self, stream: str, after: str, until: str, reason: GapReason) -> Gap:
        channel, symbol = self.keys.parse_stream(stream)
        return Gap(symbol, channel, after, until, reason, epoch=self.epoch)

    def _first_after(self, cursors: Mapping[str, str]) -> Plan[dict[str, str]]:
        """Per stream, the first entry after its cursor still in it: where this
        reader's next read starts, and so where a gap after the cursor ends.
        When there is none yet, the server's time now: every entry appended
        later gets an ID at or after it (IDs follow Redis's own clock)."""
        order = list(cursors)
        replies = yield Pipeline(tuple(
            Call("xrange", (stream,), {"min": f"({cursors[stream]}", "max": "+", "count": 1})
            for stream in order))
        out = {stream: _text(rows[0][0]) for stream, rows in zip(order, replies, strict=True)
               if rows}
        if len(out) < len(order):
            seconds, micros = yield Call("time")
            now = f"{int(seconds) * 1000 + int(micros) // 1000}-0"
            out.update((stream, now) for stream in order if stream not in out)
        return out

    def _epoch_gaps(self, cursors: Mapping[str, str], known: str | None) -> Plan[list[Gap]]:
        """Gaps after each cursor when the epoch is no longer ``known``
        (None: not known yet, which is not a gap); updates :attr:`epoch`."""
        current = yield EpochOf(self.streams[0])
        self._lost = False
        changed = known is not None and current != known
        self.epoch = current
        if not changed:
            return []
        log.warning("redis epoch changed (%s -> %s): it may have lost entries", known, current)
        return (yield from self._lost_after(cursors))

    def _lost_after(self, cursors: Mapping[str, str]) -> Plan[list[Gap]]:
        """Epoch gaps after each cursor, up to the first entry after what the
        server holds now; :meth:`_resume_after` moves the reader there.

        What a server lost in a failover or a restore is a suffix of the old
        server's stream, and what is appended to the new one follows it: an
        entry the new server holds after the cursor may be one that
        survived or one appended since, and the lost ones may lie between
        any two of them. Only past the end of what it holds now is nothing
        missing (a gap up to the first entry after the cursor would pass
        over the lost ones when the reader was behind)."""
        order = list(cursors)
        lasts = yield Pipeline(tuple(Call("xrevrange", (stream,), {"count": 1})
                                     for stream in order))
        bases = {}
        for stream, rows in zip(order, lasts, strict=True):
            last = _text(rows[0][0]) if rows else None
            cursor = cursors[stream]
            bases[stream] = last if last is not None and _after(last, cursor) else cursor
        firsts = yield from self._first_after(bases)
        gaps = [self._gap(stream, cursors[stream], firsts[stream], GapReason.EPOCH)
                for stream in order]
        self._resume_after(bases, gaps)
        return gaps

    def _resume_after(self, bases: Mapping[str, str], gaps: list[Gap]) -> None:
        """Read on after ``bases`` (per stream), past ``gaps``."""
        raise NotImplementedError

    def _trimmed_gaps(self, cursors: Mapping[str, str]) -> Plan[list[Gap]]:
        """Gaps after cursors that trimming has passed (entries were removed
        before this reader read them)."""
        order = list(cursors)
        records = yield Call("hmget", (self.keys.trimmed(self.shard), order))
        behind: dict[str, str] = {}
        for stream, last in zip(order, records, strict=True):
            if last is not None and _after(_text(last), cursors[stream]):
                behind[stream] = cursors[stream]
                self._reported[stream] = _text(last)
        if not behind:
            return []
        firsts = yield from self._first_after(behind)
        return [self._gap(stream, cursor, firsts[stream], GapReason.TRIMMED)
                for stream, cursor in behind.items()]


# --- latest-only reading ---------------------------------------------------------------------


class LatestShard(_Shard):
    """A plain reader's place in the streams of one shard (each symbol's
    stream of each channel).

    ``start`` per stream: ``"$"`` (from when :meth:`prepare` ran), ``"last"``
    (the latest event first), ``"0"`` (all the stream holds) or an entry ID
    (resume after it). :attr:`ids` holds the last entry ID read per stream.
    A reader further behind than the stream window gets a trimmed gap before
    the entries that follow it.
    """

    def __init__(self, keys: Keys, symbols: Iterable[str], channels: Iterable[Channel],
                 start: Start, settings: ClientSettings) -> None:
        symbols = list(symbols)
        super().__init__(keys, symbols, channels, settings)
        self._starts: dict[str, str] = {}
        for stream in self.streams:
            channel, symbol = keys.parse_stream(stream)
            self._starts[stream] = validate_start(start, symbol, channel)
        saved = start_epochs(start)
        # One server per shard: its symbols' cursors were read in one epoch.
        epochs = {saved[s] for s in symbols if s in saved}
        self._start_epoch = epochs.pop() if len(epochs) == 1 else None
        self.ids: dict[str, str] = {}

    def _resume_after(self, bases: Mapping[str, str], gaps: list[Gap]) -> None:
        self.ids.update(bases)

    def prepare(self) -> Plan[list[Gap]]:
        """Resolve the starts; the gaps after saved cursors, if any."""
        starts = self._starts
        replies = yield Pipeline(tuple(
            Call("xrevrange", (stream,), {"count": 2}) for stream in starts))
        self.ids = resolve_starts(starts, replies)
        saved = {stream: start for stream, start in starts.items()
                 if start not in ("$", "last", "0")}
        gaps = yield from self._epoch_gaps(saved, self._start_epoch)
        if not gaps and saved:
            gaps = yield from self._trimmed_gaps(saved)
        return gaps

    def read(self) -> Plan[list[Delivery | Gap]]:
        """One blocking ``XREAD``; its deliveries, cursors advanced past them,
        after a gap where entries may be missing before them."""
        out: list[Delivery | Gap] = []
        if self._lost:
            out.extend((yield from self._epoch_gaps(dict(self.ids), self.epoch)))
        before = dict(self.ids)
        reply = yield Call("xread", (before,), {
            "count": self.settings.count, "block": self.settings.block_ms})
        firsts: dict[str, str] = {}
        got: list[Delivery] = []
        for stream_key, entries in reply_streams(reply):
            name = _text(stream_key)
            if not entries:
                continue
            firsts[name] = _text(entries[0][0])
            for raw_id, fields in entries:
                delivery = decode_entry(self.keys, name, raw_id, fields, redelivered=False,
                                        epoch=self.epoch)
                if delivery is not None:
                    got.append(delivery)
            self.ids[name] = _text(entries[-1][0])
        if firsts:
            # Entries between the cursor and the first one read were trimmed
            # when the record says so and the record is older than what was
            # read (a trim after the read is not a gap: those were read).
            records = yield Call("hmget", (self.keys.trimmed(self.shard), list(firsts)))
            for (stream, first), record in zip(firsts.items(), records, strict=True):
                if record is None:
                    continue
                last = _text(record)
                reported = self._reported.get(stream)
                if (_after(last, before[stream]) and _after(first, last)
                        and (reported is None or _after(last, reported))):
                    self._reported[stream] = last
                    out.append(self._gap(stream, before[stream], first, GapReason.TRIMMED))
        out.extend(got)
        return out


# --- consumer groups -------------------------------------------------------------------------


def _group_gone(exc: redis.ResponseError) -> bool:
    """The group (or its stream) no longer exists: NOGROUP, or a blocked read
    that Redis 7 unblocks because the stream key was deleted."""
    text = str(exc)
    return "NOGROUP" in text or text.startswith("UNBLOCKED")


class GroupShard(_Shard):
    """A consumer-group reader's place in the streams of one shard.

    It starts by re-reading this consumer's pending entries (``XREADGROUP``
    from ID ``0``): entries delivered before a crash but never acknowledged
    come back first, marked ``redelivered``. Once a stream's pending list is
    exhausted it reads new entries (``>``). After a lost reply (a connection
    error during a read) it re-reads its pending list after the last entry
    it handed out, so entries Redis delivered into a reply that never came
    are not stranded there. With ``settings.claim_idle_ms`` it also claims
    what other consumers left pending that long (a consumer that died for
    good), never its own pending entries, which may still be in its hands.

    Gaps: what the hard cap trimmed past the group (reported by exactly one
    reader of the group), pending entries deleted from the stream, and an
    epoch change (after which the group itself may have moved back: entries
    this reader handed out before come again marked ``redelivered``, and
    what the group hands out inside the gap is acknowledged, not delivered).
    An epoch change while no reader ran is seen from ``saved``, the marks of
    a :class:`~.checkpoint.Checkpoint`: a stream whose mark is from another
    epoch gets an epoch gap after the mark's ``handled`` entry.
    :attr:`floors` is where each stream starts for the next checkpoint.
    """

    def __init__(self, keys: Keys, symbols: Iterable[str], channels: Iterable[Channel], *,
                 group: str, consumer: str, start: str, settings: ClientSettings,
                 saved: Mapping[str, Mark] | None = None,
                 clock: Any = time.monotonic) -> None:
        if start not in ("$", "0"):
            raise ValueError("group start must be '$' or '0'")
        if group == PERSIST_GROUP:
            raise ValueError(f"{PERSIST_GROUP!r} is the persist workers' group: choose another")
        super().__init__(keys, symbols, channels, settings)
        self.group = group
        self.consumer = consumer
        self.start = start
        self.clock = clock
        self._pending: dict[str, str] = dict.fromkeys(self.streams, "0")
        #: Per stream, the newest entry this reader handed out.
        self.handed: dict[str, str] = {}
        #: Per stream, the end (exclusive) of the newest trimmed gap reported.
        self.covered: dict[str, str] = {}
        #: Entries up to these (per stream) may have been handed out before.
        self._seen_upto: dict[str, str] = {}
        self._claimed_at = 0.0
        self._saved = {stream: mark for stream, mark in (saved or {}).items()
                       if stream in self.streams}
        #: Per stream, the range of the last epoch gap reported: what the
        #: group hands out inside it is acknowledged, not delivered.
        self._skip: dict[str, tuple[str, str]] = {}
        #: Per stream, the mark a checkpoint starts from (set by :meth:`prepare`).
        self.floors: dict[str, Mark] = {}

    @property
    def recovering(self) -> bool:
        """Still reading this consumer's own pending entries."""
        return bool(self._pending)

    def _ensure_groups(self) -> Plan[None]:
        for stream in self.streams:
            try:
                yield Call("xgroup_create", (stream, self.group),
                           {"id": self.start, "mkstream": True})
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def prepare(self) -> Plan[list[Gap]]:
        """Create the group on each stream if missing, at ``start``; the
        epoch gaps after saved marks of another epoch."""
        yield from self._ensure_groups()
        yield from self._epoch_gaps({}, None)
        stale = {stream: mark for stream, mark in self._saved.items() if mark.epoch != self.epoch}
        self.floors = yield from self._group_floors([s for s in self.streams if s not in stale])
        for stream, mark in self._saved.items():
            floor = self.floors.get(stream)
            if stream in stale or floor is None or not _after(mark.handled, floor.handled):
                continue
            # Same epoch, and the mark is past the group: a gap the last
            # life was told of ended there, and what the group still holds
            # inside it was not acknowledged before that life stopped. It
            # is not delivered now either (it was filled, or reported).
            self._skip[stream] = ("0-0", next_id(mark.handled))
            self.floors[stream] = mark
        if not stale:
            return []
        self.floors.update(stale)
        log.warning("group %s consumer %s: %d streams were last read in another redis epoch"
                    " (%s, now %s): it may have lost entries", self.group, self.consumer,
                    len(stale), next(iter(stale.values())).epoch, self.epoch)
        self._seen_upto = {stream: mark.high for stream, mark in stale.items()}
        return self._marked((yield from self._lost_after(
            {s: m.handled for s, m in stale.items()})))

    def _marked(self, gaps: list[Gap]) -> list[Gap]:
        """Epoch gaps with how far their range may hold entries this
        consumer handed out before (a fill marks those ``redelivered``)."""
        return [replace(gap, redelivered_upto=self._seen_upto.get(
            self.keys.stream(gap.symbol, gap.channel))) for gap in gaps]

    def _group_floors(self, order: list[str]) -> Plan[dict[str, Mark]]:
        """Per stream, the mark of this consumer's place in the group: every
        entry up to the group's last-delivered ID and below this consumer's
        oldest pending one went to the group and was handled."""
        if not order:
            return {}
        replies = yield Pipeline(tuple(
            call for stream in order for call in (
                Call("xinfo_groups", (stream,)),
                Call("xpending_range", (stream, self.group), {
                    "min": "-", "max": "+", "count": 1, "consumername": self.consumer}))))
        out = {}
        for i, stream in enumerate(order):
            groups, pending = replies[2 * i], replies[2 * i + 1]
            delivered = next((_text(g["last-delivered-id"]) for g in groups
                              if _text(g["name"]) == self.group), "0-0")
            floor = delivered
            if pending:
                oldest = prev_id(_text(pending[0]["message_id"]))
                floor = oldest if _after(delivered, oldest) else delivered
            out[stream] = Mark(floor, floor, str(self.epoch))
        return out

    def _resume_after(self, bases: Mapping[str, str], gaps: list[Gap]) -> None:
        for gap in gaps:
            stream = self.keys.stream(gap.symbol, gap.channel)
            start, end = gap.after, gap.until
            old = self._skip.get(stream)
            if old is not None and not _after(start, old[1]):
                # The last gap's range may still hold entries the group has
                # not handed this reader yet (a second epoch change soon
                # after the first): skipped as well, or the group would
                # deliver what that gap's fill already did.
                start = old[0] if _after(start, old[0]) else start
                end = old[1] if _after(old[1], end) else end
            self._skip[stream] = (start, end)
            if stream not in self.covered or _after(gap.until, self.covered[stream]):
                self.covered[stream] = gap.until

    def _done_upto(self, stream: str) -> str:
        """The newest entry of ``stream`` this reader is done with: the
        newest it handed out, or the last before the end of a gap it
        reported (a fill delivered that range, or the application was told
        of it), whichever is later; before either, its place in the group."""
        done = self.handed.get(stream) or (
            self.floors[stream].handled if stream in self.floors else "0-0")
        covered = self.covered.get(stream)
        if covered is not None and _after(prev_id(covered), done):
            return prev_id(covered)
        return done

    def _skipped(self, stream: str, entry_id: str) -> bool:
        """Inside the last epoch gap reported for ``stream``."""
        span = self._skip.get(stream)
        return span is not None and _after(entry_id, span[0]) and _after(span[1], entry_id)

    def connection_lost(self) -> None:
        super().connection_lost()
        # A read whose reply was lost may have delivered entries into this
        # consumer's pending list: read them back from after the last one
        # handed out (not ">", which would strand them).
        for stream in self.streams:
            self._pending.setdefault(stream, self.handed.get(stream, "0"))

    def _read_streams(self) -> dict[str, str]:
        if self._pending:
            return dict(self._pending)
        return dict.fromkeys(self.streams, ">")

    def read(self) -> Plan[list[Delivery | Gap]]:
        out: list[Delivery | Gap] = []
        if self._lost:
            # Not only what it handed out: a second epoch change soon after a
            # first, before the group handed it anything past that gap, must
            # not report (and fill) the first gap's range again.
            cursors = {s: self._done_upto(s) for s in self.streams}
            gaps = yield from self._epoch_gaps(cursors, self.epoch)
            if gaps:
                # Redis moved back: its group may hand this reader's entries
                # out again; they are marked redelivered.
                self._seen_upto = dict(self.handed)
                self._pending = dict.fromkeys(self.streams, "0")
            out.extend(self._marked(gaps))
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
            self._pending = dict.fromkeys(self.streams, "0")
            return out
        taken, deleted, skipped = self._take(reply, recovering)
        claimed, more_deleted = yield from self._claim()
        for delivery in claimed:
            stream = self.keys.stream(delivery.symbol, delivery.channel)
            if self._skipped(stream, delivery.entry_id):
                skipped.append((stream, delivery.entry_id))
            else:
                taken.append(delivery)
        deleted.extend(more_deleted)
        group_gaps = yield from self._group_gaps()
        out.extend(group_gaps)
        for stream, entry_id in deleted:
            if not any(self.keys.stream(gap.symbol, gap.channel) == stream
                       and _after(entry_id, gap.after) and _after(gap.until, entry_id)
                       for gap in group_gaps):
                out.append(self._gap(stream, prev_id(entry_id), next_id(entry_id),
                                     GapReason.DELETED))
        if deleted or skipped:
            # Nothing left to deliver: acknowledged, and reported (above, or
            # in the epoch gap that covers them).
            yield Pipeline(tuple(Call("xack", (stream, self.group, entry_id))
                                 for stream, entry_id in [*deleted, *skipped]))
        for delivery in taken:
            stream = self.keys.stream(delivery.symbol, delivery.channel)
            if stream not in self.handed or _after(delivery.entry_id, self.handed[stream]):
                self.handed[stream] = delivery.entry_id
        out.extend(taken)
        return out

    def _redelivered(self, stream: str, entry_id: str, *, pending: bool) -> bool:
        seen = self._seen_upto.get(stream)
        if seen is not None and not _after(entry_id, seen):
            return True
        handed = self.handed.get(stream)
        # From the pending list: handed out before unless it is newer than
        # anything this reader handed out in this life (a lost reply's).
        return pending and (handed is None or not _after(entry_id, handed))

    def _take(self, reply: Any, recovering: bool
              ) -> tuple[list[Delivery], list[tuple[str, str]], list[tuple[str, str]]]:
        """The deliveries of a read; the entries deleted while pending; the
        entries inside an epoch gap (acknowledged unread)."""
        out: list[Delivery] = []
        deleted: list[tuple[str, str]] = []
        skipped: list[tuple[str, str]] = []
        seen: set[str] = set()
        for stream_key, entries in reply_streams(reply):
            name = _text(stream_key)
            seen.add(name)
            for raw_id, fields in entries:
                entry_id = _text(raw_id)
                if self._skipped(name, entry_id):
                    skipped.append((name, entry_id))
                    continue
                delivery = decode_entry(
                    self.keys, name, raw_id, fields, epoch=self.epoch,
                    redelivered=self._redelivered(name, entry_id, pending=recovering))
                if delivery is None:
                    deleted.append((name, entry_id))
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
        return out, deleted, skipped

    def _claim(self) -> Plan[tuple[list[Delivery], list[tuple[str, str]]]]:
        """Entries other consumers left pending longer than ``claim_idle_ms``
        (looked for every half of it)."""
        idle = self.settings.claim_idle_ms
        now = self.clock()
        out: list[Delivery] = []
        deleted: list[tuple[str, str]] = []
        if idle is None or self.recovering or now - self._claimed_at < idle / 2000:
            return out, deleted
        self._claimed_at = now
        for stream in self.streams:
            rows = yield Call("xpending_range", (stream, self.group), {
                "min": "-", "max": "+", "count": self.settings.count, "idle": idle})
            theirs = [row["message_id"] for row in rows
                      if _text(row["consumer"]) != self.consumer]
            if not theirs:
                continue
            claimed = yield Call("xclaim", (stream, self.group, self.consumer, idle, theirs))
            for raw_id, fields in claimed:
                delivery = decode_entry(self.keys, stream, raw_id, fields, redelivered=True,
                                        epoch=self.epoch)
                if delivery is None:
                    deleted.append((stream, _text(raw_id)))
                else:
                    out.append(delivery)
        return out, deleted

    def _group_gaps(self) -> Plan[list[Gap]]:
        """The ranges the hard cap trimmed past this group, taken (and so
        reported by this reader only)."""
        fields = tuple(streams.group_gap_field(s, self.group) for s in self.streams)
        reply = yield Script(streams.TAKE_SCRIPT, (self.keys.group_gaps(self.shard),), fields)
        out = []
        for stream, (after, until) in streams.parse_group_gaps(reply).items():
            # A record may overlap what this reader has covered already: the
            # cap trims on while a reader fills a gap (the group has not read
            # on meanwhile), and after a failover the promoted replica may
            # hold a record this reader took. Only the rest is missing.
            past = self._past(stream)
            if past is not None and not _after(until, past):
                log.info("dropping a gap of %s this reader is past: %s..%s", stream, after,
                         until)
                continue
            if past is not None and _after(past, after):
                after = prev_id(past)
            self.covered[stream] = until
            out.append(self._gap(stream, after, until, GapReason.TRIMMED))
        return out

    def _past(self, stream: str) -> str | None:
        """The smallest entry ID of ``stream`` this reader has neither handed
        out nor reported in a gap below (None: nothing yet)."""
        handed = self.handed.get(stream)
        covered = self.covered.get(stream)
        after_handed = None if handed is None else next_id(handed)
        if after_handed is None or (covered is not None and _after(covered, after_handed)):
            return covered
        return after_handed


#: How often a fill waiting for the persist workers (:func:`persisted_plan`)
#: looks again, seconds.
FILL_POLL_S = 0.1


def persisted_plan(keys: Keys, gap: Gap) -> Plan[bool]:
    """Whether the persist workers have stored every entry the server holds
    before ``gap.until`` (True too when no persist group reads the stream:
    nothing will be stored to wait for). A reader filling an epoch gap waits
    for it: the gap runs past what the new server held, and the history
    holds all of it only once the workers have caught up."""
    stream = keys.stream(gap.symbol, gap.channel)
    try:
        groups, pending, below = yield Pipeline((
            Call("xinfo_groups", (stream,)),
            Call("xpending", (stream, PERSIST_GROUP)),
            Call("xrevrange", (stream,), {"max": f"({gap.until}", "min": "-", "count": 1})))
    except redis.ResponseError:
        return True  # no stream, or no persist group
    info = next((g for g in groups if _text(g["name"]) == PERSIST_GROUP), None)
    if info is None:
        return True
    oldest = pending.get("min") if pending else None
    if oldest is not None and _after(gap.until, _text(oldest)):
        return False
    return not below or not _after(_text(below[0][0]), _text(info["last-delivered-id"]))


def ack_plan(keys: Keys, group: str, deliveries: Iterable[Delivery]) -> Plan[None]:
    """Acknowledge handled deliveries of any shard in one round trip (idempotent)."""
    grouped: dict[str, list[str]] = {}
    for delivery in deliveries:
        if delivery.filled:
            continue  # from PostgreSQL history: nothing pending in Redis
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
