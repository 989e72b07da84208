"""The websocket server process: HTTP routing of the opening handshake
(``/ws`` and ``/``, ``/healthz``, ``/metrics``), access checks, one
:class:`~pricepipe.subscriber.ws.session.Session` per connection, one shared
:class:`~pricepipe.subscriber.ws.hub.Hub`, heartbeat and systemd notifications.

Several processes can serve behind nginx with no coordination: each reads
Redis for its own clients only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from limits import parse as parse_rate
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from pricepipe import codec, notify
from pricepipe.config import RedisSettings
from pricepipe.connections import async_redis_client

from . import protocol as p
from .hub import RETRYABLE, Hub
from .session import Session, Stats, token_ok
from .settings import WsSettings

log = logging.getLogger(__name__)

WS_PATHS = ("/ws", "/")


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a browser ``Origin`` may connect.

    No list allows everything; a request without ``Origin`` (not a browser)
    is always allowed. An entry is a full origin (``https://host:port``) or
    a bare ``host[:port]`` like the seed's ``--allow-websocket-origin``.
    """
    if not allowed or origin is None:
        return True
    netloc = urlsplit(origin).netloc.lower()
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == "*" or entry == origin.lower() or entry == netloc:
            return True
    return False


def request_token(request: Request) -> str | None:
    """Token from ``Authorization: Bearer ...`` or the ``token`` query parameter."""
    header = request.headers.get("Authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    values = parse_qs(urlsplit(request.path).query).get("token")
    return values[0] if values else None


class WsServer:
    """One websocket server process. ``await start()``, then ``await stop()``."""

    def __init__(self, settings: WsSettings, redis_settings: RedisSettings,
                 *, r: Any = None) -> None:
        self.settings = settings
        self.keys = redis_settings.keys
        self._redis_settings = redis_settings
        self._r = r
        self._own_redis = r is None
        self.stats = Stats()
        self.sessions: set[Session] = set()
        self.hub: Hub | None = None
        self._server: Server | None = None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._rate = parse_rate(settings.subscribe_rate)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat_ok = True
        self._gate = asyncio.Semaphore(settings.redis_concurrency)
        self._name = f"{socket.gethostname()}-{os.getpid()}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        s = self.settings
        if self._r is None:
            self._r = async_redis_client(self._redis_settings)
        self.hub = Hub(self._r, self.keys, block_ms=s.read_block_ms, count=s.read_count,
                       flush_interval_ms=s.flush_interval_ms)
        self._server = await serve(
            self._handler, s.host, s.port,
            process_request=self._process_request,
            compression=None,  # per-connection deflate would re-encode every shared frame
            max_size=s.max_message_bytes,
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_timeout_s,
            close_timeout=s.close_timeout_s,
            server_header=None,
        )
        self._name = f"{socket.gethostname()}-{self.port}"
        self._heartbeat_task = asyncio.create_task(self._heartbeat())

    async def stop(self, code: int = p.CLOSE_GOING_AWAY) -> None:
        """Close every connection with ``code`` (1001, going away) and release Redis."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._server is not None:
            self._server.close(close_connections=True, code=code, reason="server shutting down")
            await self._server.wait_closed()
        if self.hub is not None:
            await self.hub.close()
        if self._own_redis and self._r is not None:
            await self._r.aclose()

    def health(self) -> dict[str, Any]:
        hub = self.hub
        redis_ok = bool(hub is not None and hub.healthy and self._heartbeat_ok)
        return {
            "status": "ok" if redis_ok else "degraded",
            "redis": redis_ok,
            "connections": self.stats.connections,
            "symbols": len(hub.symbols) if hub is not None else 0,
            "streams": len(hub.streams) if hub is not None else 0,
        }

    # --- handshake -------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            health = self.health()
            return _json_response(connection, 200 if health["redis"] else 503, health)
        if path == "/metrics":
            return _text_response(connection, 200, self._metrics(),
                                  "text/plain; version=0.0.4; charset=utf-8")
        if path not in WS_PATHS:
            return connection.respond(404, "not found: the websocket endpoint is /ws\n")
        s = self.settings
        if s.max_connections is not None and self.stats.connections >= s.max_connections:
            return connection.respond(503, "too many connections\n")
        if not origin_allowed(request.headers.get("Origin"), s.allowed_origins):
            return connection.respond(403, "origin not allowed\n")
        token = request_token(request)
        if s.tokens and token is not None and not token_ok(token, s.tokens):
            return connection.respond(401, "invalid token\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert self.hub is not None and ws.request is not None
        sndbuf = self.settings.socket_send_buffer_bytes
        sock = ws.transport.get_extra_info("socket")
        if sndbuf is not None and sock is not None:
            # Bounds kernel memory per connection (and makes a stalled reader
            # show up in our own buffer sooner).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        token = request_token(ws.request)
        authenticated = not self.settings.tokens or (
            token is not None and token_ok(token, self.settings.tokens))
        session = Session(
            ws, hub=self.hub, r=self._r, keys=self.keys, settings=self.settings,
            limiter=self._limiter, rate=self._rate, stats=self.stats,
            authenticated=authenticated, gate=self._gate,
        )
        self.stats.connections += 1
        self.sessions.add(session)
        try:
            await session.serve()
        finally:
            self.sessions.discard(session)
            self.stats.connections -= 1

    # --- health ----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """A heartbeat key with a TTL, and systemd's watchdog from this loop.

        The watchdog proves the event loop runs; it is not withheld while
        Redis is down, because a restart would not bring Redis back but would
        drop every client. Redis trouble shows in /healthz (503) and STATUS.
        """
        interval = self.settings.heartbeat_interval_s
        key = self.keys.heartbeat("ws", self._name)
        while True:
            notify.watchdog()
            try:
                await self._r.set(key, codec.encode_json({**self.health(), "pid": os.getpid()}),
                                  ex=max(int(interval * 3), 1))
                self._heartbeat_ok = True
            except RETRYABLE:
                self._heartbeat_ok = False
            redis_state = "" if self.health()["redis"] else ", redis unreachable"
            notify.status(f"{self.stats.connections} connections{redis_state}")
            await asyncio.sleep(interval)

    def _metrics(self) -> str:
        st = self.stats
        hub = self.hub
        rows = [
            ("pricepipe_ws_connections", "gauge", "Open websocket connections", st.connections),
            ("pricepipe_ws_frames_total", "counter", "Data frames sent", st.frames),
            ("pricepipe_ws_deliveries_total", "counter",
             "Trades, quotes and bars sent to clients", st.deliveries),
            ("pricepipe_ws_conflations_total", "counter", "Times a client fell behind",
             st.conflations),
            ("pricepipe_ws_trade_gaps_total", "counter",
             "Ranges of trades a slow client skipped (named in conflated frames)", st.gaps),
            ("pricepipe_ws_slow_closes_total", "counter", "Clients closed for being slow",
             st.slow_closes),
            ("pricepipe_ws_protocol_errors_total", "counter", "Error messages sent",
             st.protocol_errors),
            ("pricepipe_ws_resumes_total", "counter", "Pairs (symbol, channel) resumed",
             st.resumes),
            ("pricepipe_ws_unrecoverable_total", "counter", "Pair resumes that could not be served",
             st.unrecoverable),
            ("pricepipe_ws_catchup_overflows_total", "counter",
             "Catch-up buffers dropped for being full (the streams were read again)",
             st.catchup_overflows),
            ("pricepipe_ws_entries_read_total", "counter", "Stream entries read from Redis",
             hub.entries_read if hub else 0),
            ("pricepipe_ws_streams", "gauge", "Streams read (subscribed symbol and channel pairs)",
             len(hub.streams) if hub else 0),
            ("pricepipe_ws_redis_up", "gauge", "1 while Redis reads succeed",
             int(bool(hub and hub.healthy))),
        ]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.exposition import generate_latest
        from prometheus_client.registry import Collector, CollectorRegistry

        class _Snapshot(Collector):
            def collect(self) -> Any:
                for name, kind, help_text, value in rows:
                    if kind == "counter":
                        yield CounterMetricFamily(name.removesuffix("_total"), help_text,
                                                  value=value)
                    else:
                        yield GaugeMetricFamily(name, help_text, value=value)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot())
        return generate_latest(registry).decode()


def _json_response(connection: ServerConnection, status: int, body: Any) -> Response:
    return _text_response(connection, status, codec.encode_json(body).decode() + "\n",
                          "application/json")


def _text_response(connection: ServerConnection, status: int, text: str,
                   content_type: str) -> Response:
    response = connection.respond(status, text)
    headers = Headers(response.headers)
    headers["Content-Type"] = content_type
    return Response(response.status_code, response.reason_phrase, headers, response.body)


async def run(settings: WsSettings, redis_settings: RedisSettings) -> int:
    """Serve until SIGTERM/SIGINT: the first closes every connection with 1001
    and returns 0; a second exits at once."""
    server = WsServer(settings, redis_settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: closing connections", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("websocket server on ws://%s:%d/ws", settings.host, server.port)
    notify.ready(f"serving ws on port {server.port}")
    started = time.monotonic()
    try:
        await stop.wait()
    finally:
        notify.stopping()
        await server.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("websocket server stopped after %.0f s", time.monotonic() - started)
    return 0
