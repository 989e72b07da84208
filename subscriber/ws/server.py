"""The websocket server process: HTTP routing of the opening handshake
(``/ws`` and ``/``, ``/healthz``, ``/metrics``), access checks (origin,
token, connections per client address), one
:class:`~pricepipe.subscriber.ws.session.Session` per connection, one shared
:class:`~pricepipe.subscriber.ws.hub.Hub` and
:class:`~pricepipe.subscriber.ws.registry.SymbolRegistry`, heartbeat and
systemd notifications.

Several processes can serve behind nginx with no coordination: each reads
Redis for its own clients only.

A full Redis (``maxmemory`` with ``noeviction``) refuses writes but still
serves reads: the heartbeat, the only thing this process writes, then
fails soft (logged once per episode, counted, ``/healthz`` says
``"redis_writable": false``) while clients keep receiving everything and
the systemd watchdog keeps being fed.
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

import redis
from limits import parse as parse_rate
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from pricepipe import codec, notify
from pricepipe.clock import now_ms
from pricepipe.config import RedisSettings
from pricepipe.connections import async_redis_client, honour_cancel

from . import protocol as p
from .address import AddressLimit, TrustedProxies, client_address
from .hub import RETRYABLE, Hub
from .ratewindow import MovingWindow
from .registry import SymbolRegistry
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


def url_token(request: Request) -> str | None:
    """The ``token`` query parameter of the handshake, if any."""
    values = parse_qs(urlsplit(request.path).query).get("token")
    return values[0] if values else None


def request_token(request: Request, *, allow_url: bool = False) -> str | None:
    """Token from ``Authorization: Bearer ...``, else (``allow_url``) the
    ``token`` query parameter."""
    header = request.headers.get("Authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return url_token(request) if allow_url else None


#: The answer to a handshake carrying ``?token=`` (PRICEPIPE_WS_ALLOW_URL_TOKEN off).
URL_TOKEN_REFUSED = ("tokens in the URL are refused (proxies and access logs record URLs): "
                     "send {\"op\": \"auth\", \"token\": ...} first, or an "
                     "Authorization: Bearer header\n")


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
        self._rate = parse_rate(settings.subscribe_rate)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat_ok = True
        #: The kind of refusal of the current episode of failed heartbeat
        #: writes (e.g. "OutOfMemoryError"), None while they succeed.
        self._write_refusal: str | None = None
        self._gate = asyncio.Semaphore(settings.redis_concurrency)
        self._name = f"{socket.gethostname()}-{os.getpid()}"
        self._trusted = TrustedProxies(settings.trusted_proxies)
        self.addresses = AddressLimit(settings.max_connections_per_address)
        self.registry: SymbolRegistry | None = None

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
        self.registry = SymbolRegistry(self._r, self.keys, refresh_s=s.registry_refresh_s)
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
        """``redis``: the hub reads (every shard's reader runs and its last
        read succeeded) and Redis is reachable; ``redis_writable``: the last
        heartbeat write was accepted (false while Redis is full). The status
        is ``ok`` only with both."""
        hub = self.hub
        redis_ok = bool(hub is not None and hub.healthy and hub.alive and self._heartbeat_ok)
        writable = redis_ok and self._write_refusal is None
        return {
            "status": "ok" if redis_ok and writable else "degraded",
            "redis": redis_ok,
            "redis_writable": writable,
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
        if not s.allow_url_token and url_token(request) is not None:
            # Refused whether or not the token is right, and whether or not
            # tokens are required: the client must stop sending it in URLs.
            return connection.respond(400, URL_TOKEN_REFUSED)
        token = request_token(request, allow_url=s.allow_url_token)
        if s.tokens and token is not None and not token_ok(token, s.tokens):
            return connection.respond(401, "invalid token\n")
        remote = connection.remote_address
        address = client_address(remote[0] if remote else None,
                                 request.headers.get_all("X-Forwarded-For"), self._trusted)
        if address is not None:
            if not self.addresses.acquire(address):
                self.stats.address_refusals += 1
                return connection.respond(429, "too many connections from your address\n")
            # Counted until the TCP connection is gone, whether or not the
            # handshake completes.
            connection.connection_lost_waiter.add_done_callback(
                lambda _: self.addresses.release(address))
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert self.hub is not None and ws.request is not None
        sndbuf = self.settings.socket_send_buffer_bytes
        sock = ws.transport.get_extra_info("socket")
        if sndbuf is not None and sock is not None:
            # Bounds kernel memory per connection (and makes a stalled reader
            # show up in our own buffer sooner).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        token = request_token(ws.request, allow_url=self.settings.allow_url_token)
        authenticated = not self.settings.tokens or (
            token is not None and token_ok(token, self.settings.tokens))
        assert self.registry is not None
        session = Session(
            ws, hub=self.hub, r=self._r, keys=self.keys, settings=self.settings,
            rate=MovingWindow(self._rate), stats=self.stats,
            authenticated=authenticated, gate=self._gate, registry=self.registry,
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
        Redis is down or full, because a restart would not bring Redis back
        (or free it) but would drop every client. Redis trouble shows in
        /healthz and STATUS. Nothing ends this loop but cancellation.
        """
        interval = self.settings.heartbeat_interval_s
        key = self.keys.heartbeat("ws", self._name)
        while True:
            notify.watchdog()
            try:
                await self._beat(key, interval)
                honour_cancel()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the watchdog (and kill every client)
                log.exception("heartbeat failed")
            health = self.health()
            redis_state = ("" if health["redis_writable"] else ", redis full (writes refused)"
                           if health["redis"] else ", redis unreachable")
            notify.status(f"{self.stats.connections} connections{redis_state}")
            await asyncio.sleep(interval)

    async def _beat(self, key: str, interval: float) -> None:
        """One heartbeat write; a refusal (``OutOfMemoryError`` from a full
        Redis, ``READONLY`` from a replica, ...) is logged once per episode
        and counted, never raised."""
        try:
            # ts_ms: when it was written, so that `pricepipe status` tells its age.
            await self._r.set(key, codec.encode_json({**self.health(), "pid": os.getpid(),
                                                      "ts_ms": now_ms()}),
                              ex=max(int(interval * 3), 1))
        except RETRYABLE:
            self.stats.redis_write_errors += 1
            self._heartbeat_ok = False  # the hub logs the outage
            return
        except redis.RedisError as exc:
            self.stats.redis_write_errors += 1
            self._heartbeat_ok = True
            if self._write_refusal is None:
                log.warning("redis refuses the heartbeat write (%s: %s); serving on, "
                            "reads still work", type(exc).__name__, exc)
            self._write_refusal = type(exc).__name__
            return
        if self._write_refusal is not None:
            log.warning("redis accepts the heartbeat write again (after %s)",
                        self._write_refusal)
            self._write_refusal = None
        self._heartbeat_ok = True

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
             int(bool(hub and hub.healthy and hub.alive))),
            ("pricepipe_ws_redis_write_errors_total", "counter",
             "Heartbeat writes Redis refused (full, read-only) or could not take",
             st.redis_write_errors),
            ("pricepipe_ws_unknown_symbol_requests_total", "counter",
             "Subscribe requests refused for symbols that are not registered",
             st.unknown_symbol_requests),
            ("pricepipe_ws_address_refusals_total", "counter",
             "Connections refused for the per-address limit", st.address_refusals),
            ("pricepipe_ws_epoch_changes_total", "counter",
             "Shards whose Redis epoch changed (a restart or failover: may have lost entries)",
             hub.epoch_changes if hub else 0),
            ("pricepipe_ws_epoch_resets_total", "counter",
             "Pairs (symbol, channel) started again after an epoch change", st.epoch_resets),
            ("pricepipe_ws_reader_errors_total", "counter",
             "Unexpected errors the stream readers survived", hub.reader_errors if hub else 0),
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
