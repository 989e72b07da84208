"""Response classes: JSON encoded with the codec's orjson (shortest exact
floats, like every other pricepipe JSON), and raw JSON assembled from
pieces PostgreSQL already encoded."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response, StreamingResponse

from pricepipe.codec import encode_json


class JsonResponse(Response):
    """``application/json`` from any value :func:`pricepipe.codec.encode_json` takes."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode_json(content)


class CsvResponse(StreamingResponse):
    """A streamed ``text/csv`` body (chunks from an iterator)."""

    media_type = "text/csv; charset=utf-8"
