"""The dashboard at ``/``: a static page (``api/static/``) whose chart
library, uPlot, is vendored under ``api/static/vendor/`` (no CDN at run
time), plus ``/config.js`` telling the page where the websocket server is.

Everything is served from the API's own origin, so behind nginx one host
serves the page, ``/v1`` and (proxied to the websocket server) ``/ws``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from pricepipe.codec import encode_json

from .settings import ApiSettings

STATIC_DIR = Path(__file__).with_name("static")


def config_script(settings: ApiSettings) -> bytes:
    """``/config.js``: the page's settings as a JavaScript global. ``wsUrl``
    null means "same origin, path /ws"."""
    return b"window.PRICEPIPE_CONFIG = " + encode_json({"wsUrl": settings.ws_url}) + b";\n"


def install(app: FastAPI, settings: ApiSettings) -> None:
    """Add ``/``, ``/config.js`` and ``/static`` to ``app``."""
    script = config_script(settings)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/config.js", include_in_schema=False)
    def config_js() -> Response:
        return Response(script, media_type="text/javascript",
                        headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
