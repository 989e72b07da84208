"""pricepipe's HTTP API and dashboard (FastAPI on uvicorn).

* :mod:`pricepipe.api.app` - :func:`~pricepipe.api.app.create_app`, the ASGI application.
* :mod:`pricepipe.api.routes` - the ``/v1`` endpoints, ``/healthz`` and ``/metrics``.
* :mod:`pricepipe.api.params` - pure parsing of request parameters.
* :mod:`pricepipe.api.queries` - the SQL; JSON and CSV encoded by PostgreSQL.
* :mod:`pricepipe.api.arrow` - Parquet and Arrow IPC downloads (needs pyarrow).
* :mod:`pricepipe.api.pool` - the read-only PostgreSQL connection pool.
* :mod:`pricepipe.api.ratelimit` - per-client limits in Redis, API keys.
* :mod:`pricepipe.api.metrics` - Prometheus metrics per route template.
* :mod:`pricepipe.api.errors` - every error as a JSON body with a 4xx/503 status.
* :mod:`pricepipe.api.dashboard` - the page at ``/`` (static files in ``api/static``).
* :mod:`pricepipe.api.server` - uvicorn with systemd readiness and two-stage stop.
"""
