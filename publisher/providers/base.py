"""What every upstream provider shares: the quote, the request, the pure
parsing helpers and the checks a quote must pass before it becomes a tick.

Everything here is pure code. A provider turns symbols into
:class:`Request` objects and a decoded JSON answer into :class:`Quote`
objects (plus a :class:`Rejection` per item it could not read); the
:class:`~pricepipe.publisher.upstream.Upstream` client does the HTTP and the
:class:`~pricepipe.publisher.poller.Poller` the scheduling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pricepipe.clock import US_PER_S, parse_time_us
from pricepipe.exceptions import BadResponseError, InvalidTickError
from pricepipe.tick import MAX_TS_US, MIN_TS_US, Tick


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP GET: ``path`` under the provider's base URL, query ``params``,
    and the upstream symbols it asks for. ``weight`` is its cost in the
    provider's rate-limit budget (Binance counts request weight)."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    symbols: tuple[str, ...] = ()
    weight: int = 1

    @property
    def key(self) -> str:
        """Identity for scheduling: at most one poll of a request in flight."""
        return self.path + "?" + "&".join(f"{k}={v}" for k, v in self.params)


@dataclass(frozen=True, slots=True)
class Quote:
    """A price as the upstream reported it, before validation.

    ``version`` identifies the upstream's observation (a trade id) when it
    has one; two quotes with the same version are the same quote.
    ``ts_us`` is None when the upstream gives no time: the receipt time is
    then the event time.
    """

    upstream: str
    price: float
    ts_us: int | None
    size: float | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one item of an answer was not turned into a quote."""

    upstream: str | None
    reason: str
    detail: str


@dataclass
class Parsed:
    """The readable quotes of one answer and the reasons for the rest."""

    quotes: list[Quote] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class Provider:
    """Base of the upstream adapters. Subclasses set the class attributes and
    implement :meth:`requests` and :meth:`parse`.

    ``sign`` is the hook for providers that need signed requests: it gets
    the prepared request (URL, headers, body final) and returns it signed.
    """

    name: ClassVar[str] = "provider"
    #: Rate limit(s) in the ``limits`` notation, e.g. ``"60/minute;30/second"``.
    default_rate_limit: ClassVar[str] = "60/minute"
    #: Symbols polled when none are configured.
    example_symbols: ClassVar[str] = ""

    def __init__(self, *, base_url: str, rate_limit: str | None = None,
                 api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.rate_limit = rate_limit or self.default_rate_limit
        self.api_key = api_key

    def headers(self) -> dict[str, str]:
        """Headers for every request (authentication, ``Accept``)."""
        return {"Accept": "application/json"}

    def secrets(self) -> list[str]:
        """Values that must never appear in logs (an API key sent in a URL)."""
        return [self.api_key] if self.api_key else []

    def sign(self, prepared: Any) -> Any:
        """Sign a ``requests.PreparedRequest``; the default needs no signature."""
        return prepared

    def requests(self, upstream_symbols: Sequence[str]) -> list[Request]:
        """The requests that together ask for every symbol once."""
        raise NotImplementedError

    def parse(self, request: Request, payload: Any) -> Parsed:
        """Quotes in a decoded JSON answer to ``request``.

        Raises :exc:`BadResponseError` when the answer as a whole is unusable
        (an error object, the wrong shape); items that are individually bad
        become rejections and do not spoil the others.
        """
        raise NotImplementedError


# --- parsing helpers --------------------------------------------------------------------------


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
    non-numeric text (reason ``not_numeric``); NaN and infinities (``not_finite``)
    are returned as they are, for :func:`to_tick` to reject."""
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
    except (ValueError, KeyError, OverflowError) as exc:
        raise BadResponseError(f"{name}={value!r} is not a {unit} timestamp",
                               reason="bad_timestamp") from exc


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuoteChecks:
    """Bounds a quote's timestamp must respect relative to its receipt time.

    Upstream clocks run a little ahead; a timestamp minutes in the future is a
    unit or zone mix-up. Old timestamps are normal for closed markets (a
    stock's last trade on Friday), so ``max_age_s`` is generous.
    """

    max_future_s: float = 300.0
    max_age_s: float = 7 * 86_400.0


def to_tick(quote: Quote, *, symbol: str, source: str, recv_ts_us: int,
            checks: QuoteChecks = QuoteChecks()) -> Tick:
    """The tick for a quote, or :exc:`BadResponseError` with the reason
    (``not_finite``, ``non_positive``, ``bad_timestamp``, ``future_timestamp``,
    ``stale_timestamp``)."""
    price = quote.price
    ts_us = recv_ts_us if quote.ts_us is None else quote.ts_us
    if not math.isfinite(price):
        raise BadResponseError(f"{quote.upstream}: price {price!r} is not finite",
                               reason="not_finite")
    if price <= 0:
        raise BadResponseError(f"{quote.upstream}: price {price!r} is not positive",
                               reason="non_positive")
    if not MIN_TS_US <= ts_us < MAX_TS_US:
        raise BadResponseError(f"{quote.upstream}: timestamp {ts_us} is absurd",
                               reason="bad_timestamp")
    if ts_us > recv_ts_us + checks.max_future_s * US_PER_S:
        raise BadResponseError(f"{quote.upstream}: timestamp {ts_us} is in the future",
                               reason="future_timestamp")
    if ts_us < recv_ts_us - checks.max_age_s * US_PER_S:
        raise BadResponseError(f"{quote.upstream}: timestamp {ts_us} is too old",
                               reason="stale_timestamp")
    size = quote.size
    if size is not None and not (math.isfinite(size) and size >= 0):
        size = None  # a bad size does not make the price wrong
    try:
        return Tick(symbol, ts_us, price, size, source, recv_ts_us)
    except InvalidTickError as exc:
        raise BadResponseError(f"{quote.upstream}: {exc}", reason="invalid") from exc
