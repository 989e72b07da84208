"""The upstream HTTP client: one ``requests.Session`` per upstream API.

Shared by every role that reads a venue's REST API (the publisher's
pollers and feed repairs, the workers' backfills); the decisions below are
taken here once.

* Connection pooling: one ``HTTPAdapter`` whose pool holds ``pool_size``
  connections (as many as the caller has threads making requests).
* Timeouts: every request has a connect and a read timeout.
* Retries (urllib3 ``Retry``, the one place that decides what is
  retryable): connection errors, read timeouts, 429 and 5xx answers to GET,
  with exponential backoff and jitter; ``Retry-After`` is honoured (cut to
  ``retry_after_max_s``). After the last retry the final answer is returned,
  not raised, so the caller can count it.
* Proxies: ``proxy``, else the usual ``HTTPS_PROXY`` variables.
* Signing: the prepared request goes through ``sign`` last.
* Redaction: ``secrets`` (an API key in a query string) are masked as
  ``****`` in urllib3's request and retry log lines.

:meth:`Upstream.get_json` adds the request budget
(:class:`~pricepipe.budget.Budget`) and turns an answer into decoded JSON or
an :exc:`~pricepipe.exceptions.UpstreamError`: the simple contract of the
callers that page through history (repairs, backfills). The pollers, which
count every outcome separately, use :meth:`Upstream.get`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .budget import Budget
from .codec import decode_json
from .exceptions import BadResponseError, BudgetExhaustedError, DecodeError, UpstreamError
from .logs import register_secrets

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: urllib3's loggers that write request URLs (a logger's filters do not apply
#: to its children's records, so each is named).
URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP GET: ``path`` under the upstream's base URL, query ``params``,
    and the upstream symbols it asks for. ``weight`` is its cost in the
    upstream's rate-limit budget (Binance counts request weight)."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    symbols: tuple[str, ...] = ()
    weight: int = 1

    @property
    def key(self) -> str:
        """Identity for scheduling: at most one poll of a request in flight."""
        return self.path + "?" + "&".join(f"{k}={v}" for k, v in self.params)


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpOptions:
    """How to talk to an upstream: timeouts, retries, proxy, pool size."""

    # Timeouts
    connect_timeout_s: float = 3.05
    read_timeout_s: float = 10.0
    # Retries
    retries: int = 3
    backoff_factor_s: float = 0.5
    backoff_jitter_s: float = 0.25
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    # Connections
    proxy: str | None = None
    pool_size: int = 4


class RedactingFilter(logging.Filter):
    """Masks secrets in log records: urllib3 logs requests and retries with the
    full URL, query string included, where an API key may travel."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "****")
            record.msg, record.args = message, None
        return True


def make_retry(options: HttpOptions) -> Retry:
    return Retry(
        total=options.retries, connect=options.retries, read=options.retries,
        status=options.retries, other=0, redirect=2,
        allowed_methods=frozenset({"GET"}), status_forcelist=RETRY_STATUSES,
        backoff_factor=options.backoff_factor_s, backoff_jitter=options.backoff_jitter_s,
        backoff_max=options.backoff_max_s, respect_retry_after_header=True,
        retry_after_max=max(int(options.retry_after_max_s), 1), raise_on_status=False,
    )


class Upstream:
    """HTTP GETs under one base URL. Thread-safe for concurrent ``get``
    calls (requests sessions are, with a pooled adapter)."""

    def __init__(self, base_url: str, options: HttpOptions = HttpOptions(), *,
                 headers: Mapping[str, str] | None = None, secrets: Sequence[str] = (),
                 sign: Callable[[Any], Any] | None = None, pool_size: int | None = None
                 ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = make_retry(options)
        self.timeout = (options.connect_timeout_s, options.read_timeout_s)
        self.proxies = {"http": options.proxy, "https": options.proxy} if options.proxy else {}
        self.sign = sign
        self.session = requests.Session()
        size = pool_size or options.pool_size
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size, max_retries=self.retry,
                              pool_block=True)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Accept": "application/json", **(headers or {})})
        self._redactor: RedactingFilter | None = None
        if any(secrets):
            # Masked in every log line (pricepipe.logs), not only urllib3's below.
            register_secrets(secrets)
            self._redactor = RedactingFilter(secrets)
            for name in URL_LOGGERS:
                logging.getLogger(name).addFilter(self._redactor)

    def url(self, request: Request) -> str:
        return self.base_url + request.path

    def get(self, request: Request) -> requests.Response:
        """The final answer (after retries); raises ``requests.RequestException``
        when no answer came (connection refused, timeouts, a truncated body)."""
        prepared = self.session.prepare_request(
            requests.Request("GET", self.url(request), params=list(request.params)))
        if self.sign is not None:
            prepared = self.sign(prepared)
        assert prepared.url is not None
        options: dict[str, Any] = dict(self.session.merge_environment_settings(
            prepared.url, dict(self.proxies), None, None, None))
        return self.session.send(prepared, timeout=self.timeout, allow_redirects=True, **options)

    def retry_after_s(self, response: requests.Response) -> float | None:
        """The answer's ``Retry-After`` in seconds (capped), or None."""
        value = response.headers.get("Retry-After")
        if not value:
            return None
        try:
            seconds = float(self.retry.parse_retry_after(value))
        except Exception:  # urllib3 raises InvalidHeader; any unreadable value is "none"
            return None
        return min(seconds, float(self.retry.retry_after_max))

    def get_json(self, request: Request, budget: Budget, *, wait: Callable[[float], bool],
                 max_wait_s: float | None = None, rate_limited_pause_s: float = 1.0) -> Any:
        """The decoded JSON answer to ``request``, within ``budget``.

        Waits for the budget (``wait(seconds)`` sleeps, True abandons: a
        stop). A 429 that outlasted the retries pauses the whole budget for
        its ``Retry-After`` (else ``rate_limited_pause_s``) and the request
        is tried again. Raises :exc:`BudgetExhaustedError` when the budget
        would not grant the request within ``max_wait_s`` in total (None: no
        limit) or a stop came first; :exc:`UpstreamError` for no answer or
        an error status; :exc:`BadResponseError` for a body that is not JSON.
        """
        waited_s = 0.0
        while True:
            left_s = None if max_wait_s is None else max(max_wait_s - waited_s, 0.0)
            if not budget.acquire(request.weight, wait=wait, max_wait_s=left_s):
                raise BudgetExhaustedError(
                    f"{request.path}: the request budget was not granted in time")
            try:
                response = self.get(request)
            except requests.RequestException as exc:
                raise UpstreamError(f"{request.path}: no answer: {exc}") from exc
            with response:
                if response.status_code == 429:
                    pause_s = self.retry_after_s(response) or rate_limited_pause_s
                    budget.pause(pause_s)
                    waited_s += pause_s
                    if max_wait_s is not None and waited_s > max_wait_s:
                        raise BudgetExhaustedError(
                            f"{request.path}: rate limited (429) for longer than {max_wait_s}s")
                    continue
                if response.status_code != 200:
                    raise UpstreamError(f"{request.path}: HTTP {response.status_code}: "
                                        f"{response.text[:200]!r}")
                try:
                    return decode_json(response.content)
                except DecodeError as exc:
                    raise BadResponseError(f"{request.path}: malformed answer: {exc}",
                                           reason="malformed") from exc

    def close(self) -> None:
        self.session.close()
        if self._redactor is not None:
            for name in URL_LOGGERS:
                logging.getLogger(name).removeFilter(self._redactor)
            self._redactor = None
