"""``/v1/feeds`` and ``/v1/feeds/events``: the upstream feeds' status, as
data (what the feeds write, :mod:`pricepipe.feedstatus`, under
:meth:`~pricepipe.keys.Keys.feed_states` and
:meth:`~pricepipe.keys.Keys.feed_status`).

Both answers come from Redis alone, in one pipelined round trip (both keys
share the ``{feeds}`` hash tag: one node on Redis Cluster too). When Redis
cannot be reached they are a 503 saying so, never a 500: feed status is
exactly what one asks for while something is down.
"""

# No ``from __future__ import annotations``: FastAPI reads the parameter
# annotations at run time, and they refer to the local ``settings``.
import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from pricepipe import codec
from pricepipe.clock import format_us, now_us
from pricepipe.exceptions import DecodeError
from pricepipe.feedstatus import OPEN_GAP_WINDOW, decode_status, feed_views, status_dict

from . import params
from .errors import ERROR_RESPONSES
from .responses import JsonResponse
from .services import Services, get_services
from .settings import ApiSettings

log = logging.getLogger(__name__)

ServicesDep = Annotated[Services, Depends(get_services)]

#: Most events of one ``/v1/feeds/events`` page.
MAX_EVENTS_PAGE = 1000

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)

FeedStateName = Literal["connecting", "connected", "partial", "disconnected", "stale",
                        "stopped"]
FeedEventKind = Literal["connected", "disconnected", "stale", "gap_detected", "gap_repaired",
                        "gap_unrepairable", "subscription_refused"]


class FeedGapOut(BaseModel):
    """A gap detected and not repaired (nor declared lost) yet: trade ids
    `first_id`..`last_id` (inclusive; `last_id` null: open-ended) of
    `symbol`, since `since`; `id` is its `gap_detected` event's entry ID."""

    symbol: str | None
    first_id: int | None
    last_id: int | None
    since_us: int
    since: str
    id: str


class FeedOut(BaseModel):
    """A feed's state. `state` is what it is shown as: `reported_state`
    (what the feed last wrote), except that a feed not `stopped` that has
    not rewritten its state for `stale_after_s` is shown `stale` with
    `stale_reason` `no_update` (`reported`: the feed itself said `stale`).
    `counts` are totals since the feed started: messages, trades, quotes,
    duplicates, malformed, unknown, rejected, reconnects, gaps_detected,
    gaps_repaired, gaps_unrepairable, trades_repaired, trades_unrepairable."""

    feed: str
    source: str
    venue: str
    state: FeedStateName
    reported_state: FeedStateName
    stale_reason: Literal["reported", "no_update"] | None
    since_us: int | None
    since: str | None
    last_message_us: int | None
    last_message: str | None
    updated_us: int | None
    updated: str | None
    age_s: float | None
    connections: int
    connected: int
    symbols: list[str]
    counts: dict[str, int]
    open_gaps: list[FeedGapOut]


class FeedsOut(BaseModel):
    feeds: list[FeedOut]
    errors: dict[str, str]
    stale_after_s: float
    now_us: int
    now: str


class FeedEventOut(BaseModel):
    """A status event as the feed published it, with its stream entry `id`."""

    feed: str
    kind: FeedEventKind
    ts_us: int
    ts: str
    symbol: str | None
    first_id: int | None
    last_id: int | None
    trades: int | None
    reason: str | None
    connection: int | None
    id: str


class FeedEventsOut(BaseModel):
    """A page of status events, oldest first. `next_after`: pass it as
    `after` for the next page (the last event's `id`, else the `after`
    given); `more`: the page is full, ask again now. `missed` (only with
    `after`): true when events after `after` were trimmed from the stream
    (it keeps about `PRICEPIPE_FEED_STATUS_MAXLEN` events), false when none
    were. `oldest_id`: the oldest event the stream holds."""

    after: str | None
    count: int
    more: bool
    next_after: str | None
    missed: bool | None
    oldest_id: str | None
    events: list[FeedEventOut]


def _unavailable(what: str, exc: BaseException) -> HTTPException:
    log.warning("%s: redis unreachable: %s", what, exc)
    return HTTPException(503, f"{what} unavailable: redis is unreachable",
                         headers={"Retry-After": "1"})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _missed(after: str, info: Any) -> bool:
    """Whether events after ``after`` were trimmed, from ``XINFO STREAM``
    (None or an error: no stream). The status stream is trimmed by length
    (``MAXLEN ~``) with no record of what went, so the rule is the
    conservative one: something was removed and ``after`` is older than the
    oldest event left."""
    if not isinstance(info, dict):
        return False  # no stream: it never had events (trimming leaves an empty one)
    added, length = info.get("entries-added"), info.get("length")
    if added is not None and length is not None and int(added) == int(length):
        return False
    first = info.get("first-entry")
    if not first:
        last = info.get("last-generated-id")
        return last is None or codec.parse_entry_id(after) < codec.parse_entry_id(_text(last))
    return codec.parse_entry_id(after) < codec.parse_entry_id(_text(first[0]))


