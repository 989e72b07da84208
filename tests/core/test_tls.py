"""``rediss://``: Redis over TLS with a certificate made here (the ``openssl``
command), the server's own TLS (Debian's redis-server is built with it).
Every role's client verifies the server against the CA named in the URL
(``?ssl_ca_certs=``), plain TCP and an unknown CA are refused, and the roles
run over it as they do over TCP: publisher, persist worker and websocket
server as processes, each with its own ACL user."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
import redis.asyncio
from websockets.sync.client import connect

from pricepipe import streams
from pricepipe.acl import Role, acl_file, role_urls
from pricepipe.embedded import RedisServer, RedisTls, free_port
from pricepipe.events import Trade
from pricepipe.keys import Keys
from tests.helpers import wait_http

pytestmark = pytest.mark.timeout(180)


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate authority: ``(certificate, key)``."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=directory)
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> RedisTls:
    """A server certificate for 127.0.0.1 (and localhost) signed by ``ca``."""
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
             cwd=directory)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf",
             cwd=directory)
    return RedisTls(cert=directory / "server.pem", key=directory / "server.key", ca=ca[0])


@pytest.fixture
def tls_server(make_redis_server: Callable[..., RedisServer], redis_passwords: dict[Role, str],
               keys: Keys, tmp_path: Path) -> RedisServer:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test's certificates")
    tls = make_server_cert(tmp_path, make_ca(tmp_path, "test-ca"))
    return make_redis_server(tls=tls, acl=acl_file(redis_passwords, keys))


def _trades(n: int) -> list[Trade]:
    now_us = time.time_ns() // 1000
    return [Trade("AAPL", now_us - 1_000_000 + i, 10.0 + i, 1.0, "test") for i in range(n)]


def test_clients_verify_the_server_and_plain_tcp_is_refused(
        tls_server: RedisServer, redis_passwords: dict[Role, str], keys: Keys,
        tmp_path: Path) -> None:
    assert tls_server.url.startswith("rediss://") and "ssl_ca_certs=" in tls_server.url
    urls = role_urls(tls_server.url, redis_passwords, keys)
    publisher = redis.Redis.from_url(urls[Role.PUBLISHER])
    try:
        streams.register_symbols(publisher, keys, ["AAPL"])
        ids = streams.append_events(publisher, keys, _trades(3))
    finally:
        publisher.close()

    async def read_async() -> list[Any]:  # the websocket server's client
        client = redis.asyncio.Redis.from_url(urls[Role.WS])
        try:
            reply = await client.xrange(keys.trades("AAPL"))
            return [entry_id for entry_id, _ in reply]
        finally:
            await client.aclose()

    assert asyncio.run(read_async()) == ids

    plain = redis.Redis(host="127.0.0.1", port=tls_server.port, socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    stranger = redis.Redis.from_url(
        urls[Role.READER].partition("?")[0] + f"?ssl_ca_certs={quote(str(other_ca), safe='')}")
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        stranger.ping()
    stranger.close()


def test_the_roles_run_over_tls(
        tls_server: RedisServer, redis_passwords: dict[Role, str], keys: Keys,
        spawn: Any, pipeline_env: dict[str, str], db: Any) -> None:
    urls = role_urls(tls_server.url, redis_passwords, keys)

    def env_of(role: Role) -> dict[str, str]:
        return {**pipeline_env, "PRICEPIPE_REDIS_URL": urls[role]}

    ws_port = free_port()
    ws = spawn(["ws", "--port", str(ws_port)], env=env_of(Role.WS))
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws)
    publish = spawn(["publish", "--source", "gbm", "--symbols", "AAPL", "--count", "100",
                     "--seed", "1"], env=env_of(Role.PUBLISHER))
    assert publish.wait(60) == 0, publish.stdout.read() if publish.stdout else ""
    persist = spawn(["persist", "--burst"], env=env_of(Role.PERSIST))
    assert persist.wait(60) == 0, persist.stdout.read() if persist.stdout else ""
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM trades")
        (rows,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM quotes")
        (quote_rows,) = cur.fetchone()
    assert rows + quote_rows == 100

    snapshot: dict[str, Any] = {}

    def subscribe() -> None:
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=10) as client:
            client.send(orjson.dumps({"op": "subscribe", "symbols": ["AAPL"],
                                      "channels": ["trades", "quotes"]}).decode())
            deadline = time.monotonic() + 30
            while not snapshot and time.monotonic() < deadline:
                message = orjson.loads(client.recv(timeout=30))
                if message.get("type") == "snapshot":
                    snapshot.update(message)

    thread = threading.Thread(target=subscribe, daemon=True)
    thread.start()
    thread.join(60)
    assert snapshot.get("trades") or snapshot.get("quotes"), snapshot
