"""Every error pricepipe raises on purpose.

* :exc:`PricepipeError`
    * :exc:`ConfigError` - a setting is missing or malformed.
    * :exc:`InvalidEventError` - a trade, quote or bar fails validation
      (also a ``ValueError``); ``reason`` is a stable code.
    * :exc:`DecodeError` - bytes that should hold an event or a message do
      not (also a ``ValueError``).
        * :exc:`ProtocolError` - a websocket client message breaks the protocol;
          ``code`` is the stable error code sent back.
    * :exc:`UpstreamError` - an upstream price API failed or answered garbage.
        * :exc:`BadResponseError` - the answer could not be parsed into quotes.
        * :exc:`BudgetExhaustedError` - the request budget would not grant a
          request in time (or a stop came first).
    * :exc:`BackpressureError` - Redis is near its memory limit and the
      publisher's policy is to refuse rather than block.
    * :exc:`EmbeddedServerError` - an embedded redis-server or PostgreSQL
      could not be found or started.
    * :exc:`MigrationError` - a schema migration failed.
    * :exc:`CheckpointError` - a group reader's checkpoint file is unreadable
      or another consumer's (also a ``ValueError``).
    * :exc:`InvalidParameterError` - a client's request parameter is invalid
      (also a ``ValueError``); the HTTP API answers it with a 4xx.

Messages are lower-case; the offending value is kept as an attribute where
it helps a caller react, and the original error is chained with ``from``.
"""

from __future__ import annotations


class PricepipeError(Exception):
    """Base class of every error raised on purpose by pricepipe."""


class ConfigError(PricepipeError):
    """A setting is missing or malformed."""


class InvalidEventError(PricepipeError, ValueError):
    """An event failed validation; ``field`` names the offending field and
    ``reason`` is a stable code (``crossed_book``, ``non_positive``, ...)."""

    def __init__(self, message: str, *, field: str | None = None,
                 reason: str = "invalid") -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


class DecodeError(PricepipeError, ValueError):
    """Bytes that should hold an event or a protocol message do not."""


class ProtocolError(DecodeError):
    """A websocket client message breaks the protocol.

    ``code`` is the stable, documented error code sent back to the client;
    ``req`` echoes the client's request id when the message carried one.
    """

    def __init__(self, code: str, message: str, *, req: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.req = req


class UpstreamError(PricepipeError):
    """An upstream price API failed (network, HTTP status, rate limit)."""


class BadResponseError(UpstreamError):
    """An upstream answer could not be parsed into valid quotes."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class BudgetExhaustedError(UpstreamError):
    """The request budget would not grant a request within the time allowed."""


class BackpressureError(PricepipeError):
    """Redis memory is near its limit and the policy says refuse."""


class EmbeddedServerError(PricepipeError):
    """An embedded server binary could not be found or did not start."""


class MigrationError(PricepipeError):
    """A schema migration could not be applied."""


class CheckpointError(PricepipeError, ValueError):
    """A group reader's checkpoint file cannot be read, or belongs to another
    group or consumer (reading on from it would hide or invent gaps)."""


class InvalidParameterError(PricepipeError, ValueError):
    """A request parameter is invalid; ``param`` names it (``None``: the request as a whole)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