def events_page(rows: Sequence[Any], *, after: str | None, limit: int, info: Any
                ) -> dict[str, Any]:
    """The ``/v1/feeds/events`` answer from the rows read (oldest first) and
    the stream's ``XINFO``; unreadable entries are left out (and logged)."""
    events = []
    for raw_id, fields in rows:
        entry_id = _text(raw_id)
        try:
            events.append(status_dict(decode_status(fields), entry_id))
        except DecodeError as exc:
            log.warning("status entry %s unreadable: %s", entry_id, exc)
    last_id = _text(rows[-1][0]) if rows else after
    first = info.get("first-entry") if isinstance(info, dict) else None
    return {"after": after, "count": len(events), "more": len(rows) >= limit,
            "next_after": last_id, "missed": None if after is None else _missed(after, info),
            "oldest_id": _text(first[0]) if first else None, "events": events}


def build_router(settings: ApiSettings, dependencies: Sequence[Any] = ()) -> APIRouter:
    """``/v1/feeds`` and ``/v1/feeds/events`` (rate limited and keyed as
    every ``/v1`` route, through ``dependencies``)."""
    router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES,
                       dependencies=list(dependencies))
    stale_after_s = settings.feed_stale_after_s

    @router.get("/feeds", response_model=FeedsOut, summary="State of every upstream feed")
    def get_feeds(svc: ServicesDep) -> Response:
        """Every feed's state as it last wrote it (connection state, last
        message time, counts), shown `stale` when it has not rewritten it
        for `stale_after_s` (`PRICEPIPE_API_FEED_STALE_AFTER_S`), with the
        gaps it detected and has not repaired yet. A state that cannot be
        read is left out and reported in `errors`."""
        pipe = svc.redis.pipeline(transaction=False)
        pipe.hgetall(svc.keys.feed_states())
        pipe.xrevrange(svc.keys.feed_status(), count=OPEN_GAP_WINDOW)
        try:
            states, recent = pipe.execute(raise_on_error=False)
        except _UNREACHABLE as exc:
            raise _unavailable("feed status", exc) from exc
        errors: dict[str, str] = {}
        for name, reply in (("state", states), ("events", recent)):
            if isinstance(reply, _UNREACHABLE):
                raise _unavailable("feed status", reply)
            if isinstance(reply, redis.ResponseError):  # e.g. WRONGTYPE: someone else's key
                log.error("feed %s unreadable: %s", name, reply)
                errors[f"_{name}"] = f"unreadable: {reply}"
        if isinstance(states, Exception):
            states = {}
        if isinstance(recent, Exception):
            recent = []
        at_us = now_us()
        views, bad = feed_views(states, reversed(recent), now_us=at_us,
                                stale_after_s=stale_after_s)
        for name, why in bad.items():
            log.warning("feed %s: state unreadable: %s", name, why)
        errors.update(bad)
        return JsonResponse({"feeds": views, "errors": errors, "stale_after_s": stale_after_s,
                             "now_us": at_us, "now": format_us(at_us)})

    @router.get("/feeds/events", response_model=FeedEventsOut,
                summary="Status events of the upstream feeds, paged by entry ID")
    def get_feed_events(
        svc: ServicesDep,
        after: Annotated[str | None, Query(max_length=48, description=(
            "Entry ID (`<ms>-<seq>`): the events after it, oldest first (`0-0`: from the "
            "oldest the stream holds). Without it: the newest `limit` events, oldest first"))
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE,
                                    description="Most events per page")] = 100,
    ) -> Response:
        """The status stream (connected, disconnected, stale, gaps detected,
        repaired and unrepairable, subscriptions refused), every feed's
        events in the order they happened; the same events the websocket's
        `status` channel sends."""
        cursor = None if after is None else codec.unpack_entry_id(
            params.parse_entry_id(after, "after"))
        key = svc.keys.feed_status()
        pipe = svc.redis.pipeline(transaction=False)
        if cursor is None:
            pipe.xrevrange(key, count=limit)
        else:
            pipe.xrange(key, min=f"({cursor}", max="+", count=limit)
        pipe.xinfo_stream(key)
        try:
            rows, info = pipe.execute(raise_on_error=False)
        except _UNREACHABLE as exc:
            raise _unavailable("feed events", exc) from exc
        for reply in (rows, info):
            if isinstance(reply, _UNREACHABLE):
                raise _unavailable("feed events", reply)
        if isinstance(rows, Exception):
            raise rows  # e.g. WRONGTYPE: the key is someone else's, a deployment bug
        if isinstance(info, Exception):
            info = None  # no such key: no stream yet
        if cursor is None:
            rows = list(reversed(rows))
        return JsonResponse(events_page(rows, after=cursor, limit=limit, info=info))

    return router
