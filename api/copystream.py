"""CSV of a query streamed from PostgreSQL's ``COPY ... TO STDOUT``, in
chunks, with bounded memory whatever the size of the result (a year of
trades never sits in the API's memory)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from queue import Empty, Full, Queue
from typing import Any

import psycopg2.extensions
from psycopg2 import sql


class _QueueWriter:
    """File-like sink for ``copy_expert`` that hands chunks to a bounded
    queue: the COPY waits while the client is slower than PostgreSQL, so at
    most ``depth`` chunks are ever in memory."""

    def __init__(self, out: Queue[bytes | BaseException | None], chunk_bytes: int,
                 stop: threading.Event) -> None:
        self._out = out
        self._chunk_bytes = chunk_bytes
        self._stop = stop
        self._buffer: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._buffer.append(bytes(data))
        self._size += len(data)
        if self._size >= self._chunk_bytes:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            chunk = b"".join(self._buffer)
            self._buffer, self._size = [], 0
            self.put(chunk)

    def put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._stop.is_set():
                # Raising inside write() makes psycopg2 abandon the COPY.
                raise _Abandoned("client went away")
            try:
                self._out.put(item, timeout=0.2)
                return
            except Full:
                continue


class _Abandoned(Exception):
    """The reader of a CSV stream stopped reading."""


class CopyStream:
    """CSV of a query, as chunks of about ``chunk_bytes``, via ``COPY ... TO STDOUT``.

    ``borrow()`` is a context manager lending a connection (the pool's) and
    ``select(conn)`` returns the bound query. Iterating starts the COPY in a
    thread of its own that waits while the consumer is slow (at most
    ``depth`` chunks are buffered), so memory stays bounded whatever the size
    of the result. :meth:`abort` (the client went away) stops the COPY and
    discards its connection; it is safe from any thread, at any time.

    Errors of the query are raised from the iterator; the first chunk (the
    header) is only yielded once rows arrived, so a query that fails at once
    raises before anything was sent.
    """

    def __init__(self, borrow: Callable[[], Any],
                 select: Callable[[psycopg2.extensions.connection], bytes], *,
                 header: tuple[str, ...], chunk_bytes: int, depth: int = 4) -> None:
        self._borrow = borrow
        self._select = select
        self._header = (",".join(header) + "\n").encode()
        self._chunks: Queue[bytes | BaseException | None] = Queue(maxsize=depth)
        self._stop = threading.Event()
        self._writer = _QueueWriter(self._chunks, chunk_bytes, self._stop)
        self._thread = threading.Thread(target=self._produce, name="csv-copy", daemon=True)

    def abort(self) -> None:
        self._stop.set()

    def _produce(self) -> None:
        writer = self._writer
        try:
            with self._borrow() as conn:
                query = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(
                    sql.SQL(self._select(conn).decode()))
                with conn.cursor() as cur:
                    cur.copy_expert(query, writer)
                writer.flush()
            writer.put(None)
        except _Abandoned:
            pass  # the connection left the pool closed: the block raised
        except BaseException as exc:  # handed to the consumer, raised there
            try:
                writer.put(exc)
            except _Abandoned:
                pass

    def __iter__(self) -> Iterator[bytes]:
        self._thread.start()
        try:
            first = True
            while not self._stop.is_set():
                try:
                    item = self._chunks.get(timeout=0.2)
                except Empty:
                    if not self._thread.is_alive() and self._chunks.empty():
                        raise RuntimeError("csv producer ended without finishing") from None
                    continue
                if isinstance(item, BaseException):
                    raise item
                if first:
                    first = False
                    yield self._header
                if item is None:
                    return
                yield item
        finally:
            self._stop.set()
