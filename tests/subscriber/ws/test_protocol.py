"""The pure protocol: parsing client frames into commands or coded errors,
and server frames built from shared, already encoded ticks."""

from __future__ import annotations

import pytest
from pricepipe.subscriber.ws import protocol as p

from pricepipe import codec
from pricepipe.exceptions import ProtocolError
from pricepipe.tick import Tick

TS = 1_767_323_045_000_000


def test_subscribe_parses_symbols_resume_and_defaults() -> None:
    cmd = p.parse_message(
        '{"op":"subscribe","symbols":["AAPL","MSFT","AAPL"],"resume":{"MSFT":"17"},"req":4}',
        max_symbols=10)
    assert cmd == p.Subscribe(("AAPL", "MSFT"), {"MSFT": "17-0"}, True, 4)
    assert p.parse_message('{"op":"unsubscribe","symbols":["X"]}', max_symbols=1) == \
        p.Unsubscribe(("X",))
    assert p.parse_message('{"op":"auth","token":"t"}', max_symbols=1) == p.Auth("t")
    assert p.parse_message('{"op":"ping"}', max_symbols=1) == p.Ping()


@pytest.mark.parametrize(("frame", "code"), [
    (b"\x00", p.BINARY_FRAME),
    ("{", p.BAD_JSON),
    ('"x"', p.BAD_MESSAGE),
    ('{"op":1}', p.UNKNOWN_OP),
    ('{"op":"subscribe"}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":[]}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":["a b"]}', p.INVALID_SYMBOL),
    ('{"op":"subscribe","symbols":["A","B","C"]}', p.TOO_MANY_SYMBOLS),
    ('{"op":"subscribe","symbols":["A"],"resume":{"B":"1-0"}}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":["A"],"resume":{"A":5}}', p.INVALID_CURSOR),
    ('{"op":"subscribe","symbols":["A"],"snapshot":"yes"}', p.BAD_MESSAGE),
    ('{"op":"auth"}', p.BAD_MESSAGE),
    ('{"op":"ping","req":[1]}', p.BAD_MESSAGE),
])
def test_bad_frames_raise_coded_errors(frame: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_message(frame, max_symbols=2)
    assert info.value.code == code
    assert str(info.value) == str(info.value)[0].lower() + str(info.value)[1:]


def test_too_many_symbols_is_checked_before_validating_each() -> None:
    huge = '{"op":"subscribe","symbols":[' + ",".join(['"bad symbol"'] * 100_000) + "]}"
    with pytest.raises(ProtocolError) as info:
        p.parse_message(huge, max_symbols=500)
    assert info.value.code == p.TOO_MANY_SYMBOLS


def test_tick_frames_join_shared_encodings() -> None:
    ticks = [Tick("AAPL", TS + i, 1.5 + i, None, "gbm") for i in range(3)]
    # Each tick encoded once (the hub: codec.entry_to_json), shared by frames.
    parts = [codec.entry_to_json({codec.F_TICK: codec.encode_value(t).encode()}, f"{i}-0")
             for i, t in enumerate(ticks)]
    frame = codec.decode_json(p.ticks_frame(parts))
    assert frame["type"] == "ticks" and "conflated" not in frame
    assert [codec.tick_from_dict(d) for d in frame["ticks"]] == ticks
    assert [d["id"] for d in frame["ticks"]] == ["0-0", "1-0", "2-0"]
    assert codec.decode_json(p.ticks_frame(parts[:1], conflated=True))["conflated"] is True
    assert codec.decode_json(p.ticks_frame(parts[:1], replay=True))["replay"] is True
    assert codec.decode_json(p.snapshot_frame([]))["ticks"] == []
    assert codec.decode_json(p.error("bad_json", "invalid json", req=3)) == {
        "type": "error", "code": "bad_json", "message": "invalid json", "req": 3}


def test_entry_id_keys_sort_numerically() -> None:
    assert p.id_key("9-0") < p.id_key("10-0") < p.id_key("10-1")
