"""A TCP forwarder the soak and the tests put in front of Redis: a floating
address for a failover, and a replication link that can fall behind.

:meth:`TcpProxy.retarget` points it at another server and drops the open
connections, as a failover behind a virtual IP or a Sentinel-aware proxy
does. :meth:`TcpProxy.pause` stops forwarding without closing anything:
bytes wait in the proxy, so a replica behind it falls behind its primary
for real (stopping the replica's process would not do: what the primary
already wrote sits in the replica's socket buffer and arrives on resume).
What a paused proxy holds when it is retargeted or closed is dropped.

Threads, two per connection: a tool for benchmarks and tests, not for
production traffic.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards a local port to ``host:target_port``."""

    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @property
    def url(self) -> str:
        """A Redis URL of the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                # Closed meanwhile: drop() has already swept the list.
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def pause(self) -> None:
        """Stop forwarding (in both directions); connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again what waited, and everything after it."""
        self._flowing.set()

    def drop(self) -> None:
        """Close every open connection (what a paused proxy held is lost);
        new connections are accepted and forwarded."""
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._flowing.set()

    def retarget(self, port: int) -> None:
        """Point new connections at ``port`` and drop the open ones."""
        self.target_port = port
        self.drop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._listener.close()
        self.drop()
