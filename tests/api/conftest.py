"""Fixtures of the API tests: an app on the test servers, in-process or under a
real uvicorn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pricepipe.api.app import create_app
from pricepipe.api.settings import ApiSettings
from pricepipe.config import DatabaseSettings, RedisSettings


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(rate_limit=None, key_rate_limit=None)


@pytest.fixture
def make_client(redis_settings: RedisSettings, db_settings: DatabaseSettings
                ) -> Iterator[Callable[..., TestClient]]:
    """``make_client(settings=None, db=None, **testclient_kwargs)``: a started app."""
    clients: list[TestClient] = []

    def make(settings: ApiSettings | None = None, db: DatabaseSettings | None = None,
             **kwargs: Any) -> TestClient:
        app = create_app(settings or ApiSettings(rate_limit=None, key_rate_limit=None),
                         redis_settings, db or db_settings)
        client = TestClient(app, **kwargs)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient], api_settings: ApiSettings) -> TestClient:
    return make_client(api_settings)


@pytest.fixture
def make_live_api(redis_settings: RedisSettings, db_settings: DatabaseSettings
                  ) -> Iterator[Callable[..., str]]:
    """``make_live_api(settings=None, db=None)``: the app under a real uvicorn in a
    thread, on a free port; returns its base URL. Stopped at teardown."""
    import threading

    import uvicorn

    from pricepipe.api.server import Server
    from pricepipe.embedded import free_port

    running: list[tuple[Server, threading.Thread]] = []

    def start(settings: ApiSettings | None = None, db: DatabaseSettings | None = None) -> str:
        app = create_app(settings or ApiSettings(rate_limit=None, key_rate_limit=None),
                         redis_settings, db or db_settings)
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                access_log=False, ws="none", proxy_headers=False)
        server = Server(config)
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        running.append((server, thread))
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            thread.join(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(30)


