"""Encoding and decoding of ticks: the one codec every role uses.

Pure functions, no I/O.

* Stream entries (Redis): one field ``t`` holding the whole tick as text,
  see :func:`encode_fields`. Numbers are written as their shortest exact text
  (``repr`` of a float), so ``decode_fields(encode_fields(t)) == t`` for
  every valid tick. The older one-field-per-attribute map (``sym``, ``ts``,
  ``px``, ...) is still read, e.g. entries typed by hand in ``redis-cli``.
* JSON (websocket and HTTP): :func:`tick_to_dict` / :func:`encode_json`.
* Redis entry IDs (``"<ms>-<seq>"``) pack into one signed 64-bit integer for
  the database's unique key, see :func:`pack_entry_id`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .clock import format_us
from .exceptions import DecodeError
from .tick import Tick, known_valid

#: The one field of an entry as pricepipe writes it: the tick as
#: ``"<symbol> <ts_us> <price> <size> <source> <recv_ts_us>"``, single spaces,
#: an absent size or receive time left empty. One field instead of six halves
#: the work of every XADD and XREAD, in Redis and in each client (measured:
#: ~1 us less per entry on each side), and no value can hold a space (see
#: pricepipe.tick's SYMBOL_RE and SOURCE_RE; numbers are repr/str).
F_TICK = b"t"

# Field names of the one-field-per-attribute map (still read, never written).
F_SYMBOL = b"sym"
F_TS = b"ts"
F_PRICE = b"px"
F_SIZE = b"sz"
F_SOURCE = b"src"
F_RECV_TS = b"rts"

#: Entry IDs pack as ``ms << SEQ_BITS | seq``: 42 bits of milliseconds last
#: until the year 2109, and 21 bits allow two million entries per stream per
#: millisecond; together 63 bits, a PostgreSQL ``bigint``.
SEQ_BITS = 21
_SEQ_MAX = (1 << SEQ_BITS) - 1
_MS_MAX = (1 << (63 - SEQ_BITS)) - 1


def encode_value(tick: Tick) -> str:
    """The text of the :data:`F_TICK` field of ``tick``'s stream entry."""
    size = "" if tick.size is None else repr(tick.size)
    recv = "" if tick.recv_ts_us is None else tick.recv_ts_us
    return f"{tick.symbol} {tick.ts_us} {tick.price!r} {size} {tick.source} {recv}"


def encode_fields(tick: Tick) -> dict[bytes, str]:
    """Field map for ``XADD``: the single field :data:`F_TICK`."""
    return {F_TICK: encode_value(tick)}


def split_value(value: bytes) -> tuple[str, int, float, float | None, str, int | None]:
    """The attributes in an :data:`F_TICK` value, parsed but not validated.

    Raises :exc:`DecodeError` when it does not have exactly six parts or a
    number is unreadable.
    """
    try:
        parts = value.split(b" ")
        if len(parts) != 6:
            raise DecodeError(f"tick field has {len(parts)} parts, want 6")
        symbol_b, ts_b, price_b, size_b, source_b, recv_b = parts
        return (symbol_b.decode(), int(ts_b), float(price_b),
                float(size_b) if size_b else None, source_b.decode(),
                int(recv_b) if recv_b else None)
    except DecodeError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise DecodeError(f"unreadable stream entry: {exc}") from exc


