"""Parquet files and Arrow IPC streams of history: the pure half of the
API's binary downloads. CSV chunks in, byte chunks out; no I/O.

Needs pyarrow, an optional dependency (the ``research`` extra), so
:mod:`pricepipe.api.routes` imports this module only when a request asks
for one of these formats, and answers 406 when the import fails.

A download is read from PostgreSQL's ``COPY ... TO STDOUT`` as CSV (by
:class:`~pricepipe.api.copystream.CopyStream`, in bounded chunks, as a CSV
download is), parsed by pyarrow's streaming CSV reader into record batches
of about :data:`BLOCK_BYTES` of CSV each, converted to the table's fixed
:class:`Layout`, and written by pyarrow's writers into a sink drained after
every batch. So at most a few batches (a row group, for Parquet) are in
memory at any time, whatever the range: a year of trades never is.

The schemas (every column in every batch, whatever the rows):

* times are ``timestamp[us, tz=UTC]``: exact epoch microseconds, the
  event time ``ts`` (bars: ``bucket``) and the receive time ``recv_ts``;
* prices and sizes ``float64`` (null where the JSON has null);
* ``side``, ``source``, ``trade_id``, ``symbol`` plain ``string`` (not
  dictionary: every Arrow and Parquet reader takes it, and an IPC stream
  never needs replacement dictionaries; Parquet dictionary-encodes such
  columns on disk anyway);
* ``id`` the stream entry ID as the JSON's ``"<ms>-<seq>"`` text, null for
  a backfilled row. Not the packed ``int64``: that is storage, and the text
  is what a gap names and what ``after_id`` takes;
* bars' ``trades`` ``int64``.

Columns that are never null are declared non-nullable (Parquet
``REQUIRED``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

#: CSV bytes parsed per record batch: about 10,000 trades.
BLOCK_BYTES = 1 << 20
#: Rows per Parquet row group: the writer holds one group in memory.
ROW_GROUP_ROWS = 65_536
#: Parquet column compression; every current Parquet reader has zstd.
PARQUET_COMPRESSION = "zstd"

UTC_US = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a download: its ``name`` in the file, the ``source``
    column of the SQL's CSV it is read from, its Arrow ``type`` (a
    timestamp is read as epoch microseconds) and whether it may be null."""

    name: str
    source: str
    type: pa.DataType
    nullable: bool = True

    @property
    def csv_type(self) -> pa.DataType:
        return pa.int64() if pa.types.is_timestamp(self.type) else self.type


@dataclass(frozen=True, slots=True)
class Layout:
    """The fixed schema of one table's downloads: ``symbol`` (the symbol
    asked for: the SQL does not repeat it per row), then ``columns``."""

    name: str
    columns: tuple[Column, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        """The CSV columns read, in order."""
        return tuple(c.source for c in self.columns)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field("symbol", pa.string(), nullable=False),
                          *(pa.field(c.name, c.type, nullable=c.nullable)
                            for c in self.columns)])


_F64 = pa.float64()
_STR = pa.string()

TRADES = Layout("trades", (
    Column("ts", "ts_us", UTC_US, nullable=False),
    Column("price", "price", _F64, nullable=False),
    Column("size", "size", _F64),
    Column("side", "side", _STR),
    Column("trade_id", "trade_id", _STR),
    Column("source", "source", _STR, nullable=False),
    Column("recv_ts", "recv_ts_us", UTC_US),
    Column("id", "id", _STR),
))

QUOTES = Layout("quotes", (
    Column("ts", "ts_us", UTC_US, nullable=False),
    Column("bid", "bid", _F64),
    Column("bid_size", "bid_size", _F64),
    Column("ask", "ask", _F64),
    Column("ask_size", "ask_size", _F64),
    Column("source", "source", _STR, nullable=False),
    Column("recv_ts", "recv_ts_us", UTC_US),
    Column("id", "id", _STR),
))

