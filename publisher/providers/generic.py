"""The generic JSON poller: any API that answers one JSON document per
symbol, configured without code.

* ``url``: a template with ``{symbol}`` (URL-quoted), e.g.
  ``https://api.example.com/v1/quote/{symbol}?fmt=json``;
* trades: ``price_path`` / ``time_path`` / ``size_path`` / ``version_path``,
  dotted paths into the document (``data.0.price``: key ``data``, first
  item, key ``price``). ``version_path`` is the trade id. Without
  ``time_path`` the receipt time is the event time and only a change of
  price (or size) counts as a new trade. An empty ``price_path`` publishes
  no trades;
* quotes (optional): ``bid_path`` and/or ``ask_path``, with
  ``bid_size_path`` / ``ask_size_path``; a quote is a snapshot, stamped with
  its receipt time, and published when the book changes;
* ``time_unit``: ``s``, ``ms``, ``us``, ``iso`` or ``auto``;
* ``headers`` (``Name: value; Name2: value``) and an API key sent either in a
  header (``api_key_header``) or a query parameter (``api_key_param``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from pricepipe.exceptions import BadResponseError, ConfigError

from .base import Parsed, Provider, QuoteReport, Request, TradeReport, epoch_us, number, trade_id

TIME_UNITS = ("s", "ms", "us", "iso", "auto")


def dig(document: Any, path: str) -> Any:
    """The value at a dotted path; raises :exc:`BadResponseError` (``missing_field``)."""
    value = document
    for part in path.split(".") if path else ():
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and \
                -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise BadResponseError(f"missing field {path!r}", reason="missing_field")
    if value is None:
        raise BadResponseError(f"missing field {path!r}", reason="missing_field")
    return value


def parse_headers(text: str | None) -> dict[str, str]:
    """``"Name: value; Name2: value"`` as a dict; raises :exc:`ConfigError`."""
    out: dict[str, str] = {}
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"headers: want 'Name: value', not {item.strip()!r}")
        out[name.strip()] = value.strip()
    return out


class GenericProvider(Provider):
    name: ClassVar[str] = "generic"
    default_rate_limit: ClassVar[str] = "60/minute"

    def __init__(self, *, url: str, price_path: str | None, time_path: str | None = None,
                 time_unit: str = "auto", size_path: str | None = None,
                 version_path: str | None = None, bid_path: str | None = None,
                 ask_path: str | None = None, bid_size_path: str | None = None,
                 ask_size_path: str | None = None, headers: str | None = None,
                 api_key: str | None = None, api_key_header: str | None = None,
                 api_key_param: str | None = None, rate_limit: str | None = None) -> None:
        if "{symbol}" not in url:
            raise ConfigError("generic url must contain {symbol}")
        if not (price_path or bid_path or ask_path):
            raise ConfigError("generic needs price_path (trades) or bid_path/ask_path (quotes)")
        if (bid_size_path and not bid_path) or (ask_size_path and not ask_path):
            raise ConfigError("generic bid_size_path/ask_size_path need bid_path/ask_path")
        if time_unit not in TIME_UNITS:
            raise ConfigError(f"generic time_unit must be one of {TIME_UNITS}")
        if api_key and not (api_key_header or api_key_param):
            raise ConfigError("generic api_key needs api_key_header or api_key_param")
        super().__init__(base_url="", rate_limit=rate_limit, api_key=api_key)
        self.url = url
        self.price_path = price_path or None
        self.time_path = time_path or None
        self.time_unit = time_unit
        self.size_path = size_path or None
        self.version_path = version_path or None
        self.bid_path = bid_path or None
        self.ask_path = ask_path or None
        self.bid_size_path = bid_size_path or None
        self.ask_size_path = ask_size_path or None
        self.extra_headers = parse_headers(headers)
        self.api_key_header = api_key_header
        self.api_key_param = api_key_param

    def headers(self) -> dict[str, str]:
        out = {**super().headers(), **self.extra_headers}
        if self.api_key and self.api_key_header:
            out[self.api_key_header] = self.api_key
        return out

    def requests(self, upstream_symbols: Sequence[str]) -> list[Request]:
        params: tuple[tuple[str, str], ...] = ()
        if self.api_key and self.api_key_param:
            params = ((self.api_key_param, self.api_key),)
        return [Request(self.url.replace("{symbol}", quote(s, safe="")), params, (s,))
                for s in upstream_symbols]

    def parse(self, request: Request, payload: Any) -> Parsed:
        (upstream,) = request.symbols
        if not isinstance(payload, Mapping | list):
            raise BadResponseError("expected a JSON object or list", reason="malformed")
        parsed = Parsed()
        if self.price_path:
            try:
                parsed.trades.append(self._trade(upstream, payload, self.price_path))
            except BadResponseError as exc:
                parsed.reject(upstream, exc)
        if self.bid_path or self.ask_path:
            try:
                parsed.quotes.append(self._quote(upstream, payload))
            except BadResponseError as exc:
                parsed.reject(upstream, exc)
        return parsed

    def _trade(self, upstream: str, payload: Any, price_path: str) -> TradeReport:
        price = number(dig(payload, price_path), price_path)
        ts_us = None  # the receipt time, see TradeReport
        if self.time_path:
            ts_us = epoch_us(dig(payload, self.time_path), self.time_path, self.time_unit)
        size = number(dig(payload, self.size_path), self.size_path) if self.size_path else None
        ident = trade_id(dig(payload, self.version_path), self.version_path) \
            if self.version_path else None
        return TradeReport(upstream, price, ts_us, size, ident)

    def _quote(self, upstream: str, payload: Any) -> QuoteReport:
        def value(path: str | None) -> float | None:
            return number(dig(payload, path), path) if path else None

        return QuoteReport(upstream, None, value(self.bid_path), value(self.bid_size_path),
                           value(self.ask_path), value(self.ask_size_path))
