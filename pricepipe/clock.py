"""The one UTC clock. Times inside pricepipe are integers of microseconds
since the Unix epoch (``*_us``) or milliseconds (``*_ms``, Redis entry IDs);
datetimes are always timezone-aware UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_PER_S = 1_000_000
US_PER_MS = 1_000


def now_us() -> int:
    """Wall-clock time now, in microseconds since the epoch."""
    return time.time_ns() // 1_000


def now_ms() -> int:
    """Wall-clock time now, in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def utcnow() -> datetime:
    """Aware UTC datetime for now."""
    return datetime.now(UTC)


def us_to_datetime(ts_us: int) -> datetime:
    """Exact conversion (no float rounding) of epoch microseconds to aware UTC."""
    return EPOCH + timedelta(microseconds=ts_us)


def datetime_to_us(dt: datetime) -> int:
    """Exact conversion of an aware datetime to epoch microseconds.

    Raises ``ValueError`` for a naive datetime: guessing its zone is how
    off-by-hours bugs start.
    """
    if dt.tzinfo is None:
        raise ValueError("naive datetime: give a timezone (use UTC)")
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def parse_time_us(text: str) -> int:
    """Parse an ISO-8601 time (``Z`` or offset; no offset means UTC) or epoch
    seconds/milliseconds/microseconds given as digits, to epoch microseconds.

    The magnitude of a bare number picks its unit: < 1e11 seconds,
    < 1e14 milliseconds, else microseconds. Raises ``ValueError``.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty time")
    if text.lstrip("-").replace(".", "", 1).isdigit():
        value = float(text)
        if abs(value) < 1e11:
            return round(value * US_PER_S)
        if abs(value) < 1e14:
            return round(value * US_PER_MS)
        return round(value)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return datetime_to_us(dt)


def format_us(ts_us: int) -> str:
    """ISO-8601 with microseconds and ``Z``, e.g. ``2026-01-02T03:04:05.000006Z``.

    On the websocket hot path: ``strftime`` runs once per second of event
    time (cached), not once per tick.
    """
    seconds, micros = divmod(ts_us, US_PER_S)
    return f"{_second_prefix(seconds)}.{micros:06d}Z"


@lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    return us_to_datetime(seconds * US_PER_S).strftime("%Y-%m-%dT%H:%M:%S")