BARS = Layout("bars", (
    Column("bucket", "bucket_us", UTC_US, nullable=False),
    *(Column(name, name, _F64, nullable=False) for name in ("open", "high", "low", "close",
                                                             "volume")),
    Column("vwap", "vwap", _F64),
    Column("trades", "trades", pa.int64(), nullable=False),
))

LAYOUTS = {layout.name: layout for layout in (TRADES, QUOTES, BARS)}


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def record_batches(csv_chunks: Iterable[bytes], layout: Layout, symbol: str, *,
                   block_bytes: int | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of ``layout`` from CSV with a header line (COPY's
    ``FORMAT csv``: an unquoted empty field is NULL, a quoted one the empty
    string), holding at least the layout's source columns.

    Only an empty field is null: pyarrow's default would also read the
    texts ``NULL``, ``NaN``, ``n/a``... as null, and those may be a trade id.
    """
    # Buffered: pyarrow reads fixed sizes, and a raw read may return less.
    csv_file = io.BufferedReader(_ChunkReader(csv_chunks), buffer_size=64 * 1024)
    reader = pa_csv.open_csv(
        csv_file,
        read_options=pa_csv.ReadOptions(block_size=block_bytes or BLOCK_BYTES,
                                        use_threads=False),
        # A text no check constrains (a trade id stored by hand) may hold a
        # newline: quoted by COPY, and kept in its row.
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={c.source: c.csv_type for c in layout.columns},
            include_columns=list(layout.sources), null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=False),
    )
    schema = layout.schema
    for batch in reader:
        yield convert(batch, layout, symbol, schema)


def convert(batch: pa.RecordBatch, layout: Layout, symbol: str,
            schema: pa.Schema | None = None) -> pa.RecordBatch:
    """A batch of the layout's source columns (times as epoch µs) as a
    batch of ``layout.schema``."""
    arrays = [pa.repeat(pa.scalar(symbol, pa.string()), batch.num_rows)]
    for column in layout.columns:
        values = batch.column(column.source)
        arrays.append(values.cast(column.type) if values.type != column.type else values)
    return pa.RecordBatch.from_arrays(arrays, schema=schema or layout.schema)


class _Sink:
    """Write-only file collecting what a pyarrow writer writes, drained by
    the generator that yields it. ``tell`` is the bytes written so far (the
    Parquet writer records offsets with it)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        part = bytes(data)
        self._parts.append(part)
        self._written += len(part)
        return len(part)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts = []
        return out


def ipc_stream(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[bytes]:
    """An Arrow IPC stream (``application/vnd.apache.arrow.stream``): the
    schema, each batch as it comes, the end-of-stream marker."""
    sink = _Sink()
    writer = pa.ipc.new_stream(sink, schema)
    for batch in batches:
        writer.write_batch(batch)
        if chunk := sink.drain():
            yield chunk
    writer.close()
    if chunk := sink.drain():
        yield chunk


def parquet_file(batches: Iterable[pa.RecordBatch], schema: pa.Schema, *,
                 row_group_rows: int | None = None) -> Iterator[bytes]:
    """A Parquet file, a row group of ``row_group_rows`` at a time (the
    last may be shorter); the footer comes last, so a reader needs the whole
    file. No rows: a valid file of the schema with no row group."""
    group_rows = row_group_rows or ROW_GROUP_ROWS
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression=PARQUET_COMPRESSION)
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= group_rows:
            writer.write_table(pa.Table.from_batches(pending, schema),
                               row_group_size=group_rows)
            pending, rows = [], 0
            if chunk := sink.drain():
                yield chunk
    if pending:
        writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=group_rows)
    writer.close()
    if chunk := sink.drain():
        yield chunk


def encode(csv_chunks: Iterable[bytes], layout: Layout, symbol: str, fmt: str) -> Iterator[bytes]:
    """The download of ``fmt`` (``parquet`` or ``arrow``) of the CSV rows."""
    batches = record_batches(csv_chunks, layout, symbol)
    if fmt == "parquet":
        return parquet_file(batches, layout.schema)
    if fmt == "arrow":
        return ipc_stream(batches, layout.schema)
    raise ValueError(f"not a binary format: {fmt!r}")
