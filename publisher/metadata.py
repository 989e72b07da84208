"""The metadata slow loop: refreshes the ``instruments`` table (name, logo,
currency, exchange, 52-week high and low) for the API's ``GET /v1/symbols``.

The seed stockstreamer refreshed this every ~5,000 s. Here it is the rq job
:func:`refresh_instruments` (scheduled in ``workers/schedule.py``); it is
idempotent (an upsert per symbol) and safe to run twice.

Sources (``PRICEPIPE_METADATA_SOURCE``):

* ``finnhub``: ``/stock/profile2`` (name, logo, currency, exchange) and
  ``/stock/metric?metric=all`` (``52WeekHigh`` / ``52WeekLow``) through the
  same resilient client as the poller (budget, retries); when a symbol's
  metrics cannot be had, its 52-week range comes from stored history;
* ``history``: the 52-week range from stored history only (``bars_1m``,
  else raw ``trades``), for providers without metadata and for the GBM demo.

A failure for one symbol is logged and counted in the result; it never
stops the others. Values from the provider only overwrite columns they
have (``COALESCE``), so a partial answer does not erase what is known.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pricepipe.clock import US_PER_S, now_us, us_to_datetime
from pricepipe.codec import decode_json
from pricepipe.config import DatabaseSettings, RedisSettings
from pricepipe.exceptions import BadResponseError, ConfigError, DecodeError

from .catalog import SymbolSpec, parse_symbols
from .settings import MetadataSettings

log = logging.getLogger(__name__)

YEAR_US = 365 * 86_400 * US_PER_S


@dataclass(frozen=True, slots=True)
class Instrument:
    """One row of ``instruments``; None means "unknown, keep what is stored"."""

    symbol: str
    name: str | None = None
    logo_url: str | None = None
    currency: str | None = None
    exchange: str | None = None
    week52_high: float | None = None
    week52_low: float | None = None


# --- pure parsing -----------------------------------------------------------------------------


def _text(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    return value.strip() or None if isinstance(value, str) else None


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def parse_profile(symbol: str, payload: Any) -> Instrument:
    """Finnhub ``/stock/profile2``. An empty object (unknown symbol) gives an
    instrument with nothing known. Raises :exc:`BadResponseError`."""
    if not isinstance(payload, Mapping):
        raise BadResponseError("profile2: expected a JSON object", reason="malformed")
    if "error" in payload:
        raise BadResponseError(f"finnhub error: {payload['error']}", reason="upstream_error")
    logo = _text(payload, "logo")
    if logo is not None and not logo.startswith(("https://", "http://")):
        logo = None  # only links, never javascript: or data: into the dashboard
    return Instrument(symbol, _text(payload, "name"), logo, _text(payload, "currency"),
                      _text(payload, "exchange"))


def parse_metric(payload: Any) -> tuple[float | None, float | None]:
    """``(52WeekHigh, 52WeekLow)`` of Finnhub ``/stock/metric``; None where
    missing or not a positive number. Raises :exc:`BadResponseError`."""
    if not isinstance(payload, Mapping):
        raise BadResponseError("metric: expected a JSON object", reason="malformed")
    if "error" in payload:
        raise BadResponseError(f"finnhub error: {payload['error']}", reason="upstream_error")
    metric = payload.get("metric")
    if not isinstance(metric, Mapping):
        return None, None
    high, low = _positive(metric.get("52WeekHigh")), _positive(metric.get("52WeekLow"))
    if high is not None and low is not None and low > high:
        return None, None  # inconsistent: trust neither
    return high, low


# --- database ---------------------------------------------------------------------------------


def history_ranges(conn: Any, symbols: Sequence[str], *, since_us: int) -> dict[str, tuple[
        float, float]]:
    """``symbol -> (high, low)`` since ``since_us`` from ``bars_1m``, falling back
    to raw ``trades`` for symbols without bars (bars are built from trades,
    so both give the range of traded prices)."""
    out: dict[str, tuple[float, float]] = {}
    if not symbols:
        return out
    since = us_to_datetime(since_us)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT symbol, max(high), min(low) FROM bars_1m"
            " WHERE symbol = ANY(%s) AND bucket >= %s GROUP BY symbol",
            (list(symbols), since))
        out.update({row[0]: (row[1], row[2]) for row in cur.fetchall()})
        missing = [s for s in symbols if s not in out]
        if missing:
            cur.execute(
                "SELECT symbol, max(price), min(price) FROM trades"
                " WHERE symbol = ANY(%s) AND ts >= %s GROUP BY symbol",
                (missing, since))
            out.update({row[0]: (row[1], row[2]) for row in cur.fetchall()})
    return out


_UPSERT = (
    "INSERT INTO instruments AS i"
    " (symbol, name, logo_url, currency, exchange, week52_high, week52_low, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
    " ON CONFLICT (symbol) DO UPDATE SET"
    " name = COALESCE(EXCLUDED.name, i.name),"
    " logo_url = COALESCE(EXCLUDED.logo_url, i.logo_url),"
    " currency = COALESCE(EXCLUDED.currency, i.currency),"
    " exchange = COALESCE(EXCLUDED.exchange, i.exchange),"
    " week52_high = COALESCE(EXCLUDED.week52_high, i.week52_high),"
    " week52_low = COALESCE(EXCLUDED.week52_low, i.week52_low),"
    " updated_at = now()"
)


def upsert_instruments(conn: Any, rows: Iterable[Instrument]) -> int:
    """Insert or update rows in one transaction; returns how many."""
    params = [(i.symbol, i.name, i.logo_url, i.currency, i.exchange, i.week52_high,
               i.week52_low) for i in rows]
    with conn:
        with conn.cursor() as cur:
            cur.executemany(_UPSERT, params)
    return len(params)


# --- the job ----------------------------------------------------------------------------------


def _symbols(settings: MetadataSettings, symbols: Sequence[str] | None,
             conn: Any) -> list[SymbolSpec]:
    if symbols:
        return parse_symbols(",".join(symbols))
    if settings.symbols:
        return parse_symbols(settings.symbols)
    found: set[str] = set()
    redis_settings = RedisSettings.from_env()
    if redis_settings.url:
        from pricepipe.connections import redis_client
        from pricepipe.streams import known_symbols

        r = redis_client(redis_settings)
        try:
            found.update(known_symbols(r, redis_settings.keys))
        finally:
            r.close()
    with conn.cursor() as cur:
        cur.execute("SELECT symbol FROM instruments")
        found.update(row[0] for row in cur.fetchall())
    return [SymbolSpec(s) for s in sorted(found)]


def fetch_finnhub(specs: Sequence[SymbolSpec], *, base_url: str | None = None,
                  ) -> tuple[dict[str, Instrument], dict[str, str]]:
    """Profiles and 52-week ranges from Finnhub: ``(instruments, errors)``
    keyed by local symbol."""
    from pricepipe.budget import Budget

    from .providers import make_provider, make_upstream
    from .providers.finnhub import FinnhubProvider
    from .settings import PollerSettings

    provider = make_provider("finnhub", base_url=base_url)
    assert isinstance(provider, FinnhubProvider)
    settings = PollerSettings.from_env()
    upstream = make_upstream(provider, settings.http_options(), pool_size=1)
    budget = Budget(provider.rate_limit, name="finnhub-metadata")
    found: dict[str, Instrument] = {}
    errors: dict[str, str] = {}

    def get(request: Any) -> Any:
        budget.acquire(request.weight, wait=_sleep)
        response = upstream.get(request)
        with response:
            if response.status_code != 200:
                raise BadResponseError(f"HTTP {response.status_code}", reason="http_error")
            return decode_json(response.content)

    try:
        for spec in specs:
            try:
                profile = parse_profile(spec.symbol, get(provider.profile_request(
                    spec.upstream_name)))
                high, low = parse_metric(get(provider.metric_request(spec.upstream_name)))
                found[spec.symbol] = Instrument(
                    spec.symbol, profile.name, profile.logo_url, profile.currency,
                    profile.exchange, high, low)
            except (BadResponseError, DecodeError, OSError) as exc:
                # OSError covers requests' errors: one symbol's failure never
                # stops the others.
                errors[spec.symbol] = str(exc)
                log.warning("metadata of %s: %s", spec.symbol, exc)
    finally:
        upstream.close()
    return found, errors


def _sleep(seconds: float) -> bool:
    import time

    time.sleep(seconds)
    return False


def refresh_instruments(source: str | None = None, symbols: list[str] | None = None,
                        base_url: str | None = None) -> dict[str, Any]:
    """The rq job: refresh ``instruments`` for ``symbols`` (default: every
    registered symbol) from ``source`` (default ``PRICEPIPE_METADATA_SOURCE``).

    Connection settings and API keys come from the worker's environment, never
    from job arguments. Returns counts: ``updated``, ``from_provider``,
    ``from_history``, ``errors``.
    """
    from pricepipe.connections import pg_connect

    settings = MetadataSettings.from_env(source=source)
    if settings.source not in ("finnhub", "history"):
        raise ConfigError(f"metadata source must be finnhub or history, not {settings.source!r}")
    conn = pg_connect(DatabaseSettings.from_env().require_url(),
                      application_name="pricepipe-job-instruments")
    try:
        specs = _symbols(settings, symbols, conn)
        rows: dict[str, Instrument] = {s.symbol: Instrument(s.symbol) for s in specs}
        errors: dict[str, str] = {}
        if settings.source == "finnhub":
            fetched, errors = fetch_finnhub(specs, base_url=base_url)
            rows.update(fetched)
        need_history = [s for s, row in rows.items()
                        if row.week52_high is None or row.week52_low is None]
        ranges = history_ranges(conn, need_history, since_us=now_us() - YEAR_US)
        for symbol, (high, low) in ranges.items():
            row = rows[symbol]
            rows[symbol] = Instrument(row.symbol, row.name, row.logo_url, row.currency,
                                      row.exchange, high, low)
        updated = upsert_instruments(conn, rows.values())
    finally:
        conn.close()
    result = {"updated": updated, "from_provider": len(rows) - len(need_history) if
              settings.source == "finnhub" else 0,
              "from_history": len(ranges), "errors": len(errors)}
    log.info("instruments refreshed: %s", result)
    return result
