"""The websocket protocol (version 2): parsing client messages and encoding
server messages. Pure functions, no I/O (the server in
:mod:`pricepipe.subscriber.ws.server` is a thin layer around them). The
README's "Websocket protocol" section documents every message.

A subscription is a ``(symbol, channel)`` pair: a symbol's trades, quotes or
one-minute bars (:class:`~pricepipe.keys.Channel`), each its own stream with
its own entry IDs, snapshot, resume cursor and slow-consumer rule. The
``status`` channel (:class:`Feeds`) has no symbol: it is one stream, every
upstream feed's status events (:mod:`pricepipe.feedstatus`), subscribed
without ``symbols``; wherever the protocol keys something by symbol
(``resume``, ``epochs``, ``unrecoverable``) it goes under the name
:data:`FEEDS`, which no symbol can have (symbols are upper case).

Client to server (JSON text frames)::

    {"op": "auth", "token": "..."}
    {"op": "subscribe", "symbols": ["AAPL"], "channels": ["trades", "quotes"],
     "resume": {"AAPL": {"trades": "1700000000000-0", "epoch": "5f1e..."}},
     "snapshot": true, "req": 1}
    {"op": "subscribe", "channels": ["status"], "resume": {"feeds": {"status": "1700-0"}}}
    {"op": "unsubscribe", "symbols": ["AAPL"], "channels": ["quotes"], "req": 2}
    {"op": "ping", "req": 3}

Server to client: objects with a ``type`` (:data:`MESSAGE_TYPES`). Data
frames carry a list of entries of one channel (``trades``, ``quotes``,
``bars``, ``status``) so that several entries share one frame; every entry
carries its stream entry ID as ``id``.

Epochs: entry IDs are only comparable within one run of the Redis server
that holds the stream (:func:`pricepipe.streams.epoch_of`). The server names
the epoch of each symbol's streams in ``subscribed``, ``snapshot`` and
``unrecoverable``; a client sends it back with its resume cursors, and a
cursor from another epoch is answered with ``unrecoverable`` (``epoch``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pricepipe import codec
from pricepipe.events import SYMBOL_RE, validate_symbol
from pricepipe.exceptions import DecodeError, InvalidEventError, ProtocolError
from pricepipe.feedstatus import decode_status, status_dict
from pricepipe.keys import Channel

#: Protocol version announced in ``hello``; bumped on incompatible changes.
VERSION = 2



class Feeds(StrEnum):
    """The channel of no symbol: every upstream feed's status events, one
    stream (:meth:`~pricepipe.keys.Keys.feed_status`)."""

    STATUS = "status"


#: The status channel.
STATUS = Feeds.STATUS
#: Where the status stream goes in what is keyed by symbol (``resume``,
#: ``epochs``, ``unrecoverable``, a gap): lower case, so never a symbol.
FEEDS = "feeds"
#: A channel of a symbol, or the status channel.
Topic = Channel | Feeds

#: Every channel of a symbol, in the order frames of one flush are written.
CHANNELS: tuple[Channel, ...] = (Channel.TRADES, Channel.QUOTES, Channel.BARS_1M)
#: Every channel, the symbols' then ``status``: what ``hello`` lists, and the
#: order of a flush's frames.
ALL_CHANNELS: tuple[Topic, ...] = (*CHANNELS, STATUS)
#: What ``subscribe`` means without ``channels``.
DEFAULT_CHANNELS: tuple[Channel, ...] = (Channel.TRADES, Channel.QUOTES)
#: The ``type`` of a channel's data frames, which is also the key of its list.
FRAME_TYPES: dict[Topic, str] = {Channel.TRADES: "trades", Channel.QUOTES: "quotes",
                                 Channel.BARS_1M: "bars", STATUS: "status"}
#: The key of a snapshot's list of feed states (with the ``status`` channel).
FEEDS_KEY = "feeds"

#: Every ``type`` the server sends.
MESSAGE_TYPES = ("hello", "auth_ok", "subscribed", "unsubscribed", "snapshot", "trades",
                 "quotes", "bars", "status", "unrecoverable", "pong", "error")

# Error codes: stable, documented; clients switch on them.
BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
BINARY_FRAME = "binary_frame"
UNKNOWN_OP = "unknown_op"
UNKNOWN_CHANNEL = "unknown_channel"
UNKNOWN_SYMBOL = "unknown_symbol"
INVALID_SYMBOL = "invalid_symbol"
INVALID_CURSOR = "invalid_cursor"
TOO_MANY_SYMBOLS = "too_many_symbols"
RATE_LIMITED = "rate_limited"
AUTH_REQUIRED = "auth_required"
AUTH_FAILED = "auth_failed"
UNAVAILABLE = "unavailable"

# Close codes. 1xxx are RFC 6455; 4xxx are ours (the private-use range).
CLOSE_GOING_AWAY = 1001
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4001
CLOSE_SLOW_CONSUMER = 4008

# Reasons of an ``unrecoverable`` message.
GAP_TRIMMED = "trimmed"
GAP_TOO_FAR_BEHIND = "too_far_behind"
GAP_CURSOR_AHEAD = "cursor_ahead"
GAP_EPOCH = "epoch"

#: What an epoch looks like (a prefix of a Redis run ID; any short token is
#: accepted, so a future epoch scheme stays compatible).
_EPOCH_RE = re.compile(r"[0-9A-Za-z]{1,64}")
#: The key of a symbol's resume object that carries its epoch, not a channel.
EPOCH_KEY = "epoch"
#: Symbols joined by NUL (which no symbol holds), each matching SYMBOL_RE.
_SYMBOLS_RE = re.compile(f"(?:{SYMBOL_RE.pattern})(?:\0(?:{SYMBOL_RE.pattern}))*")

_OPS = ("auth", "subscribe", "unsubscribe", "ping")

#: One subscription: ``(symbol, channel)``, or ``(FEEDS, STATUS)``.
Pair = tuple[str, Topic]
#: The subscription of the status channel.
STATUS_PAIR: Pair = (FEEDS, STATUS)


# --- client messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    req: Any = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``symbols`` and ``channels`` in request order without duplicates: the
    request is every pair of them. ``resume`` maps some pairs to the last
    entry ID the client saw of that stream; ``epochs`` maps symbols to the
    epoch those cursors were read in, when the client sent it."""

    symbols: tuple[str, ...]
    channels: tuple[Topic, ...] = DEFAULT_CHANNELS
    resume: dict[Pair, str] = field(default_factory=dict)
    snapshot: bool = True
    req: Any = None
    epochs: dict[str, str] = field(default_factory=dict)

    @property
    def pairs(self) -> list[Pair]:
        """Every requested pair, symbol by symbol, then the status pair."""
        out: list[Pair] = [(symbol, channel) for symbol in self.symbols
                           for channel in self.channels if channel is not STATUS]
        if STATUS in self.channels:
            out.append(STATUS_PAIR)
        return out

    @property
    def stream_names(self) -> list[str]:
        """The symbols, and :data:`FEEDS` with the status channel: the keys
        of what is per symbol (``epochs``)."""
        return [*self.symbols, FEEDS] if STATUS in self.channels else list(self.symbols)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``channels`` defaults to every channel of a symbol (not ``status``)."""

    symbols: tuple[str, ...]
    channels: tuple[Topic, ...] = CHANNELS
    req: Any = None


@dataclass(frozen=True, slots=True)
class Ping:
    req: Any = None


Command = Auth | Subscribe | Unsubscribe | Ping


def parse_message(data: str | bytes, *, max_symbols: int,
                  admit: Callable[[str, Any], None] | None = None) -> Command:
    """Parse one client frame.

    Binary frames, malformed JSON, unknown ops and invalid fields raise
    :exc:`ProtocolError` with the code to send back. More than ``max_symbols``
    symbols in one request raises ``too_many_symbols`` before any symbol is
    looked at, so a huge list costs one length check. ``admit(op, req)``,
    when given, runs once the op is known and before any other field is
    looked at; what it raises (say, a rate limit's error) is raised, so a
    refused request costs its JSON decoding only.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(BINARY_FRAME, "binary frames are not supported: send JSON text")
    try:
        msg = codec.decode_json(data)
    except DecodeError as exc:
        raise ProtocolError(BAD_JSON, str(exc)) from exc
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_MESSAGE, "a message must be a JSON object")
    req = msg.get("req")
    if req is not None and not isinstance(req, str | int) or isinstance(req, bool):
        raise ProtocolError(BAD_MESSAGE, "req must be a string or an integer")
    op = msg.get("op")
    if op not in _OPS:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op!r}: want one of {', '.join(_OPS)}",
                            req=req)
    if admit is not None:
        admit(op, req)
    if op == "ping":
        return Ping(req)
    if op == "auth":
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(BAD_MESSAGE, "auth needs a non-empty string token", req=req)
        return Auth(token, req)
    raw_symbols = msg.get("symbols")
    if raw_symbols in (None, []) and _status_only(msg.get("channels")):
        symbols: tuple[str, ...] = ()
    else:
        symbols = _symbols(raw_symbols, max_symbols=max_symbols, req=req)
    default = CHANNELS if op == "unsubscribe" else DEFAULT_CHANNELS
    channels = _channels(msg.get("channels"), default, req=req)
    if symbols and all(channel is STATUS for channel in channels):
        raise ProtocolError(BAD_MESSAGE, "the status channel has no symbols: leave symbols "
                            "out, or name a channel of theirs too", req=req)
    if op == "unsubscribe":
        return Unsubscribe(symbols, channels, req)
    snapshot = msg.get("snapshot", True)
    if not isinstance(snapshot, bool):
        raise ProtocolError(BAD_MESSAGE, "snapshot must be true or false", req=req)
    resume, epochs = _resume(msg.get("resume"), symbols, channels, req=req)
    return Subscribe(symbols, channels, resume, snapshot, req, epochs)


