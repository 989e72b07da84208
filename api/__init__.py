"""pricepipe's HTTP API and dashboard (FastAPI on uvicorn).

* :mod:`api.app` - :func:`~api.app.create_app`, the ASGI application.
* :mod:`api.routes` - the ``/v1`` endpoints, ``/healthz`` and ``/metrics``.
* :mod:`api.params` - pure parsing of request parameters.
* :mod:`api.queries` - the SQL, JSON/CSV encoded by PostgreSQL.
* :mod:`api.server` - runs uvicorn with systemd readiness and graceful stop.
"""
