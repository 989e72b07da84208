"""The websocket protocol: parsing client messages and encoding server
messages. Pure functions, no I/O (the server in :mod:`pricepipe.subscriber.ws.server` is a
thin layer around them). ``docs/subscriber.md`` documents every message.

Client to server (JSON text frames)::

    {"op": "auth", "token": "..."}
    {"op": "subscribe", "symbols": ["AAPL"], "resume": {"AAPL": "1700000000000-0"},
     "snapshot": true, "req": 1}
    {"op": "unsubscribe", "symbols": ["AAPL"], "req": 2}
    {"op": "ping", "req": 3}

Server to client: objects with a ``type`` (``hello``, ``auth_ok``,
``subscribed``, ``unsubscribed``, ``snapshot``, ``ticks``, ``unrecoverable``,
``pong``, ``error``). Tick frames carry a list of ticks so that several ticks
can share one frame; every tick carries its stream entry ID as ``id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pricepipe import codec
from pricepipe.exceptions import DecodeError, InvalidTickError, ProtocolError
from pricepipe.tick import validate_symbol

#: Protocol version announced in ``hello``; bumped on incompatible changes.
VERSION = 1

# Error codes: stable, documented; clients switch on them.
BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
BINARY_FRAME = "binary_frame"
UNKNOWN_OP = "unknown_op"
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

_OPS = ("auth", "subscribe", "unsubscribe", "ping")


# --- client messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    req: Any = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``symbols`` in request order without duplicates; ``resume`` maps some of
    them to the last entry ID the client saw."""

    symbols: tuple[str, ...]
    resume: dict[str, str] = field(default_factory=dict)
    snapshot: bool = True
    req: Any = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    symbols: tuple[str, ...]
    req: Any = None


@dataclass(frozen=True, slots=True)
class Ping:
    req: Any = None


Command = Auth | Subscribe | Unsubscribe | Ping


def parse_message(data: str | bytes, *, max_symbols: int) -> Command:
    """Parse one client frame.

    Binary frames, malformed JSON, unknown ops and invalid fields raise
    :exc:`ProtocolError` with the code to send back. More than ``max_symbols``
    symbols in one request raises ``too_many_symbols`` before any symbol is
    looked at, so a huge list costs one length check.
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
    if op == "ping":
        return Ping(req)
    if op == "auth":
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(BAD_MESSAGE, "auth needs a non-empty string token", req=req)
        return Auth(token, req)
    symbols = _symbols(msg.get("symbols"), max_symbols=max_symbols, req=req)
    if op == "unsubscribe":
        return Unsubscribe(symbols, req)
    snapshot = msg.get("snapshot", True)
    if not isinstance(snapshot, bool):
        raise ProtocolError(BAD_MESSAGE, "snapshot must be true or false", req=req)
    return Subscribe(symbols, _resume(msg.get("resume"), symbols, req=req), snapshot, req)


def _symbols(raw: Any, *, max_symbols: int, req: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProtocolError(BAD_MESSAGE, "symbols must be a non-empty list", req=req)
    if len(raw) > max_symbols:
        raise ProtocolError(
            TOO_MANY_SYMBOLS, f"too many symbols in one request: {len(raw)} > {max_symbols}",
            req=req,
        )
    out: dict[str, None] = {}
    for item in raw:
        try:
            out[validate_symbol(item)] = None
        except InvalidTickError as exc:
            raise ProtocolError(INVALID_SYMBOL, str(exc), req=req) from exc
    return tuple(out)


def _resume(raw: Any, symbols: Sequence[str], *, req: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError(BAD_MESSAGE, "resume must map symbols to entry ids", req=req)
    wanted = set(symbols)
    out: dict[str, str] = {}
    for symbol, entry_id in raw.items():
        if symbol not in wanted:
            raise ProtocolError(BAD_MESSAGE, f"resume names {symbol!r}, which is not in symbols",
                                req=req)
        out[symbol] = normalize_id(entry_id, req=req)
    return out


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


# --- server messages -------------------------------------------------------------------------


_TICKS = b'{"type":"ticks","ticks":['
_TICKS_CONFLATED = b'{"type":"ticks","conflated":true,"ticks":['
_TICKS_REPLAY = b'{"type":"ticks","replay":true,"ticks":['
_SNAPSHOT = b'{"type":"snapshot","ticks":['
_END = b"]}"


def ticks_frame(parts: Iterable[bytes], *, conflated: bool = False, replay: bool = False) -> bytes:
    """A ``ticks`` frame from already encoded ticks (joined, never re-encoded).

    ``conflated``: some ticks were skipped; each symbol's latest tick is here.
    ``replay``: the ticks come from a resume catch-up rather than live.
    """
    head = _TICKS_CONFLATED if conflated else _TICKS_REPLAY if replay else _TICKS
    return head + b",".join(parts) + _END


def snapshot_frame(parts: Iterable[bytes]) -> bytes:
    """The latest tick of each newly subscribed symbol that has one."""
    return _SNAPSHOT + b",".join(parts) + _END


def _message(kind: str, req: Any = None, **fields: Any) -> bytes:
    out: dict[str, Any] = {"type": kind, **fields}
    if req is not None:
        out["req"] = req
    return codec.encode_json(out)


def hello(*, auth_required: bool, limits: dict[str, Any]) -> bytes:
    return _message("hello", version=VERSION, auth_required=auth_required, limits=limits)


def auth_ok(req: Any = None) -> bytes:
    return _message("auth_ok", req)


def subscribed(symbols: Sequence[str], req: Any = None) -> bytes:
    return _message("subscribed", req, symbols=list(symbols))


def unsubscribed(symbols: Sequence[str], req: Any = None) -> bytes:
    return _message("unsubscribed", req, symbols=list(symbols))


def pong(req: Any = None) -> bytes:
    return _message("pong", req)


def error(code: str, message: str, req: Any = None) -> bytes:
    return _message("error", req, code=code, message=message)


def unrecoverable(symbol: str, after: str, reason: str, *, first_id: str | None) -> bytes:
    """The ticks after ``after`` can't all be replayed: fetch them over HTTP.

    A snapshot and live ticks of ``symbol`` follow this message.
    """
    return _message("unrecoverable", symbol=symbol, after=after, reason=reason,
                    first_id=first_id)
