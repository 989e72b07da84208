"""Who a connection is from, and how many connections each client address
holds.

The client address is the peer's, unless the peer is a trusted proxy (by
default the loopback addresses, where nginx connects from): then it is the
right-most address of ``X-Forwarded-For`` that is not itself a trusted
proxy, as the HTTP API resolves it (uvicorn's ``ProxyHeadersMiddleware``
with ``PRICEPIPE_API_TRUSTED_PROXIES``). A client cannot spoof it: what it
writes into the header itself sits left of what the proxies append.
:func:`client_address` is pure; :class:`AddressLimit` only counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Addresses or CIDR networks whose ``X-Forwarded-For`` is believed.

    Raises ``ValueError`` for an entry that is neither."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)

    def __contains__(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in net for net in self.networks)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:1.2.3.4 from a dual-stack socket
    return address


def _host(value: str) -> str:
    """``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:5678`` or ``::1`` without the port."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.rsplit(":", 1)[0]
    return value


def normalize(host: str) -> str:
    """One spelling per address (``::ffff:1.2.3.4`` is ``1.2.3.4``); other text as is."""
    address = _address(host)
    return host if address is None else str(address)


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   trusted: TrustedProxies) -> str | None:
    """The client's address: ``peer`` (the TCP peer's host), or, when that is
    a trusted proxy, the right-most ``X-Forwarded-For`` entry that is not a
    trusted proxy (the left-most when all are). ``forwarded_for``: every
    ``X-Forwarded-For`` header's value, in order. None without a peer."""
    if peer is None:
        return None
    if peer not in trusted:
        return normalize(peer)
    hosts = [_host(part) for value in forwarded_for for part in value.split(",")]
    hosts = [host for host in hosts if host]
    if not hosts:
        return normalize(peer)  # the proxy itself, or a local client
    for host in reversed(hosts):
        if host not in trusted:
            return normalize(host)
    return normalize(hosts[0])


class AddressLimit:
    """Open connections per client address, at most ``limit`` each (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count one more connection of ``address``; False (nothing counted) when full."""
        count = self._open.get(address, 0)
        if self.limit is not None and count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)

    @property
    def addresses(self) -> int:
        return len(self._open)
