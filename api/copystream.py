"""CSV of a query streamed from PostgreSQL's ``COPY ... TO STDOUT``, in
chunks, with bounded memory whatever the size of the result (a year of
trades never sits in the API's memory)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from queue import Empty, Full, Queue
from typing import Any

import psycopg2.extensions
from psycopg2 import sql


class _QueueWriter(io.RawIOBase):
    """The raw sink under the ``copy_expert`` file (:func:`_sink`): each
    full buffer becomes one chunk of a bounded queue, so the COPY waits while
    the client is slower than PostgreSQL and at most ``depth`` chunks are
    ever in memory."""

    def __init__(self, out: Queue[bytes | BaseException | None],
                 stop: threading.Event) -> None:
        super().__init__()
        self._out = out
        self._stop = stop
        self._abandoned = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        # The buffer is the BufferedWriter's own, reused: copy it out.
        self.put(bytes(data))
        return len(data)

    def put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._abandoned:
                return  # the rest of the buffer, flushed on close: dropped
            if self._stop.is_set():
                # Raising inside write() makes psycopg2 abandon the COPY.
                self._abandoned = True
                raise _Abandoned("client went away")
            try:
                self._out.put(item, timeout=0.2)
                return
            except Full:
                continue


def _sink(raw: _QueueWriter, chunk_bytes: int) -> io.BufferedWriter:
    """The file ``copy_expert`` writes each row to. psycopg2 calls
    ``write`` once per row (one CopyData message each): a BufferedWriter
    takes them in C, and only a full buffer reaches Python. A day of trades
    (86,400 rows, 11 MB) cost the API 66 ms of CPU through a Python
    ``write`` per row, 52 ms so."""
    return io.BufferedWriter(raw, buffer_size=chunk_bytes)


class _Abandoned(Exception):
    """The reader of a CSV stream stopped reading."""


#: Split a stream's rows into two COPYs at once (see :class:`CopyStream`).
Halves = Callable[[psycopg2.extensions.connection], "tuple[bytes, bytes] | None"]

# One snapshot for both halves of a split stream (pg_dump --jobs does the
# same): together they return exactly the rows one statement would, even
# while rows are committed. Exported snapshots work on hot standbys too
# (PostgreSQL 10 and later).
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"


class CopyStream:
    """CSV of a query, as chunks of about ``chunk_bytes``, via ``COPY ... TO STDOUT``.

    ``borrow()`` is a context manager lending a connection (the pool's) and
    ``select(conn)`` returns the bound query. Iterating starts the COPY in a
    thread of its own that waits while the consumer is slow (at most
    ``depth`` chunks are buffered), so memory stays bounded whatever the size
    of the result. :meth:`abort` (the client went away) stops the COPY and
    discards its connection; it is safe from any thread, at any time.

    With ``spare`` (a context manager lending a second connection or None
    at once, :meth:`~pricepipe.api.pool.ReadPool.spare_connection`) and
    ``halves`` (``halves(conn)``: the bound queries of the first and the
    second half of the rows, or None when they are too few or too many to
    split), the second half is read on the spare connection while the first
    is streamed, both in one exported snapshot: the same rows, in the same
    order, in about half the database time when PostgreSQL has a core to
    spare. The second half waits in memory (``halves`` bounds its rows) and
    follows the first.

    Errors of the query are raised from the iterator; the first chunk (the
    header) is only yielded once rows arrived, so a query that fails at once
    raises before anything was sent.
    """

    def __init__(self, borrow: Callable[[], Any],
                 select: Callable[[psycopg2.extensions.connection], bytes], *,
                 header: tuple[str, ...], chunk_bytes: int, depth: int = 4,
                 spare: Callable[[], Any] | None = None, halves: Halves | None = None) -> None:
        self._borrow = borrow
        self._select = select
        self._spare = spare
        self._halves = halves
        self._header = (",".join(header) + "\n").encode()
        self._chunks: Queue[bytes | BaseException | None] = Queue(maxsize=depth)
        self._stop = threading.Event()
        self._chunk_bytes = chunk_bytes
        self._writer = _QueueWriter(self._chunks, self._stop)
        self._thread = threading.Thread(target=self._produce, name="csv-copy", daemon=True)

    def abort(self) -> None:
        self._stop.set()

    def _copy(self, conn: psycopg2.extensions.connection, select: bytes,
              writer: _QueueWriter) -> None:
        query = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(
            sql.SQL(select.decode()))
        sink = _sink(writer, self._chunk_bytes)
        with conn.cursor() as cur:
            cur.copy_expert(query, sink)
        sink.flush()

    def _produce(self) -> None:
        writer = self._writer
        try:
            with self._borrow() as conn:
                split = False
                if self._spare is not None and self._halves is not None:
                    with self._spare() as spare:
                        if spare is not None:
                            split = True
                            self._produce_split(conn, spare, self._halves)
                if not split:
                    self._copy(conn, self._select(conn), writer)
            writer.put(None)
        except _Abandoned:
            pass  # the connection left the pool closed: the block raised
        except BaseException as exc:  # handed to the consumer, raised there
            try:
                writer.put(exc)
            except _Abandoned:
                pass

    def _produce_split(self, conn: psycopg2.extensions.connection,
                       spare: psycopg2.extensions.connection, halves: Halves) -> None:
        """Both halves (or, when ``halves`` declines, the whole) in one
        snapshot; the first streamed from ``conn``, the second read on
        ``spare`` meanwhile. Leaves ``conn`` idle, as it came."""
        with conn.cursor() as cur:
            cur.execute(_BEGIN)
            cur.execute("SELECT pg_export_snapshot()")
            (snapshot,) = cur.fetchone()
        queries = halves(conn)
        if queries is None:
            self._copy(conn, self._select(conn), self._writer)
            with conn.cursor() as cur:
                cur.execute("COMMIT")
            return
        first, second = queries
        # The second half's chunks: unbounded here, bounded by `halves`
        # (the rows it lets a half have).
        rest: Queue[bytes | BaseException | None] = Queue()
        halt = threading.Event()
        imported = threading.Event()
        reader = threading.Thread(
            target=self._read_second, name="csv-copy-second",
            args=(spare, snapshot, second, _QueueWriter(rest, halt), imported), daemon=True)
        reader.start()
        done = False
        try:
            self._copy(conn, first, self._writer)
            # The snapshot lives as long as its transaction: keep it open
            # until the spare connection took it.
            while not imported.wait(0.2):
                if not reader.is_alive():
                    break
                if self._stop.is_set():
                    raise _Abandoned("client went away")
            with conn.cursor() as cur:
                cur.execute("COMMIT")
            while True:
                item = rest.get()
                if isinstance(item, BaseException):
                    raise item
                self._writer.put(item)
                if item is None:
                    done = True
                    return
        finally:
            if not done and reader.is_alive():
                halt.set()
                # The stream has failed: do not wait for the rest of its rows.
                # (A cancel reaching an idle backend is ignored.)
                spare.cancel()
            reader.join()

    def _read_second(self, spare: psycopg2.extensions.connection, snapshot: str,
                     select: bytes, writer: _QueueWriter, imported: threading.Event) -> None:
        try:
            with spare.cursor() as cur:
                cur.execute(_BEGIN)
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                imported.set()
            self._copy(spare, select, writer)
            with spare.cursor() as cur:
                cur.execute("COMMIT")
            writer.put(None)
        except _Abandoned:
            pass
        except BaseException as exc:  # raised by the first half's thread
            try:
                writer.put(exc)
            except _Abandoned:
                pass  # that thread has stopped (and cancelled this COPY)

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
