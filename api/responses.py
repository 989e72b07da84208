"""Response classes: JSON encoded with the codec's orjson (shortest exact
floats, like every other pricepipe JSON), and raw JSON assembled from
pieces PostgreSQL already encoded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from pricepipe.codec import encode_json

from .queries import JsonRows

#: Pieces of a JSON array body: large enough that per-message overhead is
#: noise, small enough to stay in the CPU cache.
JSON_CHUNK_BYTES = 256 * 1024


class JsonResponse(Response):
    """``application/json`` from any value :func:`pricepipe.codec.encode_json` takes."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode_json(content)


class JsonArrayResponse(StreamingResponse):
    """``application/json``: ``head``, then rows PostgreSQL encoded, joined
    by commas, then ``tail``; e.g. ``{"count":2,"trades":[`` + rows + ``]}``.

    The rows are all in memory already (a failed query is an error status,
    never a cut-off body); they are sent in pieces, with a Content-Length.
    """

    media_type = "application/json"

    def __init__(self, head: bytes, rows: JsonRows, tail: bytes) -> None:
        size = len(head) + rows.joined_bytes + len(tail)
        super().__init__(self._pieces(head, rows, tail),
                         headers={"Content-Length": str(size)})

    @staticmethod
    async def _pieces(head: bytes, rows: JsonRows, tail: bytes) -> AsyncIterator[bytes]:
        yield head
        for chunk in rows.joined_chunks(JSON_CHUNK_BYTES):
            yield chunk
        yield tail


class CsvResponse(StreamingResponse):
    """A streamed ``text/csv`` body (chunks from an iterator).

    ``on_close`` runs when the response ends, finished or not: a client that
    disconnects mid-download must not leave the producer (and its database
    connection) waiting for a reader that is gone.
    """

    media_type = "text/csv; charset=utf-8"

    def __init__(self, content: Iterator[bytes], *, on_close: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class BinaryResponse(CsvResponse):
    """A streamed Parquet file or Arrow IPC stream (give ``media_type``),
    closed as :class:`CsvResponse` is: ``on_close`` always runs."""

    media_type = "application/octet-stream"
