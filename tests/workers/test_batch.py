"""The pure batch layer: the fast decoder agrees with the codec on every entry,
raw and parsed replies decode alike, and COPY text is what PostgreSQL reads."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pricepipe.workers.batch import copy_text, days_of, decode_entries, decode_reply

from pricepipe import codec
from pricepipe.keys import Keys
from pricepipe.tick import Tick

from .helpers import BASE_TS_US

KEYS = Keys("pp", 4)
STREAM = KEYS.stream("AAPL")

VALUES = st.sampled_from([
    b"AAPL", b"MSFT", b"aapl", b"", b"\xff\xfe", b"x", b"test", b"gbm", b"bad source!",
    str(BASE_TS_US).encode(), str(BASE_TS_US + 1).encode(), b"12", b" 17", b"1_0",
    b"4102444800000000", b"946684800000000", b"1.5", b"-1.5", b"0", b"0.0", b"nan", b"inf",
    b"-inf", b"1e308", b"1e309", b"5e-324", b"101,5", b"7",
]) | st.binary(max_size=6)
NAMES = st.sampled_from([b"sym", b"ts", b"px", b"src", b"sz", b"rts", b"t", b"other"])
FIELDS = st.dictionaries(NAMES, VALUES, max_size=7)
#: The one-field format with any parts, right or wrong (see codec.F_TICK).
PACKED = st.lists(VALUES | st.just(b""), min_size=4, max_size=7).map(
    lambda parts: {codec.F_TICK: b" ".join(parts)})
VALID = st.builds(
    lambda ts, px, sz, src: codec.encode_fields(Tick("AAPL", ts, px, sz, src)),
    st.integers(BASE_TS_US, BASE_TS_US + 10**12), st.floats(1e-9, 1e9),
    st.one_of(st.none(), st.floats(0, 1e9)), st.sampled_from(["gbm", "test", "a.b-c_d"]))


def _bytes_fields(fields: dict[bytes, Any]) -> dict[bytes, bytes]:
    return {k: v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def _reference(entries: list[tuple[str, dict[bytes, bytes]]]) -> tuple[list[Any], list[str]]:
    """What decoding must give, spelled out with the codec alone."""
    rows, rejected = [], []
    for entry_id, fields in entries:
        try:
            tick = codec.decode_fields(fields)
        except ValueError:
            rejected.append(entry_id)
            continue
        if tick.symbol != "AAPL":
            rejected.append(entry_id)
            continue
        rows.append((tick.symbol, tick.ts_us, tick.price, tick.size, tick.source,
                     tick.recv_ts_us, codec.pack_entry_id(entry_id)))
    return rows, rejected


@settings(max_examples=300)
@given(st.lists(FIELDS | PACKED | VALID.map(_bytes_fields), min_size=1, max_size=20))
def test_fast_decoding_agrees_with_the_codec(field_maps: list[dict[bytes, bytes]]) -> None:
    entries = [(f"{1000 + i}-{i}", f) for i, f in enumerate(field_maps) if f]
    want_rows, want_rejected = _reference(entries)
    got = decode_entries(KEYS, STREAM, entries)
    assert got.rows == want_rows
    assert [r.entry_id for r in got.rejects] == want_rejected
    # The server's raw flat lists decode exactly like redis-py's dicts.
    raw = [[eid.encode(), [x for kv in f.items() for x in kv]] for eid, f in entries]
    again = decode_reply(KEYS, [[STREAM.encode(), raw]])
    assert again.rows == got.rows
    assert [(r.entry_id, r.reason) for r in again.rejects] == \
        [(r.entry_id, r.reason) for r in got.rejects]


def test_resp3_map_replies_and_deleted_entries() -> None:
    fields = _bytes_fields(codec.encode_fields(Tick("AAPL", BASE_TS_US, 2.0, None, "x")))
    reply = {STREAM.encode(): [[b"5-0", [x for kv in fields.items() for x in kv]],
                               [b"6-0", None]]}
    batch = decode_reply(KEYS, reply)
    assert [row[:3] for row in batch.rows] == [("AAPL", BASE_TS_US, 2.0)]
    assert batch.vanished == [(STREAM, "6-0")]
    assert batch.ack_ids() == {STREAM: ["5-0", "6-0"]}


def test_copy_text_is_tab_separated_with_null_markers() -> None:
    rows = [("AAPL", BASE_TS_US, 0.1, None, "x", None, 7),
            ("AAPL", BASE_TS_US + 1, 1e-07, 3.0, "y", BASE_TS_US + 5, 8)]
    assert copy_text(rows) == (
        f"AAPL\t{BASE_TS_US}\t0.1\t\\N\tx\t\\N\t7\n"
        f"AAPL\t{BASE_TS_US + 1}\t1e-07\t3.0\ty\t{BASE_TS_US + 5}\t8\n")
    assert days_of(rows) == {BASE_TS_US // 86_400_000_000}


@given(st.text(alphabet="0123456789-²٣ab", max_size=25))
def test_entry_ids_pack_like_the_codec_or_are_rejected(entry_id: str) -> None:
    fields = _bytes_fields(codec.encode_fields(Tick("AAPL", BASE_TS_US, 2.0, None, "x")))
    batch = decode_entries(KEYS, STREAM, [(entry_id, fields)])
    try:
        want = codec.pack_entry_id(entry_id)
    except ValueError:
        assert [r.entry_id for r in batch.rejects] == [entry_id] and not batch.rows
        return
    assert [row[6] for row in batch.rows] == [want]