def _symbols(raw: Any, *, max_symbols: int, req: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProtocolError(BAD_MESSAGE, "symbols must be a non-empty list", req=req)
    if len(raw) > max_symbols:
        raise ProtocolError(
            TOO_MANY_SYMBOLS, f"too many symbols in one request: {len(raw)} > {max_symbols}",
            req=req,
        )
    # The reference check's rule, for the whole list in one match (a request
    # of 500 symbols costs ~40 us), and without its cache of names seen: that
    # is for symbols of events, and made-up ones would only churn it.
    if all(type(item) is str for item in raw) and _SYMBOLS_RE.fullmatch("\0".join(raw)):
        return tuple(dict.fromkeys(raw))
    out: dict[str, None] = {}
    for item in raw:
        try:
            out[validate_symbol(item)] = None
        except InvalidEventError as exc:
            raise ProtocolError(INVALID_SYMBOL, str(exc), req=req) from exc
    return tuple(out)


def parse_channel(name: Any, *, req: Any = None) -> Topic:
    """The channel called ``name``; raises :exc:`ProtocolError` (``unknown_channel``)."""
    if isinstance(name, str):
        if name == STATUS:
            return STATUS
        try:
            return Channel(name)
        except ValueError:
            pass
    raise ProtocolError(UNKNOWN_CHANNEL,
                        f"unknown channel {name!r}: want one of {', '.join(ALL_CHANNELS)}",
                        req=req)


def _status_only(raw: Any) -> bool:
    """Whether ``channels`` (as sent) names the status channel and no other."""
    return isinstance(raw, list) and bool(raw) and all(item == STATUS for item in raw)


def _channels(raw: Any, default: tuple[Topic, ...], *, req: Any) -> tuple[Topic, ...]:
    if raw is None:
        return default
    if not isinstance(raw, list) or not raw:
        raise ProtocolError(BAD_MESSAGE, "channels must be a non-empty list", req=req)
    out: dict[Topic, None] = {}
    for item in raw:
        out[parse_channel(item, req=req)] = None
    return tuple(out)


def _resume(raw: Any, symbols: Sequence[str], channels: Sequence[Topic], *,
            req: Any) -> tuple[dict[Pair, str], dict[str, str]]:
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise ProtocolError(BAD_MESSAGE, "resume must map symbols to {channel: entry id}",
                            req=req)
    wanted = {*symbols, FEEDS} if STATUS in channels else set(symbols)
    out: dict[Pair, str] = {}
    epochs: dict[str, str] = {}
    for symbol, cursors in raw.items():
        if symbol not in wanted:
            raise ProtocolError(BAD_MESSAGE, f"resume names {symbol!r}, which is not in symbols",
                                req=req)
        if not isinstance(cursors, dict):
            raise ProtocolError(BAD_MESSAGE, f"resume of {symbol!r} must map channels to "
                                "entry ids, e.g. {\"trades\": \"1700000000000-0\"}", req=req)
        for name, entry_id in cursors.items():
            if name == EPOCH_KEY:
                epochs[symbol] = _epoch(entry_id, req=req)
                continue
            channel = parse_channel(name, req=req)
            if (channel is STATUS) != (symbol == FEEDS):
                raise ProtocolError(BAD_MESSAGE, f"resume of {symbol!r} names {channel}: the "
                                    f"status channel's cursor goes under {FEEDS!r}, and only "
                                    "it", req=req)
            if channel not in channels:
                raise ProtocolError(BAD_MESSAGE, f"resume names channel {channel} of "
                                    f"{symbol!r}, which is not in channels", req=req)
            out[(symbol, channel)] = normalize_id(entry_id, req=req)
    return out, epochs


def _epoch(value: Any, *, req: Any) -> str:
    if not isinstance(value, str) or not _EPOCH_RE.fullmatch(value):
        raise ProtocolError(INVALID_CURSOR, f"epoch must be the string the server sent, "
                            f"not {value!r}", req=req)
    return value


def normalize_id(entry_id: Any, *, req: Any = None) -> str:
    """``"1700000000000-3"`` as given, ``"1700000000000"`` as ``"...-0"``.

    Raises :exc:`ProtocolError` (``invalid_cursor``).
    """
    if not isinstance(entry_id, str):
        raise ProtocolError(INVALID_CURSOR, f"entry id must be a string, not {entry_id!r}",
                            req=req)
    try:
        ms, seq = codec.parse_entry_id(entry_id)
    except DecodeError as exc:
        raise ProtocolError(INVALID_CURSOR, str(exc), req=req) from exc
    return f"{ms}-{seq}"


# --- entry ids -------------------------------------------------------------------------------


def id_key(entry_id: bytes | str) -> tuple[int, int]:
    """Sort key of an entry ID (string comparison would put ``9-0`` after ``10-0``).

    Raises :exc:`~pricepipe.exceptions.DecodeError` on a malformed ID."""
    if type(entry_id) is str:
        # The hub keys every entry it reads: Redis's IDs take this short path.
        ms, sep, seq = entry_id.partition("-")
        if sep and ms.isdecimal() and seq.isdecimal():
            return int(ms), int(seq)
    return codec.parse_entry_id(entry_id)


# --- entries -------------------------------------------------------------------------------


def encode_entry(channel: Topic, symbol: str, fields: Any, entry_id: str) -> bytes:
    """An entry's JSON as data frames carry it: a trade's, quote's or bar's
    (:func:`pricepipe.codec.entry_to_json`) or a status event's
    (:func:`pricepipe.feedstatus.status_dict` with its ``id``). Raises
    ``ValueError`` (a :exc:`~pricepipe.exceptions.DecodeError` or
    :exc:`~pricepipe.exceptions.InvalidEventError`) for an unreadable entry."""
    if isinstance(channel, Feeds):
        return codec.encode_json(status_dict(decode_status(fields), entry_id))
    return codec.entry_to_json(channel, symbol, fields, entry_id)


# --- server messages -------------------------------------------------------------------------

#: Frame heads per channel: plain, ``replay`` and ``conflated``. A data frame
#: is a head, the entries' JSON joined with commas (each encoded once by the
#: hub and shared by every connection), and :data:`FRAME_END`.
_HEADS: dict[Topic, tuple[bytes, bytes, bytes]] = {
    channel: (f'{{"type":"{kind}","{kind}":['.encode(),
              f'{{"type":"{kind}","replay":true,"{kind}":['.encode(),
              f'{{"type":"{kind}","conflated":true,"{kind}":['.encode())
    for channel, kind in FRAME_TYPES.items()
}
#: Plain heads by :data:`ALL_CHANNELS` index, for the live path.
LIVE_HEADS: tuple[bytes, ...] = tuple(_HEADS[channel][0] for channel in ALL_CHANNELS)
#: What closes a data frame after its entries.
FRAME_END = b"]}"


def data_frame(channel: Topic, parts: Iterable[bytes], *, replay: bool = False,
               conflated: bool = False) -> bytes:
    """A ``trades``, ``quotes``, ``bars`` or ``status`` frame from already
    encoded entries (joined, never re-encoded).

    ``replay``: the entries come from a resume catch-up rather than live.
    ``conflated``: entries were skipped; each symbol's latest is here (for
    trades use :func:`conflated_trades_frame`, which names the gaps).
    """
    heads = _HEADS[channel]
    head = heads[2] if conflated else heads[1] if replay else heads[0]
    return head + b",".join(parts) + FRAME_END


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, unfragmented websocket text frame, header
    and all: what a server writes for ``send(payload, text=True)`` when no
    extension is negotiated (RFC 6455, section 5.2: FIN and opcode 1, then
    a 7-bit length, or 126 and 16 bits, or 127 and 64 bits). The fast path
    of websockets' ``Frame(Opcode.TEXT, payload).serialize(mask=False)``,
    held to it by a property test: this runs once per live frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def live_frame(index: int, joined: Iterable[bytes]) -> bytes:
    """The live frame of channel ``ALL_CHANNELS[index]`` (the hot path's
    variant of :func:`data_frame`)."""
    return LIVE_HEADS[index] + b",".join(joined) + FRAME_END


@dataclass(frozen=True, slots=True)
class Gap:
    """Trades of ``symbol`` the client did not get: every entry ID strictly
    between ``after`` (the last one it got) and ``until`` (the one in the
    conflated frame)."""

    symbol: str
    after: str
    until: str


def conflated_trades_frame(parts: Iterable[bytes], gaps: Iterable[Gap]) -> bytes:
    """The latest trade of each symbol that traded while the client was
    behind, and the ranges of the trades it skipped (fetch them over HTTP)."""
    return _conflated_frame(Channel.TRADES, parts, gaps)


def conflated_status_frame(parts: Iterable[bytes], gaps: Iterable[Gap]) -> bytes:
    """The newest status events held while the client was behind, and the
    range of the older ones it skipped (``symbol`` :data:`FEEDS`; fetch them
    with ``GET /v1/feeds/events?after=``)."""
    return _conflated_frame(STATUS, parts, gaps)


def _conflated_frame(channel: Topic, parts: Iterable[bytes], gaps: Iterable[Gap]) -> bytes:
    gap_list = [{"symbol": gap.symbol, "after": gap.after, "until": gap.until} for gap in gaps]
    return (_HEADS[channel][2] + b",".join(parts) + b'],"gaps":'
            + codec.encode_json(gap_list) + b"}")


def snapshot_frame(parts: Mapping[Topic, Sequence[bytes]], *,
                   epochs: Mapping[str, str] | None = None,
                   feeds: Sequence[Mapping[str, Any]] | None = None) -> bytes:
    """The latest entry of each newly subscribed pair that has one, a list per
    channel of the subscription (in :data:`ALL_CHANNELS` order, empty lists
    kept); ``epochs``: the epoch of the streams they were read from, per
    symbol (and :data:`FEEDS`); ``feeds``: every feed's state
    (:func:`pricepipe.feedstatus.feed_views`), with the status channel."""
    out = [b'{"type":"snapshot"']
    if epochs:
        out.append(b',"epochs":' + codec.encode_json(dict(epochs)))
    for channel in ALL_CHANNELS:
        if channel in parts:
            kind = FRAME_TYPES[channel]
            out.append(f',"{kind}":['.encode() + b",".join(parts[channel]) + b"]")
    if feeds is not None:
        out.append(f',"{FEEDS_KEY}":'.encode() + codec.encode_json(list(feeds)))
    out.append(b"}")
    return b"".join(out)


def _message(kind: str, req: Any = None, **fields: Any) -> bytes:
    out: dict[str, Any] = {"type": kind, **fields}
    if req is not None:
        out["req"] = req
    return codec.encode_json(out)


def hello(*, auth_required: bool, limits: dict[str, Any]) -> bytes:
    return _message("hello", version=VERSION, auth_required=auth_required,
                    channels=[str(c) for c in ALL_CHANNELS], limits=limits)


def auth_ok(req: Any = None) -> bytes:
    return _message("auth_ok", req)


def subscribed(symbols: Sequence[str], channels: Sequence[Topic], req: Any = None, *,
               epochs: Mapping[str, str] | None = None) -> bytes:
    """The acknowledgement; ``epochs``: the epoch of each symbol's streams now."""
    fields: dict[str, Any] = {"symbols": list(symbols), "channels": [str(c) for c in channels]}
    if epochs is not None:
        fields["epochs"] = dict(epochs)
    return _message("subscribed", req, **fields)


def unsubscribed(symbols: Sequence[str], channels: Sequence[Topic], req: Any = None) -> bytes:
    return _message("unsubscribed", req, symbols=list(symbols),
                    channels=[str(c) for c in channels])


def pong(req: Any = None) -> bytes:
    return _message("pong", req)


def error(code: str, message: str, req: Any = None, *,
          symbols: Sequence[str] | None = None) -> bytes:
    """An error answer; ``symbols``: the symbols it is about (``unknown_symbol``)."""
    if symbols is not None:
        return _message("error", req, code=code, message=message, symbols=list(symbols))
    return _message("error", req, code=code, message=message)


def unrecoverable(symbol: str, channel: Topic, after: str, reason: str, *,
                  first_id: str | None, epoch: str | None = None) -> bytes:
    """The entries of ``symbol``'s ``channel`` after ``after`` can't all be
    replayed: fetch them over HTTP. A snapshot of that pair and its live
    entries follow this message; ``epoch`` is the epoch they are read in."""
    fields: dict[str, Any] = {"symbol": symbol, "channel": str(channel), "after": after,
                              "reason": reason, "first_id": first_id}
    if epoch is not None:
        fields["epoch"] = epoch
    return _message("unrecoverable", **fields)
