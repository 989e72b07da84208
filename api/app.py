"""The FastAPI application: :func:`create_app` wires settings, connections,
middleware, routes and the dashboard together.

Nothing connects at import or in :func:`create_app`: the lifespan opens the
Redis client, the read-only PostgreSQL pool and the rate limiter when the
server starts, and closes them when it stops. Neither server has to be up
for the API to start; ``/healthz`` says which one is missing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from pricepipe.config import DatabaseSettings, RedisSettings

from . import dashboard, errors, feeds, routes
from .metrics import Metrics, MetricsMiddleware
from .pool import ReadPool
from .ratelimit import RateLimiter, redis_storage
from .services import Services, get_services
from .settings import ApiSettings

log = logging.getLogger(__name__)


def _rate_limit(request: Request) -> None:
    get_services(request).limiter.check(request)


def create_app(
    settings: ApiSettings | None = None, redis_settings: RedisSettings | None = None,
    db_settings: DatabaseSettings | None = None,
) -> FastAPI:
    """The API as an ASGI app; settings default to the environment's.

    Raises :exc:`~pricepipe.exceptions.ConfigError` when the Redis or
    database URL is missing.
    """
    settings = settings or ApiSettings.from_env()
    redis_settings = redis_settings or RedisSettings.from_env()
    db_settings = db_settings or DatabaseSettings.from_env()
    redis_settings.require_url()
    read_url = db_settings.require_read_url()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from pricepipe.connections import redis_client

        keys = redis_settings.keys
        r = redis_client(redis_settings)
        pool = ReadPool(read_url, size=db_settings.pool_max,
                        statement_timeout_ms=db_settings.statement_timeout_ms,
                        wait_s=settings.pool_wait_s)
        storage = redis_storage(redis_settings, keys, r) if (
            settings.rate_limit or settings.key_rate_limit) else None
        limiter = RateLimiter(
            storage, per_address=settings.rate_limit, per_key=settings.key_rate_limit,
            api_keys=settings.api_keys, key_required=settings.api_key_required,
            on_refused=metrics.rate_limited.inc, on_error=metrics.rate_limit_errors.inc,
        )
        app.state.services = Services(settings, keys, r, pool, limiter, metrics)
        metrics.watch_pipeline(r, keys)
        try:
            yield
        finally:
            metrics.unwatch_pipeline()
            app.state.services = None
            pool.close()
            r.close()

    app = FastAPI(
        title="pricepipe",
        version="1",
        summary="History, bars and live quotes of the pricepipe market-data pipeline.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    errors.install(app)
    app.include_router(routes.build_router(settings, [Depends(_rate_limit)]))
    app.include_router(feeds.build_router(settings, [Depends(_rate_limit)]))
    app.include_router(routes.build_ops_router(metrics))
    dashboard.install(app, settings)
    # Outermost first: the client address is resolved before anything counts it.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    return app
