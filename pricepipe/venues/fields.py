"""Reading one field of a decoded JSON answer. Pure code, no I/O.

Every reader raises :exc:`~pricepipe.exceptions.BadResponseError` with a
stable ``reason`` (``missing_field``, ``not_numeric``, ``bad_trade_id``,
``bad_timestamp``, ``malformed``), which publishers count rejections by.
Used by the publisher's providers and by the venue parsers of this package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pricepipe.clock import US_PER_S, parse_time_us
from pricepipe.exceptions import BadResponseError


def require(obj: Any, name: str) -> Any:
    """``obj[name]``; raises :exc:`BadResponseError` (reason ``missing_field``)."""
    if not isinstance(obj, Mapping):
        raise BadResponseError(f"expected a JSON object, got {type(obj).__name__}",
                               reason="malformed")
    if name not in obj or obj[name] is None:
        raise BadResponseError(f"missing field {name!r}", reason="missing_field")
    return obj[name]


def number(value: Any, name: str) -> float:
    """A JSON number or numeric string as a float. Rejects booleans and
    non-numeric text (reason ``not_numeric``); NaN and infinities are
    returned as they are, for the event to refuse (``not_finite``)."""
    if isinstance(value, bool):
        raise BadResponseError(f"{name} is a boolean", reason="not_numeric")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError as exc:
            raise BadResponseError(f"{name}={value!r} is not a number",
                                   reason="not_numeric") from exc
    raise BadResponseError(f"{name}={value!r} is not a number", reason="not_numeric")


def optional_number(obj: Mapping[str, Any], name: str) -> float | None:
    """``number(obj[name])``, or None when the field is absent or null."""
    value = obj.get(name)
    return None if value is None else number(value, name)


def integer(value: Any, name: str, *, reason: str = "not_numeric") -> int:
    """A JSON integer (not a boolean, not a float, not text); raises with ``reason``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadResponseError(f"{name}={value!r} is not an integer", reason=reason)
    return value


def trade_id(value: Any, name: str) -> str:
    """An upstream trade id (an integer or a string) as text; raises
    :exc:`BadResponseError` (``bad_trade_id``) for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadResponseError(f"{name}={value!r} is not a trade id", reason="bad_trade_id")
    return str(value)


def epoch_us(value: Any, name: str, unit: str) -> int:
    """An upstream timestamp in microseconds. ``unit`` is ``s``, ``ms``, ``us``,
    ``iso`` (ISO-8601 text) or ``auto`` (ISO text, or a number whose
    magnitude tells its unit). Raises :exc:`BadResponseError` (``bad_timestamp``)."""
    try:
        if unit == "iso" or (unit == "auto" and isinstance(value, str)):
            if not isinstance(value, str):
                raise ValueError(value)
            return parse_time_us(value)
        number_value = number(value, name)
        if not math.isfinite(number_value):
            raise ValueError(value)
        if unit == "auto":
            return parse_time_us(repr(number_value) if number_value % 1 else
                                 str(int(number_value)))
        scale = {"s": US_PER_S, "ms": 1_000, "us": 1}[unit]
        return round(number_value * scale)
    except (ValueError, KeyError, OverflowError, BadResponseError) as exc:
        raise BadResponseError(f"{name}={value!r} is not a {unit} timestamp",
                               reason="bad_timestamp") from exc
