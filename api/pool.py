"""The API's pool of read-only PostgreSQL connections.

A thin layer over :class:`psycopg2.pool.ThreadedConnectionPool` that adds
what a web server needs: a request *waits* (up to ``wait_s``) for a free
connection instead of failing at once when all are busy, connections are
opened lazily (the API starts while PostgreSQL is still down and reports it
on ``/healthz``), and a connection that failed is closed rather than handed
to the next request.

Every connection is read-only twice over: it should log in as a role with
SELECT grants only (``pricepipe_reader``, migration 0500), and its session
is ``default_transaction_read_only`` as well. Each has the configured
statement timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
import psycopg2.pool

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
        # psycopg2's pool raises at once when exhausted; the semaphore makes
        # a request wait for a slot instead, so the pool never is.
        self._slots = threading.BoundedSemaphore(size)
        self._pool = psycopg2.pool.ThreadedConnectionPool(
            0, size, url, application_name=application_name, connect_timeout=connect_timeout_s,
            options=f"-c statement_timeout={int(statement_timeout_ms)}",
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """Borrow a connection for the ``with`` block.

        Raises :exc:`PoolBusyError` after ``wait_s`` without a free one and
        :exc:`psycopg2.OperationalError` when PostgreSQL cannot be reached.
        A connection on which an exception escaped the block is closed
        (after a failover, a restart or a cancelled COPY it is unusable).
        """
        if self._pool.closed:
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
        if self._pool.closed or not self._slots.acquire(blocking=False):
            yield None
            return
        try:
            with self._lent() as conn:
                yield conn
        finally:
            self._slots.release()

    @contextmanager
    def _lent(self) -> Iterator[psycopg2.extensions.connection]:
        """A connection from the pool, set up on first use, back (or closed
        when it failed) afterwards; the caller holds a slot."""
        conn = self._pool.getconn()
        failed = True
        try:
            if conn.closed:
                raise psycopg2.InterfaceError("connection already closed")
            if not conn.autocommit:
                # First use: one statement at a time, nothing left open
                # between them; read-only is SET for the session.
                conn.autocommit = True
                conn.set_session(readonly=True)
            yield conn
            failed = conn.closed != 0 or (
                conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE
            )
        finally:
            if not self._pool.closed:
                self._pool.putconn(conn, close=failed)
            elif not conn.closed:
                conn.close()

    def close(self) -> None:
        """Close every idle connection; later borrowers get :exc:`PoolBusyError`."""
        if not self._pool.closed:
            self._pool.closeall()
