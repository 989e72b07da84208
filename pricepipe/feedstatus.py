"""Feed status as data: the status events an upstream feed publishes and
the state it keeps current. Pure code, no I/O (the publisher writes them;
the HTTP API and the websocket server read them).

**Status events** go to the stream :meth:`~pricepipe.keys.Keys.feed_status`
(``pp:{feeds}:status``), one field ``s`` per entry holding a JSON object with
every key always present (null when absent)::

    {"feed": "binance-ws", "kind": "gap_unrepairable", "ts_us": 1767323045000000,
     "ts": "2026-01-02T03:04:05.000000Z", "symbol": "BINANCE:BTCUSDT",
     "first_id": 1001, "last_id": 1004, "trades": null, "reason": "not_served",
     "connection": 0}

``kind`` is one of :class:`FeedEvent`: ``connected`` and ``disconnected``
(``reason``: why, e.g. ``closed``, ``silent``, ``lifetime``, ``error``),
``stale`` (``reason``: the silent channel), ``gap_detected`` (``first_id`` ..
``last_id`` missing, inclusive; ``last_id`` null: every trade after
``first_id - 1`` may be missing, after a reconnect), ``gap_repaired``
(``trades`` recovered of ``first_id`` .. ``last_id``), ``gap_unrepairable``
(``first_id`` .. ``last_id`` lost for good, ``reason``: ``not_served``,
``budget``, ``error``, ``overflow``) and ``subscription_refused``
(``reason``: the venue's words). Trade ids are the venue's. Events of one
feed are in the order they happened.

**Current state** goes to the hash :meth:`~pricepipe.keys.Keys.feed_states`
(``pp:{feeds}:state``), field = feed name, value = a JSON object::

    {"feed": "binance-ws", "source": "binance-ws", "venue": "binance",
     "state": "connected", "since_us": ..., "last_message_us": ...,
     "updated_us": ..., "connections": 1, "connected": 1,
     "symbols": ["BINANCE:BTCUSDT"], "counts": {"messages": 0, ...}}

``state`` is ``connecting`` (never connected yet), ``connected`` (every
connection up), ``partial`` (some), ``disconnected`` (none), ``stale`` (a
connection noticed silence and is reconnecting) or ``stopped``; ``since_us``
is when it entered that state. ``counts`` holds the :data:`COUNTS` totals
since the feed started.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .clock import format_us
from .codec import decode_json, encode_json
from .events import check_ts
from .exceptions import DecodeError

#: The one field of a status event's entry.
F_STATUS = b"s"


class FeedEvent(StrEnum):
    """What happened to a feed."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STALE = "stale"
    GAP_DETECTED = "gap_detected"
    GAP_REPAIRED = "gap_repaired"
    GAP_UNREPAIRABLE = "gap_unrepairable"
    SUBSCRIPTION_REFUSED = "subscription_refused"


class FeedState(StrEnum):
    """Where a feed is now."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    PARTIAL = "partial"
    DISCONNECTED = "disconnected"
    STALE = "stale"
    STOPPED = "stopped"


#: The counters of a feed's state, all since it started.
COUNTS = (
    "messages",            # websocket messages received
    "trades",              # trades published (live and repaired)
    "quotes",              # quotes published
    "duplicates",          # trades or quotes received again (a repeat, a repair overlap)
    "malformed",           # messages that could not be read (skipped)
    "unknown",             # well-formed messages of a kind not used (skipped)
    "rejected",            # trades or quotes the event checks refused
    "reconnects",          # connections opened after the first
    "gaps_detected",
    "gaps_repaired",
    "gaps_unrepairable",
    "trades_repaired",     # trades recovered by repairs
    "trades_unrepairable",  # trade ids lost for good
)


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """One status event (see the module docstring)."""

    feed: str
    kind: FeedEvent
    ts_us: int
    symbol: str | None = None
    first_id: int | None = None
    last_id: int | None = None
    trades: int | None = None
    reason: str | None = None
    connection: int | None = None

    def __post_init__(self) -> None:
        check_ts(self.ts_us, "ts_us")
        if type(self.kind) is not FeedEvent:
            object.__setattr__(self, "kind", FeedEvent(self.kind))


def status_dict(status: FeedStatus, entry_id: str | None = None) -> dict[str, Any]:
    """The JSON object of a status event (``id``: its stream entry, when known)."""
    out: dict[str, Any] = {
        "feed": status.feed, "kind": str(status.kind), "ts_us": status.ts_us,
        "ts": format_us(status.ts_us), "symbol": status.symbol, "first_id": status.first_id,
        "last_id": status.last_id, "trades": status.trades, "reason": status.reason,
        "connection": status.connection,
    }
    if entry_id is not None:
        out["id"] = entry_id
    return out


def encode_status(status: FeedStatus) -> tuple[bytes, bytes]:
    """``(field, value)`` of a status event's stream entry."""
    return F_STATUS, encode_json(status_dict(status))


