"""Logging set-up shared by every process: plain lines for a terminal, one
JSON object per line for the journal (``PRICEPIPE_LOG_JSON=1``), and one
redaction of secrets on every line either way.

Redaction: :func:`setup_logging` puts one :class:`Redactor` on every handler
it installs (on the root logger), so the records of every library that
propagates there (urllib3, requests, rq, uvicorn, websockets, psycopg2's
errors in our messages) pass through it; a filter on a logger would miss its
children's records. The record's message is formatted first, then redacted,
and so are its traceback and stack (the handler prints those, not the
original exception). Masked with ``****``:

* passwords in URLs (``scheme://user:****@host``) and in keyword DSNs
  (``password=****``);
* secret query parameters (``?apikey=``, ``api_key=``, ``key=``,
  ``token=``, ``access_token=``, ``secret=``, ``password=``, ``signature=``);
* ``Authorization``, ``Proxy-Authorization`` and ``X-API-Key`` header
  values (``Authorization: Bearer ****``), also in a dict's repr;
* the exact values of every configured secret: settings declared with
  ``secret=True`` (each item of a list setting) and the passwords of every
  URL in the environment, collected once when logging is set up
  (:func:`configured_secrets`), plus whatever :func:`register_secrets`
  adds later (an upstream's API key). Values shorter than
  :data:`MIN_SECRET_CHARS` are left to the patterns above: masking every
  occurrence of a three-letter word would garble every line.

Uncaught exceptions are logged (so redacted) instead of printed raw.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import types
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote

import orjson

from .config import Settings

#: What a secret is replaced with.
REDACTED = "****"
#: Exact values shorter than this are not masked wherever they appear.
MIN_SECRET_CHARS = 4

_VALUE = r"[^\s&#'\"<>,;)}\]]+"

#: (pattern, replacement): applied in order to every line.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host (the user may be empty: redis://:pw@host).
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*:)[^\s@/'\"]+@"), rf"\1{REDACTED}@"),
    # Query parameters that carry keys (a bare key= only inside a query string).
    (re.compile(r"(?i)([?&;]key=)" + _VALUE), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|token|secret|"
                r"client[_-]?secret|password|passwd|pwd|signature|sig)=)"
                r"(?:'[^']*'|" + _VALUE + ")"), rf"\1{REDACTED}"),
    # Header lines: "Authorization: Bearer abc", "X-API-Key: abc".
    (re.compile(r"(?i)(\b(?:proxy-)?authorization:\s*(?:(?:bearer|basic|token|digest)\s+)?)"
                r"[^\s'\",;]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\bx-api-key:\s*)[^\s'\",;]+"), rf"\1{REDACTED}"),
    # The same in a dict's repr or JSON: 'Authorization': 'Bearer abc', "token": "abc".
    (re.compile(r"(?i)(['\"](?:(?:proxy-)?authorization|x-api-key|api[_-]?key|apikey|token|"
                r"access[_-]?token|password|secret)['\"]\s*:\s*['\"])[^'\"]*"), rf"\1{REDACTED}"),
)


class Redactor(logging.Filter):
    """Masks secrets in every record it sees (see the module docstring).
    Never drops a record; safe to run twice on one record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these exact values too (with their URL-encoded forms)."""
        found = set(self._secrets)
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_CHARS:
                continue
            found.update({secret, quote(secret, safe=""), quote_plus(secret)})
        with self._lock:
            # Longest first: a secret containing another is masked whole.
            self._secrets = tuple(sorted(found, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: logging would print them raw in its error report
            message = f"{record.msg!r} (with arguments that do not format)"
        record.msg, record.args = self.redact(message), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            # Formatters print exc_text when set; dropping exc_info keeps any
            # other formatter from rendering the unredacted exception again.
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()

#: The process's redactor, on every handler :func:`setup_logging` installs.
REDACTOR = Redactor()


def register_secrets(secrets: Iterable[str]) -> None:
    """Mask these values in every log line from now on (e.g. an API key a
    component received other than through its settings)."""
    REDACTOR.add(s for s in secrets if s)


def url_passwords(text: str) -> list[str]:
    """The passwords of the ``scheme://user:password@host`` URLs in ``text``
    (as written and URL-decoded)."""
    out: list[str] = []
    for match in re.finditer(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*:([^\s@/'\"]+)@", text):
        out.extend({match.group(1), unquote(match.group(1))})
    return out


def configured_secrets(environ: Mapping[str, str], classes: Iterable[type[Settings]],
                       *, values: Iterable[str] = ()) -> list[str]:
    """Every secret the process is configured with: the values of the
    ``secret=True`` fields of the settings ``classes`` in ``environ`` (and
    each item of a comma-separated one), and the URL passwords in any
    variable of ``environ`` or in ``values`` (command-line arguments)."""
    import dataclasses

    out: list[str] = []
    for cls in classes:
        for f in dataclasses.fields(cls):
            raw = environ.get(cls.env_name(f.name)) if f.metadata.get("secret") else None
            if raw:
                out.append(raw.strip())
                out.extend(part.strip() for part in raw.split(",") if part.strip())
    for text in (*environ.values(), *values):
        if "://" in text:
            out.extend(url_passwords(text))
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # exc_text: the traceback the handler's Redactor formatted and redacted.
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info
                                  else None)
        if exc:
            out["exc"] = exc
        return orjson.dumps(out).decode()


#: syslog priorities of the logging levels (sd-daemon(3): "<N>" line prefixes).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is connected to the journal (systemd sets
    ``JOURNAL_STREAM`` to its ``<device>:<inode>`` for a unit's output)."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        status = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


class JournalPrefix(logging.Formatter):
    """Another formatter's lines, each prefixed with the record's syslog
    priority (``<4>`` for a warning): without it every line of a unit
    reaches the journal at the unit's default priority (info), and
    ``journalctl -p warning`` shows none of them."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno)
        if priority is None:  # a custom level: the nearest standard one below it
            priority = next((p for level, p in sorted(_PRIORITY.items(), reverse=True)
                             if record.levelno >= level), 7)
        prefix = f"<{priority}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def _log_uncaught(kind: type[BaseException], exc: BaseException,
                  tb: types.TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("pricepipe").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    logging.getLogger("pricepipe").critical(
        "uncaught exception in thread %s", args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def setup_logging(level: str = "INFO", *, json: bool = False,
                  secrets: Iterable[str] = ()) -> None:
    """One handler on the root logger, to stderr, with :data:`REDACTOR`
    masking ``secrets`` (and what :func:`register_secrets` adds)."""
    REDACTOR.add(secrets)
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if json else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    handler.setFormatter(JournalPrefix(formatter) if stderr_is_journal() else formatter)
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Only Python's defaults are replaced (a test runner keeps its own hooks).
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _log_uncaught
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _log_uncaught_in_thread
