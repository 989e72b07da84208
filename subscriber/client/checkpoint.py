"""Where a consumer-group reader stands, kept outside Redis
(``GroupReader(..., checkpoint=path)``).

A consumer group's state (its last-delivered ID, its pending lists) lives in
Redis and fails over with it. A consumer that was stopped while Redis lost
entries (a failover to a replica that was behind, a restore of an older
file) finds the new server's copy of the group, and nothing in it says what
is missing. A running reader sees the epoch change (:mod:`.core`); a new
process knows only what it kept. The checkpoint keeps, per stream, a
:class:`Mark`: the epoch the reader read in, the entry up to which the
application dealt with everything it got (acknowledged it, or was told of a
gap over it), and the newest entry it got. A reader started from a mark of
another epoch reports the range after it as an ``epoch`` gap.

The file is rewritten (a new file renamed over the old) at most every
``every_s`` and on close, without ``fsync``: an older mark is always safe
to read on from (it names less as done, and an older epoch at worst reports
a gap that a newer mark would not have), so losing the last writes in a
power cut costs at most a spurious gap. :class:`Progress` is the pure
bookkeeping; :func:`encode_marks` / :func:`parse_marks` the file format.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pricepipe import codec
from pricepipe.exceptions import CheckpointError
from pricepipe.keys import Keys

from .delivery import Delivery, Gap

#: The file format's version (``"version"`` in the file).
VERSION = 1


@dataclass(frozen=True, slots=True)
class Mark:
    """One stream's place. ``handled``: every entry of the stream up to it
    that this consumer got was acknowledged, or lies in a gap it was told of
    (or belongs to the group's past: delivered and acknowledged before this
    reader started). ``high``: the newest entry it got (entries up to it may
    have been acted on). ``epoch``: the server's epoch when it got them."""

    handled: str
    high: str
    epoch: str


class Progress:
    """What the application got and acknowledged, per stream, as
    :class:`Mark` s. Not thread-safe: the sync reader calls it under a lock."""

    def __init__(self) -> None:
        self._done: dict[str, int] = {}
        self._high: dict[str, int] = {}
        self._open: dict[str, set[int]] = {}
        self._epoch: dict[str, str] = {}

    def seed(self, stream: str, mark: Mark) -> None:
        """Start ``stream`` from ``mark`` (a saved one, or the group's place)."""
        self._done[stream] = codec.pack_entry_id(mark.handled)
        self._high[stream] = max(codec.pack_entry_id(mark.high), self._done[stream])
        self._epoch[stream] = mark.epoch
        self._open.setdefault(stream, set())

    def got(self, stream: str, entry_id: str, *, epoch: str | None, pending: bool) -> None:
        """The application got an entry; ``pending``: it stays pending in
        Redis until acknowledged (a filled one, from PostgreSQL, does not)."""
        packed = codec.pack_entry_id(entry_id)
        if pending:
            self._open.setdefault(stream, set()).add(packed)
        else:
            self._done[stream] = max(self._done.get(stream, 0), packed)
        self._high[stream] = max(self._high.get(stream, 0), packed)
        if epoch is not None:
            self._epoch[stream] = epoch

    def told(self, stream: str, until: str, *, epoch: str | None) -> None:
        """The application was told of a gap ending before ``until``."""
        packed = codec.pack_entry_id(until) - 1  # prev_id: the gap's last possible entry
        self._done[stream] = max(self._done.get(stream, 0), packed)
        self._high[stream] = max(self._high.get(stream, 0), packed)
        if epoch is not None:
            self._epoch[stream] = epoch

    def acked(self, stream: str, entry_id: str) -> None:
        packed = codec.pack_entry_id(entry_id)
        opened = self._open.get(stream)
        if opened is not None and packed in opened:
            opened.discard(packed)
            self._done[stream] = max(self._done.get(stream, 0), packed)

    def marks(self) -> dict[str, Mark]:
        """Per stream with a known epoch, its mark now."""
        out = {}
        for stream, epoch in self._epoch.items():
            done = self._done.get(stream, 0)
            opened = self._open.get(stream)
            if opened:
                done = min(done, min(opened) - 1)
            out[stream] = Mark(codec.unpack_entry_id(done),
                               codec.unpack_entry_id(self._high.get(stream, done)), epoch)
        return out


