"""systemd readiness and watchdog notifications (``sd_notify(3)``).

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside
systemd the variable is unset and every call is a no-op, so roles call these
unconditionally: :func:`ready` once they really serve, :func:`watchdog` from
their healthy main loop, :func:`stopping` when a stop begins.

Only the main process notifies. The units say ``NotifyAccess=main``, and
systemd logs "Got notification message from PID ..., but reception only
permitted for main PID ..." for every message of another process, so rq's
work horses (forked per job, and heartbeating like their parent) and any
other forked child stay silent: a child forgets ``$NOTIFY_SOCKET`` at fork
(so the programs it runs do not inherit it either), and :func:`notify` sends
only from the process that imported this module.
"""

from __future__ import annotations

import os
import socket

#: The process allowed to notify: the one that imported this module (the service).
_main_pid = os.getpid()


def _forget_socket() -> None:
    os.environ.pop("NOTIFY_SOCKET", None)


os.register_at_fork(after_in_child=_forget_socket)


def notify(message: str) -> bool:
    """Send ``message``; True if a notify socket was there to receive it. From a
    forked child, nothing is sent (False)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or os.getpid() != _main_pid:
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
