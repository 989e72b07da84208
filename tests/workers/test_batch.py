"""The pure batch layer: decoding agrees with the codec's reference parsers on
every entry of either stream, raw and parsed replies decode alike, and COPY
text is what PostgreSQL reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pricepipe import codec
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Channel, Keys
from pricepipe.workers import batch as batch_module
from pricepipe.workers.batch import (
    days_of,
    decode_entries,
    decode_reply,
    quote_copy_line,
    quote_copy_text,
    quote_row,
    trade_copy_line,
    trade_copy_text,
    trade_row,
)

from .helpers import BASE_TS_US

KEYS = Keys("pp", 4)
TRADES = KEYS.trades("AAPL")
QUOTES = KEYS.quotes("AAPL")

PART = st.sampled_from([
    b"", b"x", b"test", b"gbm", b"bad source!", b"\xff\xfe", b"b", b"s", b"B", b"buy",
    str(BASE_TS_US).encode(), str(BASE_TS_US + 1).encode(), b"12", b" 17", b"+5", b"1_0",
    b"4102444800000000", b"946684800000000", b"1.5", b"-1.5", b"0", b"0.0", b"nan", b"inf",
    b"-inf", b"1e308", b"1e309", b"5e-324", b"101,5", b"7", b"T-1", b"id:9", b"x" * 65,
]) | st.binary(max_size=6)
#: Seven space-separated parts (or a few more or less), right or wrong.
VALUE = st.lists(PART, min_size=5, max_size=8).map(b" ".join)
PRICES = st.floats(1e-9, 1e9)
SIZES = st.one_of(st.none(), st.floats(1e-9, 1e9))
SOURCES = st.sampled_from(["gbm", "test", "a.b-c_d"])
VALID_TRADE = st.builds(
    lambda ts, px, sz, src, tid, side: codec.encode_trade(
        Trade("AAPL", ts, px, sz, src, tid, side)).encode(),
    st.integers(BASE_TS_US, BASE_TS_US + 10**12), PRICES, SIZES, SOURCES,
    st.none() | st.sampled_from(["1", "abc-9", "X:Y.z"]), st.none() | st.sampled_from(Side))


@st.composite
def valid_quote(draw: Any) -> bytes:
    bid, ask = sorted([draw(PRICES), draw(PRICES)])
    one_sided = draw(st.sampled_from([None, "bid", "ask"]))
    quote = Quote("AAPL", draw(st.integers(BASE_TS_US, BASE_TS_US + 10**12)),
                  None if one_sided == "ask" else bid,
                  None if one_sided == "ask" else draw(st.none() | st.floats(0, 1e6)),
                  None if one_sided == "bid" else ask,
                  None if one_sided == "bid" else draw(st.none() | st.floats(0, 1e6)),
                  draw(SOURCES))
    return codec.encode_quote(quote).encode()


NAMES = st.sampled_from([b"t", b"q", b"b", b"sym", b"other"])


def _fields(name: st.SearchStrategy[bytes], value: st.SearchStrategy[bytes]
            ) -> st.SearchStrategy[dict[bytes, bytes]]:
    """The usual one-field entry, sometimes with another field beside it."""
    one = st.builds(lambda n, v: {n: v}, name, value)
    extra = st.builds(lambda n, v, e: {n: v, b"other": e}, name, value, PART)
    return one | extra | st.dictionaries(NAMES, VALUE, max_size=3)


TRADE_FIELDS = _fields(st.just(b"t") | NAMES, VALUE | VALID_TRADE)
QUOTE_FIELDS = _fields(st.just(b"q") | NAMES, VALUE | valid_quote())


def _reference(channel: Channel, entries: list[tuple[str, dict[bytes, bytes]]]
               ) -> tuple[list[Any], list[str]]:
    """What decoding must give, spelled out with the codec alone."""
    rows, rejected = [], []
    for entry_id, fields in entries:
        try:
            packed = codec.pack_entry_id(entry_id)
            event = codec.decode_entry(channel, "AAPL", fields)
        except ValueError:
            rejected.append(entry_id)
            continue
        rows.append(trade_row(event, packed) if isinstance(event, Trade)
                    else quote_row(event, packed))  # type: ignore[arg-type]
    return rows, rejected


def _check(channel: Channel, stream: str, field_maps: list[dict[bytes, bytes]]) -> None:
    entries = [(f"{1000 + i}-{i}", f) for i, f in enumerate(field_maps) if f]
    want_rows, want_rejected = _reference(channel, entries)
    got = decode_entries(KEYS, stream, entries)
    rows = got.trades if channel is Channel.TRADES else got.quotes
    assert rows == want_rows
    assert [r.entry_id for r in got.rejects] == want_rejected
    # Each row's COPY line reads back as the row: the entry's own text when
    # its numbers are plain, else the row formatted (both read alike).
    lines = got.trade_lines if channel is Channel.TRADES else got.quote_lines
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        made = (trade_copy_line(row) if channel is Channel.TRADES  # type: ignore[arg-type]
                else quote_copy_line(row))  # type: ignore[arg-type]
        for have, want in zip(line.split(b"\t"), made.split(b"\t"), strict=True):
            assert have == want or float(have) == float(want)
    assert not (got.quotes if channel is Channel.TRADES else got.trades)
    # The server's raw flat lists decode exactly like redis-py's dicts (the
    # fast path is taken for the usual one-field entries only).
    raw = [[eid.encode(), [x for kv in f.items() for x in kv]] for eid, f in entries]
    again = decode_reply(KEYS, [[stream.encode(), raw]])
    assert (again.trades, again.quotes) == (got.trades, got.quotes)
    assert (again.trade_lines, again.quote_lines) == (got.trade_lines, got.quote_lines)
    assert [(r.entry_id, r.reason) for r in again.rejects] == \
        [(r.entry_id, r.reason) for r in got.rejects]


@settings(max_examples=300)
@given(st.lists(TRADE_FIELDS, min_size=1, max_size=20))
def test_trade_decoding_agrees_with_the_reference_parser(fields: list[dict[bytes, bytes]]
                                                        ) -> None:
    _check(Channel.TRADES, TRADES, fields)


@settings(max_examples=300)
@given(st.lists(QUOTE_FIELDS, min_size=1, max_size=20))
def test_quote_decoding_agrees_with_the_reference_parser(fields: list[dict[bytes, bytes]]
                                                        ) -> None:
    _check(Channel.QUOTES, QUOTES, fields)


def test_the_workers_have_no_parser_of_their_own() -> None:
    # The wire format is parsed in pricepipe.codec only: no split of an
    # entry's value, no float() of its parts, here.
    source = Path(batch_module.__file__).read_text(encoding="utf-8")
    assert "split(b\" \")" not in source and "float(" not in source


def test_one_reply_with_both_streams_resp3_and_deleted_entries() -> None:
    trade = Trade("AAPL", BASE_TS_US, 2.0, None, "x")
    quote = Quote("AAPL", BASE_TS_US, 1.5, 1.0, 2.5, None, "x")
    reply = {TRADES.encode(): [[b"5-0", [b"t", codec.encode_trade(trade).encode()]],
                               [b"6-0", None]],
             QUOTES.encode(): [[b"5-1", [b"q", codec.encode_quote(quote).encode()]]]}
    batch = decode_reply(KEYS, reply)
    assert batch.trades == [trade_row(trade, codec.pack_entry_id("5-0"))]
    assert batch.quotes == [quote_row(quote, codec.pack_entry_id("5-1"))]
    assert batch.vanished == [(TRADES, "6-0")]
    assert batch.ack_ids() == {TRADES: ["5-0", "6-0"], QUOTES: ["5-1"]}
    assert len(batch) == 3 and batch.row_count == 2


def test_entries_of_a_stream_that_is_not_persisted_are_rejected() -> None:
    bars = KEYS.bars("AAPL")
    batch = decode_entries(KEYS, bars, [("1-0", {b"b": b"x"})])
    assert not batch.row_count and [r.entry_id for r in batch.rejects] == ["1-0"]
    assert "not a persisted stream" in batch.rejects[0].reason
    bad_symbol = "pp:{s1}:trades:aapl"
    batch = decode_entries(KEYS, bad_symbol, [("1-0", {b"t": b"x"}), ("2-0", None)])
    assert [r.entry_id for r in batch.rejects] == ["1-0"] and batch.vanished == [
        (bad_symbol, "2-0")]


def test_copy_text_is_tab_separated_and_empty_is_null() -> None:
    trades = [("AAPL", BASE_TS_US, 0.1, None, None, None, "x", None, 7),
              ("AAPL", BASE_TS_US + 1, 1e-07, 3.0, "sell", "ab:1", "y", BASE_TS_US + 5, 8)]
    assert trade_copy_text(trades) == (
        f"AAPL\t{BASE_TS_US}\t0.1\t\t\t\tx\t\t7\n"
        f"AAPL\t{BASE_TS_US + 1}\t1e-07\t3.0\ts\tab:1\ty\t{BASE_TS_US + 5}\t8\n").encode()
    quotes = [("AAPL", BASE_TS_US, 1.5, 0.0, None, None, "x", None, 9)]
    assert quote_copy_text(quotes) == f"AAPL\t{BASE_TS_US}\t1.5\t0.0\t\t\tx\t\t9\n".encode()
    assert days_of(trades) == days_of(quotes) == {BASE_TS_US // 86_400_000_000}


@given(st.text(alphabet="0123456789-²٣ab", max_size=25))
def test_entry_ids_pack_like_the_codec_or_are_rejected(entry_id: str) -> None:
    fields = {b"t": codec.encode_trade(Trade("AAPL", BASE_TS_US, 2.0, None, "x")).encode()}
    batch = decode_entries(KEYS, TRADES, [(entry_id, fields)])
    try:
        want = codec.pack_entry_id(entry_id)
    except ValueError:
        assert [r.entry_id for r in batch.rejects] == [entry_id] and not batch.row_count
        return
    assert [row[8] for row in batch.trades] == [want]
