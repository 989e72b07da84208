"""Settings of the websocket server (``PRICEPIPE_WS_*``).

``None`` means "no limit" wherever a limit is optional.
"""


from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from pricepipe.config import Settings, setting
from pricepipe.exceptions import ConfigError
from pricepipe.feedstatus import STALE_AFTER_S


@dataclass(frozen=True, kw_only=True, repr=False)
class WsSettings(Settings):
    """The websocket server: listening address, limits, keepalive, access."""

    env_prefix: ClassVar[str] = "PRICEPIPE_WS_"

    host: str = setting("127.0.0.1", "Interface the websocket server binds to")
    port: int = setting(8765, "TCP port of the websocket server")

    # Access
    tokens: tuple[str, ...] = setting(
        (), "Comma-separated tokens accepted for auth; empty: no auth required", secret=True
    )
    allowed_origins: tuple[str, ...] = setting(
        (), "Comma-separated allowed Origin values (https://host[:port] or host[:port]); "
        "empty: any origin. Clients that send no Origin (non-browsers) are always allowed"
    )
    auth_timeout_s: float = setting(5.0, "Time a client has to send its auth message, seconds")
    allow_url_token: bool = setting(
        False, "Accept a token in the URL (?token=), as older clients sent it; off: such a "
        "handshake is refused with HTTP 400, since proxies and access logs record URLs (send "
        "the auth message or an Authorization: Bearer header instead)"
    )
    trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1", "::1"),
        "Peers (addresses or CIDR networks) whose X-Forwarded-For is believed for the client "
        "address, as PRICEPIPE_API_TRUSTED_PROXIES (list nginx's address when it runs on "
        "another host, or every client counts as nginx)"
    )

    # Limits
    max_connections: int | None = setting(10_000, "Most concurrent connections per process")
    max_connections_per_address: int | None = setting(
        100, "Most concurrent connections per client address and process (more are refused "
        "with HTTP 429); unset: no limit"
    )
    max_symbols: int = setting(
        500, "Most symbols one connection may subscribe to (each on any of the channels)"
    )
    max_message_bytes: int = setting(
        65_536, "Largest client message, bytes (bigger: closed with 1009)"
    )
    subscribe_rate: str = setting(
        "20/second", "Subscribe/unsubscribe requests allowed per connection (limits syntax)"
    )
    max_replay_entries: int | None = setting(
        100_000, "Most entries replayed to one resuming symbol and channel before it is "
        "declared not recoverable"
    )
    max_replay_entries_per_request: int | None = setting(
        250_000, "Most entries one subscribe request replays over all its resumes; the resume "
        "that reaches it and every later one of the request are declared not recoverable"
    )
    registry_refresh_s: float = setting(
        1.0, "Subscribing to a symbol that is not registered is refused; a symbol not in the "
        "cached registry is looked up again at most this often, seconds"
    )

    # Slow consumers
    buffer_high_bytes: int = setting(
        262_144, "Per-connection send buffer above which a client gets conflated updates"
    )
    buffer_low_bytes: int = setting(
        32_768, "Send buffer below which a conflated client counts as caught up again"
    )
    socket_send_buffer_bytes: int | None = setting(
        131_072, "Kernel send buffer (SO_SNDBUF) per connection, so a stalled client's "
        "backlog cannot hide in the kernel (Linux doubles it); unset: the kernel's autotuning"
    )
    slow_timeout_s: float = setting(
        10.0, "A client still behind after this long is closed with code 4008"
    )
    catchup_buffer_max: int = setting(
        10_000, "Live entries held per connection while its subscriptions catch up"
    )

    # Timeouts
    ping_interval_s: float | None = setting(20.0, "Interval of keepalive pings, seconds")
    ping_timeout_s: float | None = setting(
        20.0, "A client not answering a ping within this is closed, seconds"
    )
    close_timeout_s: float = setting(5.0, "Time to wait for a closing handshake, seconds")

    # Redis reading
    read_block_ms: int = setting(
        100, "XREAD block time; also how soon a newly subscribed stream is read, ms"
    )
    read_count: int = setting(1000, "Most entries per stream per XREAD")
    # 10 ms: in bench e2e at 50,000 ticks/s (issue 7: one client) p99 25 ms against
    # 40-64 ms at 15 ms; in bench ws (1,000 clients) p99 23 ms for ~78 % of a
    # core, against 25 ms for ~60 % at 15 ms.
    flush_interval_ms: float = setting(
        10.0, "Shortest time between two flushes of live entries to one connection (one "
        "frame per channel, one write); entries that arrive meanwhile share a frame and a busy "
        "shard is read once per interval (fewer frames, writes and Redis reads under load, for "
        "up to this much latency), ms; 0: no wait"
    )
    redis_concurrency: int = setting(
        32, "Most concurrent snapshot/resume reads of Redis (bounds pool connections)"
    )
    heartbeat_interval_s: float = setting(5.0, "Interval of the heartbeat key, seconds")
    feed_stale_after_s: float = setting(
        STALE_AFTER_S, "The status channel's snapshot shows a feed stale when it has not "
        "rewritten its state for this long, seconds (as PRICEPIPE_API_FEED_STALE_AFTER_S)")

    def __post_init__(self) -> None:
        if self.max_symbols < 1:
            raise ConfigError("PRICEPIPE_WS_MAX_SYMBOLS must be at least 1")
        if self.buffer_low_bytes > self.buffer_high_bytes:
            raise ConfigError(
                "PRICEPIPE_WS_BUFFER_LOW_BYTES must not exceed PRICEPIPE_WS_BUFFER_HIGH_BYTES"
            )
        if self.read_block_ms < 1 or self.read_count < 1:
            raise ConfigError("PRICEPIPE_WS_READ_BLOCK_MS and _READ_COUNT must be positive")
        if self.flush_interval_ms < 0:
            raise ConfigError("PRICEPIPE_WS_FLUSH_INTERVAL_MS must not be negative")
        if not self.feed_stale_after_s > 0:
            raise ConfigError("PRICEPIPE_WS_FEED_STALE_AFTER_S must be positive")
        if self.registry_refresh_s < 0:
            raise ConfigError("PRICEPIPE_WS_REGISTRY_REFRESH_S must not be negative")
        for name in ("max_connections_per_address", "max_replay_entries_per_request"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{self.env_name(name)} must be at least 1 (or unset)")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError as exc:
                raise ConfigError(f"{self.env_name('trusted_proxies')}: {proxy!r} is not an "
                                  "address or network") from exc
        try:
            from limits import parse

            parse(self.subscribe_rate)
        except ValueError as exc:
            raise ConfigError(
                f"PRICEPIPE_WS_SUBSCRIBE_RATE: cannot read {self.subscribe_rate!r}"
            ) from exc


SETTINGS = (WsSettings,)
