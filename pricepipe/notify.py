"""systemd readiness and watchdog notifications (``sd_notify(3)``).

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside
systemd the variable is unset and every call is a no-op, so roles call these
unconditionally: :func:`ready` once they really serve, :func:`watchdog` from
their healthy main loop, :func:`stopping` when a stop begins.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message``; True if a notify socket was there to receive it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def ready(status: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
