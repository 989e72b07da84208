"""The upstream client: one ``requests.Session`` per provider.

* Connection pooling: one ``HTTPAdapter`` whose pool holds as many
  connections as the poller has workers.
* Timeouts: every request has a connect and a read timeout.
* Retries (urllib3 ``Retry``, the one place that decides what is
  retryable): connection errors, read timeouts, 429 and 5xx answers to GET,
  with exponential backoff and jitter; ``Retry-After`` is honoured (cut to
  ``retry_after_max_s``). After the last retry the final answer is returned,
  not raised, so the poller can count it.
* Proxies: ``proxy`` setting, else the usual ``HTTPS_PROXY`` variables.
* Signing: the prepared request goes through ``provider.sign`` last.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .providers.base import Provider, Request
from .settings import PollerSettings

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: urllib3's loggers that write request URLs (a logger's filters do not apply
#: to its children's records, so each is named).
URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")


class RedactingFilter(logging.Filter):
    """Masks secrets in log records: urllib3 logs requests and retries with the
    full URL, query string included, where an API key may travel."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "****")
            record.msg, record.args = message, None
        return True


def make_retry(settings: PollerSettings) -> Retry:
    return Retry(
        total=settings.retries, connect=settings.retries, read=settings.retries,
        status=settings.retries, other=0, redirect=2,
        allowed_methods=frozenset({"GET"}), status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_factor_s, backoff_jitter=settings.backoff_jitter_s,
        backoff_max=settings.backoff_max_s, respect_retry_after_header=True,
        retry_after_max=max(int(settings.retry_after_max_s), 1), raise_on_status=False,
    )


class Upstream:
    """HTTP GETs for one provider. Thread-safe for concurrent ``get`` calls
    (requests sessions are, with a pooled adapter)."""

    def __init__(self, provider: Provider, settings: PollerSettings, *,
                 pool_size: int | None = None) -> None:
        self.provider = provider
        self.retry = make_retry(settings)
        self.timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self.proxies = {"http": settings.proxy, "https": settings.proxy} if settings.proxy else {}
        self.session = requests.Session()
        size = pool_size or settings.concurrency
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size, max_retries=self.retry,
                              pool_block=True)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(provider.headers())
        self._redactor: RedactingFilter | None = None
        if provider.secrets():
            self._redactor = RedactingFilter(provider.secrets())
            for name in URL_LOGGERS:
                logging.getLogger(name).addFilter(self._redactor)

    def url(self, request: Request) -> str:
        return self.provider.base_url + request.path

    def get(self, request: Request) -> requests.Response:
        """The final answer (after retries); raises ``requests.RequestException``
        when no answer came (connection refused, timeouts, a truncated body)."""
        prepared = self.session.prepare_request(
            requests.Request("GET", self.url(request), params=list(request.params)))
        prepared = self.provider.sign(prepared)
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

    def close(self) -> None:
        self.session.close()
        if self._redactor is not None:
            for name in URL_LOGGERS:
                logging.getLogger(name).removeFilter(self._redactor)
            self._redactor = None