def decode_fields(fields: Mapping[bytes, bytes]) -> Tick:
    """Tick from a stream entry's field map, as redis-py returns it with
    ``decode_responses=False``: the :data:`F_TICK` field when present, else
    the one-field-per-attribute map.

    Raises :exc:`DecodeError` when a field is missing or unreadable and
    :exc:`InvalidTickError` when the values are out of bounds; both are
    ``ValueError``, so one ``except ValueError`` catches every bad entry.
    """
    value = fields.get(F_TICK)
    if value is not None:
        return Tick(*split_value(value))
    try:
        symbol = fields[F_SYMBOL].decode()
        ts_us = int(fields[F_TS])
        price = float(fields[F_PRICE])
        source = fields[F_SOURCE].decode()
        size = fields.get(F_SIZE)
        recv = fields.get(F_RECV_TS)
        size_f = None if size is None else float(size)
        recv_us = None if recv is None else int(recv)
    except KeyError as exc:
        raise DecodeError(f"stream entry lacks field {exc.args[0]!r}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise DecodeError(f"unreadable stream entry: {exc}") from exc
    return Tick(symbol, ts_us, price, size_f, source, recv_us)


def tick_to_dict(tick: Tick, entry_id: str | None = None) -> dict[str, Any]:
    """JSON-ready dict: ``ts`` as ISO-8601 UTC plus exact ``ts_us``."""
    return _tick_dict(tick.symbol, tick.ts_us, tick.price, tick.size, tick.source,
                      tick.recv_ts_us, entry_id)


def _tick_dict(symbol: str, ts_us: int, price: float, size: float | None, source: str,
               recv_ts_us: int | None, entry_id: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "symbol": symbol,
        "ts": format_us(ts_us),
        "ts_us": ts_us,
        "price": price,
        "size": size,
        "source": source,
    }
    if recv_ts_us is not None:
        out["recv_ts_us"] = recv_ts_us
    if entry_id is not None:
        out["id"] = entry_id
    return out


def entry_to_json(fields: Mapping[bytes, bytes] | list[bytes], entry_id: str) -> bytes:
    """The JSON of a stream entry's tick with its ID:
    ``encode_json(tick_to_dict(decode_fields(fields), entry_id))``, the same
    bytes and the same errors, but for the usual entry without building a
    :class:`Tick` (the websocket hub does this for every tick it reads).

    ``fields`` as redis-py parses them (a dict) or as the server sends them
    (a flat ``[name, value, ...]`` list). Raises :exc:`DecodeError` or
    :exc:`InvalidTickError`.
    """
    if isinstance(fields, list):
        it = iter(fields)
        field_map: Mapping[bytes, bytes] = dict(zip(it, it, strict=False))
    else:
        field_map = fields
    value = field_map.get(F_TICK)
    if value is None:
        return encode_json(tick_to_dict(decode_fields(field_map), entry_id))
    values = split_value(value)
    if not known_valid(*values):
        Tick(*values)  # raises, or validates and remembers the new names
    return orjson.dumps(_tick_dict(*values, entry_id))


def tick_from_dict(data: Mapping[str, Any]) -> Tick:
    """Inverse of :func:`tick_to_dict` (``ts_us`` wins over ``ts``).

    Raises :exc:`DecodeError` or :exc:`InvalidTickError`.
    """
    if not isinstance(data, Mapping):
        raise DecodeError("tick must be a JSON object")
    try:
        return Tick(
            data["symbol"],
            data["ts_us"],
            data["price"],
            data.get("size"),
            data.get("source", "unknown"),
            data.get("recv_ts_us"),
        )
    except KeyError as exc:
        raise DecodeError(f"tick lacks field {exc.args[0]!r}") from exc


def encode_json(obj: Any) -> bytes:
    """Compact JSON bytes (orjson: floats as shortest exact text)."""
    return orjson.dumps(obj)


def decode_json(data: bytes | str) -> Any:
    """Parse JSON; raises :exc:`DecodeError` on malformed input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from exc


def parse_entry_id(entry_id: bytes | str) -> tuple[int, int]:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``; raises :exc:`DecodeError`."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, sep, seq = text.partition("-")
    try:
        if not sep:
            return int(ms), 0
        ms_i, seq_i = int(ms), int(seq)
    except ValueError as exc:
        raise DecodeError(f"invalid stream entry id {text!r}") from exc
    if ms_i < 0 or seq_i < 0:
        raise DecodeError(f"invalid stream entry id {text!r}")
    return ms_i, seq_i


def pack_entry_id(entry_id: bytes | str) -> int:
    """Pack an entry ID into a non-negative 63-bit integer, order preserving.

    Raises :exc:`DecodeError` when it does not fit (see :data:`SEQ_BITS`).
    """
    ms, seq = parse_entry_id(entry_id)
    if ms > _MS_MAX or seq > _SEQ_MAX:
        raise DecodeError(f"stream entry id {entry_id!r} does not fit in 63 bits")
    return (ms << SEQ_BITS) | seq


def unpack_entry_id(packed: int) -> str:
    """Inverse of :func:`pack_entry_id`."""
    return f"{packed >> SEQ_BITS}-{packed & _SEQ_MAX}"