def encode_marks(group: str, consumer: str, marks: Mapping[str, Mark]) -> bytes:
    """The checkpoint file's bytes (JSON)."""
    return codec.encode_json({
        "version": VERSION, "group": group, "consumer": consumer,
        "streams": {stream: {"handled": m.handled, "high": m.high, "epoch": m.epoch}
                    for stream, m in sorted(marks.items())},
    })


def parse_marks(data: bytes, group: str, consumer: str) -> dict[str, Mark]:
    """The marks of a checkpoint file; :exc:`CheckpointError` when it is not
    one, or is another group's or consumer's."""
    try:
        doc = codec.decode_json(data)
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise CheckpointError(f"not a version {VERSION} checkpoint")
        if (doc.get("group"), doc.get("consumer")) != (group, consumer):
            raise CheckpointError(
                f"the checkpoint is consumer {doc.get('consumer')!r} of group "
                f"{doc.get('group')!r}, not {consumer!r} of {group!r}")
        out = {}
        for stream, m in dict(doc["streams"]).items():
            mark = Mark(str(m["handled"]), str(m["high"]), str(m["epoch"]))
            codec.pack_entry_id(mark.handled)  # validates both IDs
            codec.pack_entry_id(mark.high)
            out[str(stream)] = mark
        return out
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"unreadable checkpoint: {exc}") from exc


class Checkpoint:
    """The checkpoint file of consumer ``consumer`` of ``group`` at ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, group: str, consumer: str,
                 every_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.group = group
        self.consumer = consumer
        self.every_s = every_s
        self._clock = clock
        self._saved_at: float | None = None

    def load(self) -> dict[str, Mark]:
        """The saved marks ({} when there is no file yet)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}") from exc
        try:
            return parse_marks(data, self.group, self.consumer)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.path}: {exc}") from exc

    def due(self) -> bool:
        """Whether ``every_s`` has passed since the last save."""
        return self._saved_at is None or self._clock() - self._saved_at >= self.every_s

    def save(self, marks: Mapping[str, Mark]) -> None:
        """Replace the file with ``marks`` (readers see the old or the new one)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(encode_marks(self.group, self.consumer, marks))
        os.replace(tmp, self.path)
        self._saved_at = self._clock()


class Tracker:
    """A group reader's :class:`Progress`, kept in its :class:`Checkpoint`:
    what both reader flavours do with what the application gets and
    acknowledges (the sync one under a lock)."""

    def __init__(self, keys: Keys, checkpoint: Checkpoint) -> None:
        self.keys = keys
        self.checkpoint = checkpoint
        self.progress = Progress()
        #: The marks saved by the last life (read once, before the reader starts).
        self.saved = checkpoint.load()

    def started(self, floors: Mapping[str, Mark]) -> None:
        """A shard is prepared: its streams start from ``floors``."""
        for stream, mark in floors.items():
            self.progress.seed(stream, mark)
        self.checkpoint.save(self.progress.marks())

    def got(self, item: Delivery | Gap) -> None:
        stream = self.keys.stream(item.symbol, item.channel)
        if isinstance(item, Gap):
            self.progress.told(stream, item.until, epoch=item.epoch)
        else:
            self.progress.got(stream, item.entry_id, epoch=item.epoch, pending=not item.filled)

    def acked(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            if not delivery.filled:
                self.progress.acked(self.keys.stream(delivery.symbol, delivery.channel),
                                    delivery.entry_id)
        if self.checkpoint.due():
            self.checkpoint.save(self.progress.marks())

    def close(self) -> None:
        self.checkpoint.save(self.progress.marks())


def tracker(keys: Keys, value: Any, *, group: str, consumer: str) -> Tracker | None:
    """A reader's ``checkpoint=`` argument (a path or a :class:`Checkpoint`)
    as its tracker (None: no checkpoint)."""
    if value is None:
        return None
    if not isinstance(value, Checkpoint):
        value = Checkpoint(value, group=group, consumer=consumer)
    elif (value.group, value.consumer) != (group, consumer):
        raise CheckpointError(f"the checkpoint is for consumer {value.consumer!r} of group "
                              f"{value.group!r}, not {consumer!r} of {group!r}")
    return Tracker(keys, value)
