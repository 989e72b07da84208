"""What request handlers share: the connections the lifespan opened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from pricepipe.keys import Keys

from .metrics import Metrics
from .pool import ReadPool
from .ratelimit import RateLimiter
from .settings import ApiSettings


@dataclass
class Services:
    """Opened by the app's lifespan, closed when it ends."""

    settings: ApiSettings
    keys: Keys
    redis: Any
    pool: ReadPool
    limiter: RateLimiter
    metrics: Metrics


def get_services(request: Request) -> Services:
    """The app's :class:`Services` (a FastAPI dependency)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:  # only outside a lifespan, e.g. a test client used without `with`
        raise RuntimeError("the API's lifespan has not run")
    return services
