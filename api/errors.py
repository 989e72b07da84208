"""Error responses: every failure the API expects becomes a JSON body
``{"error": "<what is wrong>", "detail": [...]}`` with a 4xx or 503 status.

* 422: a parameter is invalid (FastAPI's validation or
  :exc:`~pricepipe.exceptions.InvalidParameterError`); ``detail`` lists
  each problem as ``{"loc": [...], "msg": ..., "type": ...}``.
* 401, 404, 405, 429: from :class:`starlette.exceptions.HTTPException`
  (429 carries ``Retry-After``).
* 503: PostgreSQL or Redis is unreachable, or every database connection is
  busy; 504: a query ran into the statement timeout. Both carry
  ``Retry-After``. The client's request was fine; it may retry.

Anything else is a bug and stays a 500.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg2
import psycopg2.errors
import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from pricepipe.exceptions import InvalidParameterError

from .pool import PoolBusyError
from .responses import JsonResponse

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    detail: list[dict[str, Any]] | None = None


#: For ``responses=`` of the routes, so the OpenAPI schema documents errors.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "Invalid parameter"},
    429: {"model": ErrorBody, "description": "Rate limit exceeded (see Retry-After)"},
    503: {"model": ErrorBody, "description": "Database or Redis unavailable"},
}


def error_response(status: int, message: str, *, detail: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JsonResponse(body, status_code=status, headers=headers)


def _loc_text(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("query", "path", "header", "body")]
    return ".".join(parts) or "request"


async def _validation(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in jsonable_encoder(exc.errors())
    ]
    summary = "; ".join(f"{_loc_text(d['loc'])}: {d['msg']}" for d in detail[:5])
    return error_response(422, f"invalid request: {summary}", detail=detail)


async def _invalid_parameter(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, InvalidParameterError)
    loc = ["query", exc.param] if exc.param else ["query"]
    return error_response(
        422, str(exc), detail=[{"loc": loc, "msg": str(exc), "type": "value_error"}]
    )


async def _http(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, str(exc.detail), headers=headers)


async def _unavailable(request: Request, exc: Exception) -> JsonResponse:
    if isinstance(exc, psycopg2.errors.QueryCanceled):
        return error_response(
            504, "the query ran longer than the statement timeout: narrow the time range",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, PoolBusyError):
        what = f"database busy: {exc}"
    elif isinstance(exc, psycopg2.Error):
        what = "database unavailable"
    else:
        what = "redis unavailable"
    log.warning("%s %s: %s: %s", request.method, request.url.path, what, exc)
    return error_response(503, what, headers={"Retry-After": "1"})


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InvalidParameterError, _invalid_parameter)
    app.add_exception_handler(HTTPException, _http)
    for exc_class in (psycopg2.OperationalError, psycopg2.InterfaceError, PoolBusyError,
                      redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(exc_class, _unavailable)