def _opt_int(obj: Mapping[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"status {name} {value!r} is not an integer")
    return value


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise DecodeError(f"status {name} {value!r} is not text")
    return value


def decode_status(fields: Mapping[bytes, bytes] | Sequence[bytes]) -> FeedStatus:
    """The status event of an entry's fields (a mapping or redis-py's flat
    list). Raises :exc:`~pricepipe.exceptions.DecodeError`."""
    if isinstance(fields, Mapping):
        value = fields.get(F_STATUS)
    else:
        pairs = dict(zip(fields[::2], fields[1::2], strict=True))
        value = pairs.get(F_STATUS)
    if value is None:
        raise DecodeError("status entry without its field")
    obj = decode_json(value)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("feed"), str):
        raise DecodeError("status entry is not a status object")
    ts_us = _opt_int(obj, "ts_us")
    if ts_us is None:
        raise DecodeError("status entry without ts_us")
    try:
        return FeedStatus(obj["feed"], FeedEvent(str(obj.get("kind"))), ts_us,
                          _opt_str(obj, "symbol"), _opt_int(obj, "first_id"),
                          _opt_int(obj, "last_id"), _opt_int(obj, "trades"),
                          _opt_str(obj, "reason"), _opt_int(obj, "connection"))
    except ValueError as exc:
        raise DecodeError(f"status entry: {exc}") from exc


@dataclass(slots=True)
class FeedSnapshot:
    """A feed's current state (see the module docstring); mutable, kept by
    the feed and written whole after each change."""

    feed: str
    source: str
    venue: str
    symbols: list[str]
    connections: int
    state: FeedState = FeedState.CONNECTING
    since_us: int | None = None
    last_message_us: int | None = None
    updated_us: int | None = None
    connected: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    def to_dict(self) -> dict[str, Any]:
        return {"feed": self.feed, "source": self.source, "venue": self.venue,
                "state": str(self.state), "since_us": self.since_us,
                "last_message_us": self.last_message_us, "updated_us": self.updated_us,
                "connections": self.connections, "connected": self.connected,
                "symbols": list(self.symbols), "counts": dict(self.counts)}


def encode_state(snapshot: FeedSnapshot) -> bytes:
    """The hash value of a feed's state."""
    return encode_json(snapshot.to_dict())


def decode_state(value: bytes | str) -> dict[str, Any]:
    """A feed's state as written by :func:`encode_state` (a dict with every
    key). Raises :exc:`~pricepipe.exceptions.DecodeError`."""
    obj = decode_json(value)
    if not isinstance(obj, dict) or not isinstance(obj.get("feed"), str):
        raise DecodeError("feed state is not a state object")
    try:
        FeedState(str(obj.get("state")))
    except ValueError as exc:
        raise DecodeError(f"feed state: {exc}") from exc
    counts = obj.get("counts")
    if not isinstance(counts, dict):
        raise DecodeError("feed state without counts")
    return obj


# --- what readers show (the HTTP API's /v1/feeds, the websocket's status snapshot) -----------

#: A feed whose state was last rewritten longer ago than this is shown
#: ``stale`` by readers (:func:`feed_views`): its process stopped writing
#: (killed, hung, or cut off from Redis), so what the state says is no longer
#: known to be true. A running feed rewrites its state on every change and
#: every ``PRICEPIPE_FEED_STATE_INTERVAL_S`` (1 s by default) besides.
STALE_AFTER_S = 10.0

#: Readers look for a feed's open gaps (:func:`open_gaps`) among this many
#: newest status events: a feed repairs a gap in seconds, writing a handful
#: of events meanwhile, so a gap detected before them is closed or stuck.
OPEN_GAP_WINDOW = 1000

#: ``stale_reason`` of a feed shown stale: it said so itself (a connection
#: fell silent and is being replaced)...
STALE_REPORTED = "reported"
#: ...or it has not rewritten its state for ``stale_after_s``.
STALE_NO_UPDATE = "no_update"


