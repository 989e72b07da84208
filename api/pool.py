"""The API's pool of read-only PostgreSQL connections.

What a web server needs: a request *waits* (up to ``wait_s``) for a free
connection instead of failing at once when all are busy, connections are
opened lazily (the API starts while PostgreSQL is still down and reports it
on ``/healthz``) and then kept for the next request, and a connection that
failed, or whose server went away while it was idle, is closed rather than
handed on.

Not :class:`psycopg2.pool.ThreadedConnectionPool`: it opens ``minconn``
connections when created and closes every connection handed back beyond
``minconn``, so with the lazy start (``minconn=0``) it reused none and every
request paid a new backend (3 ms to connect, 5 ms more for a 1,000-row
page on cold caches).

Every connection is read-only twice over: it should log in as a role with
SELECT grants only (``pricepipe_reader``, migration 0500), and its session
is ``default_transaction_read_only`` as well. Each has the configured
statement timeout.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions

from pricepipe.exceptions import PricepipeError


class PoolBusyError(PricepipeError):
    """Every connection stayed busy for the whole wait."""


class ReadPool:
    """At most ``size`` connections to ``url``; see the module docstring.

    Safe to use from many threads (FastAPI runs sync endpoints in a thread
    pool).
    """

    def __init__(self, url: str, *, size: int, statement_timeout_ms: int, wait_s: float,
                 application_name: str = "pricepipe-api", connect_timeout_s: int = 5) -> None:
        self.size = size
        self.wait_s = wait_s
        # A slot per lent connection; one is made only when none is idle, so
        # there are never more than `size`.
        self._slots = threading.BoundedSemaphore(size)
        self._connect_args = {
            "dsn": url, "application_name": application_name,
            "connect_timeout": connect_timeout_s,
            "options": f"-c statement_timeout={int(statement_timeout_ms)}",
        }
        self._lock = threading.Lock()
        self._idle: list[psycopg2.extensions.connection] = []  # last in, first out
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """Borrow a connection for the ``with`` block.

        Raises :exc:`PoolBusyError` after ``wait_s`` without a free one and
        :exc:`psycopg2.OperationalError` when PostgreSQL cannot be reached.
        A connection on which an exception escaped the block is closed
        (after a failover, a restart or a cancelled COPY it is unusable).
        """
        if self._closed:
            raise PoolBusyError("the connection pool is closed")
        if not self._slots.acquire(timeout=self.wait_s):
            raise PoolBusyError(f"no free database connection within {self.wait_s:g} s")
        try:
            with self._lent() as conn:
                yield conn
        finally:
            self._slots.release()

    @contextmanager
    def spare_connection(self) -> Iterator[psycopg2.extensions.connection | None]:
        """Borrow a second connection, for work that can do without one:
        ``None`` at once when none is free (never a wait, so a busy pool
        serves other requests first). Otherwise as :meth:`connection`."""
        if self._closed or not self._slots.acquire(blocking=False):
            yield None
            return
        try:
            with self._lent() as conn:
                yield conn
        finally:
            self._slots.release()

    @contextmanager
    def _lent(self) -> Iterator[psycopg2.extensions.connection]:
        """An idle connection or a new one, back afterwards (or closed when
        it failed); the caller holds a slot."""
        conn = self._idle_connection() or self._connect()
        failed = True
        try:
            yield conn
            failed = conn.closed != 0 or (
                conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE
            )
        finally:
            self._give_back(conn, failed)

    def _connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(**self._connect_args)
        try:
            # One statement at a time, nothing left open between them;
            # read-only is SET for the session.
            conn.autocommit = True
            conn.set_session(readonly=True)
        except BaseException:
            conn.close()
            raise
        return conn

    def _idle_connection(self) -> psycopg2.extensions.connection | None:
        """The most recently used idle connection whose server is still there.

        An idle connection has nothing to read: a readable socket means the
        server has said goodbye (a restart, a failover, pg_terminate_backend
        send an error, then close) or something unexpected, and either way
        the connection is closed here rather than failing its next query.
        """
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if not select.select([conn], [], [], 0)[0]:
                return conn
            conn.close()

    def _give_back(self, conn: psycopg2.extensions.connection, failed: bool) -> None:
        with self._lock:
            keep = not failed and not self._closed
            if keep:
                self._idle.append(conn)
        if not keep and not conn.closed:
            conn.close()

    def close(self) -> None:
        """Close every idle connection; later borrowers get :exc:`PoolBusyError`
        and connections handed back are closed."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
