"""pricepipe's HTTP API and dashboard (FastAPI on uvicorn).

* :mod:`api.app` - :func:`~api.app.create_app`, the ASGI application.
* :mod:`api.routes` - the ``/v1`` endpoints, ``/healthz`` and ``/metrics``.
* :mod:`api.params` - pure parsing of request parameters.
* :mod:`api.queries` - the SQL; JSON and CSV encoded by PostgreSQL.
* :mod:`api.pool` - the read-only PostgreSQL connection pool.
* :mod:`api.ratelimit` - per-client limits in Redis, API keys.
* :mod:`api.metrics` - Prometheus metrics per route template.
* :mod:`api.errors` - every error as a JSON body with a 4xx/503 status.
* :mod:`api.dashboard` - the page at ``/`` (static files in ``api/static``).
* :mod:`api.server` - uvicorn with systemd readiness and two-stage stop.
* :mod:`api.bench` - ``pricepipe bench api``.
"""