def open_gaps(events: Iterable[tuple[str, FeedStatus]]) -> dict[str, list[dict[str, Any]]]:
    """Per feed, the gaps detected and not closed yet among ``events``
    (``(entry_id, status)``, oldest first), in the order detected: each
    ``{"symbol", "first_id", "last_id", "since_us", "since", "id"}``.

    A feed repairs one gap per symbol at a time and closes every gap it
    detects with ``gap_repaired``, ``gap_unrepairable`` or both (a partial
    repair), so a symbol has an open gap exactly when its last gap event is
    ``gap_detected``. A feed's ``disconnected`` with reason ``stop`` closes
    its open gaps too: a stop drops the repairs in flight, and the next start
    repairs from the stream's last trade (and reports what it finds). Only
    what ``events`` hold is seen: a gap detected before the oldest of them
    and still open is missed."""
    last: dict[tuple[str, str | None], tuple[str, FeedStatus] | None] = {}
    for entry_id, status in events:
        kind = status.kind
        if kind is FeedEvent.GAP_DETECTED:
            last.pop((status.feed, status.symbol), None)  # re-inserted: detection order
            last[(status.feed, status.symbol)] = (entry_id, status)
        elif kind is FeedEvent.GAP_REPAIRED or kind is FeedEvent.GAP_UNREPAIRABLE:
            last[(status.feed, status.symbol)] = None
        elif kind is FeedEvent.DISCONNECTED and status.reason == "stop":
            for key in [key for key in last if key[0] == status.feed]:
                last[key] = None
    out: dict[str, list[dict[str, Any]]] = {}
    for (feed, symbol), found in last.items():
        if found is not None:
            entry_id, status = found
            out.setdefault(feed, []).append({
                "symbol": symbol, "first_id": status.first_id, "last_id": status.last_id,
                "since_us": status.ts_us, "since": format_us(status.ts_us), "id": entry_id})
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _iso(value: Any) -> str | None:
    return format_us(value) if isinstance(value, int) and not isinstance(value, bool) else None


def feed_view(state: Mapping[str, Any], *, now_us: int, stale_after_s: float = STALE_AFTER_S,
              gaps: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A feed's state (:func:`decode_state`'s) as readers show it: every key
    of the state, ``state`` being what the feed is *shown* as, plus
    ``reported_state`` (as the feed last wrote it), ``stale_reason`` (None,
    :data:`STALE_REPORTED` or :data:`STALE_NO_UPDATE`), ``age_s`` (seconds
    since the feed last rewrote it, None if it never said), ``since``,
    ``last_message`` and ``updated`` (the ``*_us`` times as ISO-8601, or
    None) and ``open_gaps`` (``gaps``, see :func:`open_gaps`).

    The rule: a feed that is not ``stopped`` and has not rewritten its state
    for more than ``stale_after_s`` (or never said when) is shown ``stale``,
    whatever it last said; a ``stopped`` feed stays ``stopped`` (it is not
    expected to write)."""
    reported = str(state["state"])
    updated_us = state.get("updated_us")
    age_s = (max(now_us - updated_us, 0) / 1e6
             if isinstance(updated_us, int) and not isinstance(updated_us, bool) else None)
    shown, why = reported, None
    if reported == FeedState.STALE:
        why = STALE_REPORTED
    elif reported != FeedState.STOPPED and (age_s is None or age_s > stale_after_s):
        shown, why = str(FeedState.STALE), STALE_NO_UPDATE
    view = dict(state)
    view.update(state=shown, reported_state=reported, stale_reason=why, age_s=age_s,
                since=_iso(state.get("since_us")), last_message=_iso(state.get("last_message_us")),
                updated=_iso(updated_us), open_gaps=[dict(gap) for gap in gaps])
    return view


def feed_views(states: Mapping[Any, Any], recent: Iterable[tuple[Any, Any]], *, now_us: int,
               stale_after_s: float = STALE_AFTER_S
               ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every feed as readers show it (:func:`feed_view`), sorted by name,
    from Redis's replies: ``states`` the state hash (``HGETALL``), ``recent``
    status entries ``(entry_id, fields)`` oldest first (an ``XRANGE``, or an
    ``XREVRANGE`` reversed) for :func:`open_gaps`. Also ``errors``: feed
    name -> why its state could not be read (it is left out); unreadable
    status entries are skipped."""
    events: list[tuple[str, FeedStatus]] = []
    for entry_id, fields in recent:
        try:
            events.append((_text(entry_id), decode_status(fields)))
        except DecodeError:
            continue
    gaps = open_gaps(events)
    views: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for raw_name, value in states.items():
        name = _text(raw_name)
        try:
            state = decode_state(value)
        except DecodeError as exc:
            errors[name] = str(exc)
            continue
        views.append(feed_view(state, now_us=now_us, stale_after_s=stale_after_s,
                               gaps=gaps.get(state["feed"], ())))
    views.sort(key=lambda view: str(view["feed"]))
    return views, errors
