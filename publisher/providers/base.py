"""What every upstream provider shares: the request, the reports an answer
is parsed into, the pure parsing helpers and the checks a report must pass
before it becomes a :class:`~pricepipe.events.Trade` or
:class:`~pricepipe.events.Quote`.

Everything here is pure code. A provider turns symbols into
:class:`~pricepipe.upstream.Request` objects and a decoded JSON answer into
:class:`TradeReport` and :class:`QuoteReport` objects (plus a
:class:`Rejection` per item it could not read); the core's
:class:`~pricepipe.upstream.Upstream` client does the HTTP and the
:class:`~pricepipe.publisher.poller.Poller` the scheduling. The field
readers (:func:`require`, :func:`number`, ...) are the core's
(:mod:`pricepipe.venues.fields`), shared with the venue parsers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pricepipe.clock import US_PER_S
from pricepipe.events import Quote, Side, Trade, check_ts
from pricepipe.exceptions import BadResponseError
from pricepipe.upstream import Request
from pricepipe.venues.fields import epoch_us, number, optional_number, require, trade_id

__all__ = [
    "Parsed", "Provider", "QuoteReport", "Rejection", "Report", "Request", "TimeChecks",
    "TradeReport", "epoch_us", "number", "optional_number", "require", "to_quote", "to_trade",
    "trade_id",
]


@dataclass(frozen=True, slots=True)
class TradeReport:
    """A trade as the upstream reported it, before validation.

    ``ts_us`` is None when the upstream gives no time (then the receipt
    time is the event time); ``size``, ``trade_id`` and ``side`` are None
    where the upstream does not report them.
    """

    upstream: str
    price: float
    ts_us: int | None
    size: float | None = None
    trade_id: str | None = None
    side: Side | None = None


@dataclass(frozen=True, slots=True)
class QuoteReport:
    """A top of book as the upstream reported it, before validation. A side
    the upstream left empty is None; ``ts_us`` None means "stamped with the
    receipt time" (a snapshot answer carries no time of its own)."""

    upstream: str
    ts_us: int | None
    bid: float | None
    bid_size: float | None
    ask: float | None
    ask_size: float | None


Report = TradeReport | QuoteReport


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one item of an answer was not turned into a report."""

    upstream: str | None
    reason: str
    detail: str


@dataclass
class Parsed:
    """The readable reports of one answer and the reasons for the rest."""

    trades: list[TradeReport] = field(default_factory=list)
    quotes: list[QuoteReport] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def reject(self, upstream: str | None, exc: BadResponseError) -> None:
        self.rejections.append(Rejection(upstream, exc.reason, str(exc)))


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
    #: True when an answer lists every recent trade and trade ids count up
    #: by one per trade: then a jump in the ids means trades were missed
    #: between two polls (counted, see the poller).
    lists_trades: ClassVar[bool] = False

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
        """Reports in a decoded JSON answer to ``request``.

        Raises :exc:`BadResponseError` when the answer as a whole is unusable
        (an error object, the wrong shape); items that are individually bad
        become rejections and do not spoil the others.
        """
        raise NotImplementedError


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeChecks:
    """Bounds an upstream timestamp must respect relative to its receipt time.

    Upstream clocks run a little ahead; a timestamp minutes in the future is a
    unit or zone mix-up. Old timestamps are normal for closed markets (a
    stock's last trade on Friday), so ``max_age_s`` is generous.
    """

    max_future_s: float = 300.0
    max_age_s: float = 7 * 86_400.0

    def event_time(self, report: Report, recv_ts_us: int) -> int:
        """The report's event time: its own, checked, or the receipt time.
        Raises :exc:`~pricepipe.exceptions.InvalidEventError`
        (``bad_timestamp``: outside the years 2000-2100, a unit mix-up) or
        :exc:`BadResponseError` (``future_timestamp``, ``stale_timestamp``)."""
        ts_us = report.ts_us
        if ts_us is None:
            return recv_ts_us
        check_ts(ts_us, "ts_us")
        if ts_us > recv_ts_us + self.max_future_s * US_PER_S:
            raise BadResponseError(f"{report.upstream}: timestamp {ts_us} is in the future",
                                   reason="future_timestamp")
        if ts_us < recv_ts_us - self.max_age_s * US_PER_S:
            raise BadResponseError(f"{report.upstream}: timestamp {ts_us} is too old",
                                   reason="stale_timestamp")
        return ts_us


def to_trade(report: TradeReport, *, symbol: str, source: str, recv_ts_us: int,
             checks: TimeChecks = TimeChecks()) -> Trade:
    """The trade of a report. Raises :exc:`BadResponseError` (time checks) or
    :exc:`~pricepipe.exceptions.InvalidEventError` (``bad_timestamp``,
    ``not_finite``, ``non_positive``, ...); both have a ``reason``."""
    return Trade(symbol, checks.event_time(report, recv_ts_us), report.price, report.size,
                 source, report.trade_id, report.side, recv_ts_us)


def to_quote(report: QuoteReport, *, symbol: str, source: str, recv_ts_us: int,
             checks: TimeChecks = TimeChecks()) -> Quote:
    """The quote of a report; raises as :func:`to_trade` (``crossed_book``,
    ``empty_book``, ...)."""
    return Quote(symbol, checks.event_time(report, recv_ts_us), report.bid, report.bid_size,
                 report.ask, report.ask_size, source, recv_ts_us)
