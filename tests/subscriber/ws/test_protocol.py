"""The pure protocol: parsing client frames into commands or coded errors,
server frames built from shared, already encoded entries, the verdict on a
resume cursor, and the README section a client in another language is
written from."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricepipe import codec
from pricepipe.events import Event
from pricepipe.exceptions import ProtocolError
from pricepipe.keys import Channel
from pricepipe.subscriber.ws import protocol as p
from pricepipe.subscriber.ws.resume import verdict
from pricepipe.subscriber.ws.session import bar_bucket

from .helpers import bar, quote, trade

T, Q, B = Channel.TRADES, Channel.QUOTES, Channel.BARS_1M
README = (Path(__file__).parents[3] / "README.md").read_text()
PROTOCOL = README.split("## Websocket protocol", 1)[-1].split("\n## ", 1)[0]


def test_subscribe_parses_symbols_channels_resume_and_defaults() -> None:
    cmd = p.parse_message(
        '{"op":"subscribe","symbols":["AAPL","MSFT","AAPL"],"channels":["quotes","bars.1m",'
        '"quotes"],"resume":{"MSFT":{"quotes":"17"}},"req":4}', max_symbols=10)
    assert cmd == p.Subscribe(("AAPL", "MSFT"), (Q, B), {("MSFT", Q): "17-0"}, True, 4)
    assert isinstance(cmd, p.Subscribe)
    assert cmd.pairs == [("AAPL", Q), ("AAPL", B), ("MSFT", Q), ("MSFT", B)]
    # Without channels: trades and quotes; resume per channel.
    cmd = p.parse_message('{"op":"subscribe","symbols":["X"],"snapshot":false,'
                          '"resume":{"X":{"trades":"5-1","quotes":"6-0"}}}', max_symbols=1)
    assert cmd == p.Subscribe(("X",), (T, Q), {("X", T): "5-1", ("X", Q): "6-0"}, False)
    # Unsubscribe without channels: every channel.
    assert p.parse_message('{"op":"unsubscribe","symbols":["X"]}', max_symbols=1) == \
        p.Unsubscribe(("X",), (T, Q, B))
    assert p.parse_message('{"op":"unsubscribe","symbols":["X"],"channels":["trades"],"req":"u"}',
                           max_symbols=1) == p.Unsubscribe(("X",), (T,), "u")
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
    ('{"op":"subscribe","symbols":["A"],"channels":["ticks"]}', p.UNKNOWN_CHANNEL),
    ('{"op":"subscribe","symbols":["A"],"channels":["trades",1]}', p.UNKNOWN_CHANNEL),
    ('{"op":"subscribe","symbols":["A"],"channels":[]}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":["A"],"channels":"trades"}', p.BAD_MESSAGE),
    ('{"op":"unsubscribe","symbols":["A"],"channels":["bars.5m"]}', p.UNKNOWN_CHANNEL),
    ('{"op":"subscribe","symbols":["A"],"resume":{"B":{"trades":"1-0"}}}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":["A"],"resume":{"A":"1-0"}}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":["A"],"resume":[]}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":["A"],"resume":{"A":{"nope":"1-0"}}}', p.UNKNOWN_CHANNEL),
    ('{"op":"subscribe","symbols":["A"],"resume":{"A":{"bars.1m":"1-0"}}}', p.BAD_MESSAGE),
    ('{"op":"subscribe","symbols":["A"],"resume":{"A":{"trades":5}}}', p.INVALID_CURSOR),
    ('{"op":"subscribe","symbols":["A"],"resume":{"A":{"trades":"x-y"}}}', p.INVALID_CURSOR),
    ('{"op":"subscribe","symbols":["A"],"snapshot":"yes"}', p.BAD_MESSAGE),
    ('{"op":"auth"}', p.BAD_MESSAGE),
    ('{"op":"ping","req":[1]}', p.BAD_MESSAGE),
])
def test_bad_frames_raise_coded_errors(frame: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_message(frame, max_symbols=2)
    assert info.value.code == code
    assert str(info.value) == str(info.value)[0].lower() + str(info.value)[1:]


def test_errors_echo_req_and_name_the_channels() -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_message('{"op":"subscribe","symbols":["A"],"channels":["ticks"],"req":9}',
                        max_symbols=2)
    assert info.value.req == 9 and "trades, quotes, bars.1m" in str(info.value)


def test_too_many_symbols_is_checked_before_validating_each() -> None:
    huge = '{"op":"subscribe","symbols":[' + ",".join(['"bad symbol"'] * 100_000) + "]}"
    with pytest.raises(ProtocolError) as info:
        p.parse_message(huge, max_symbols=500)
    assert info.value.code == p.TOO_MANY_SYMBOLS


def _json(channel: Channel, event: Event, entry_id: str) -> bytes:
    field, value = codec.encode_event(event)
    return codec.entry_to_json(channel, event.symbol, {field: value.encode()}, entry_id)


def test_data_frames_join_shared_encodings_one_type_per_channel() -> None:
    trades = [trade("AAPL", i) for i in range(3)]
    # Each entry encoded once (the hub: codec.entry_to_json), shared by frames.
    parts = [_json(T, t, f"{i}-0") for i, t in enumerate(trades)]
    frame = codec.decode_json(p.data_frame(T, parts))
    assert list(frame) == ["type", "trades"] and frame["type"] == "trades"
    assert frame["trades"] == [codec.event_to_dict(t, f"{i}-0") for i, t in enumerate(trades)]
    assert [d["id"] for d in frame["trades"]] == ["0-0", "1-0", "2-0"]
    assert frame["trades"][1]["side"] == "buy" and frame["trades"][1]["trade_id"] == "t1"
    assert codec.decode_json(p.live_frame(0, [b",".join(parts)])) == frame
    quotes = codec.decode_json(p.data_frame(Q, [_json(Q, quote("AAPL", 1), "9-0")],
                                            conflated=True))
    assert quotes["type"] == "quotes" and quotes["conflated"] is True
    assert quotes["quotes"][0]["bid"] == 100.99 and quotes["quotes"][0]["ask_size"] == 7.0
    bars = codec.decode_json(p.data_frame(B, [_json(B, bar("AAPL", 0, 3), "9-0")], replay=True))
    assert bars["type"] == "bars" and bars["replay"] is True
    assert bars["bars"][0]["trades"] == 3 and bars["bars"][0]["state"] == "open"
    assert [p.FRAME_TYPES[c] for c in p.CHANNELS] == ["trades", "quotes", "bars"]


def test_conflated_trades_frame_names_its_gaps() -> None:
    part = _json(T, trade("AAPL", 7), "7-0")
    frame = codec.decode_json(p.conflated_trades_frame([part], [p.Gap("AAPL", "3-0", "7-0")]))
    assert frame["type"] == "trades" and frame["conflated"] is True
    assert frame["gaps"] == [{"symbol": "AAPL", "after": "3-0", "until": "7-0"}]
    assert [t["id"] for t in frame["trades"]] == ["7-0"]


def test_snapshot_holds_only_the_subscribed_channels() -> None:
    parts: dict[p.Topic, list[bytes]] = {Q: [_json(Q, quote("A", 1), "2-0")], T: []}
    frame = codec.decode_json(p.snapshot_frame(parts))
    assert list(frame) == ["type", "trades", "quotes"]  # CHANNELS order, empty kept
    assert frame["trades"] == [] and frame["quotes"][0]["id"] == "2-0"
    assert codec.decode_json(p.snapshot_frame({B: []})) == {"type": "snapshot", "bars": []}


def test_server_messages() -> None:
    assert codec.decode_json(p.hello(auth_required=True, limits={"max_symbols": 5})) == {
        "type": "hello", "version": 2, "auth_required": True,
        "channels": ["trades", "quotes", "bars.1m", "status"], "limits": {"max_symbols": 5}}
    assert codec.decode_json(p.subscribed(["A"], [T, B], req=1)) == {
        "type": "subscribed", "symbols": ["A"], "channels": ["trades", "bars.1m"], "req": 1}
    assert codec.decode_json(p.unsubscribed([], [Q])) == {
        "type": "unsubscribed", "symbols": [], "channels": ["quotes"]}
    assert codec.decode_json(p.unrecoverable("A", Q, "1-0", p.GAP_TRIMMED, first_id=None)) == {
        "type": "unrecoverable", "symbol": "A", "channel": "quotes", "after": "1-0",
        "reason": "trimmed", "first_id": None}
    assert codec.decode_json(p.error("bad_json", "invalid json", req=3)) == {
        "type": "error", "code": "bad_json", "message": "invalid json", "req": 3}


def test_entry_id_keys_sort_numerically() -> None:
    assert p.id_key("9-0") < p.id_key("10-0") < p.id_key("10-1")


def test_bar_bucket_reads_the_minute_of_a_bar_entry() -> None:
    one = bar("AAPL", 0, 3)
    encoded = _json(B, one, "1-0")
    assert bar_bucket(encoded) == str(one.bucket_us).encode()
    assert bar_bucket(_json(B, bar("AAPL", 1, 3), "2-0")) != bar_bucket(encoded)


def test_readme_documents_every_message_channel_and_flag() -> None:
    """What test_docs checks for codes, here for what v2 added: each message
    type with an example, each channel and each frame flag."""
    for kind in p.MESSAGE_TYPES:
        assert f'{{"type": "{kind}"' in PROTOCOL, kind
    for channel in p.CHANNELS:
        assert f'"{channel}"' in PROTOCOL, channel
    for flag in ('"replay": true', '"conflated": true', '"gaps": [', '"channels": [',
                 '"resume": {', '"snapshot": false'):
        assert flag in PROTOCOL, flag
    for name, value in vars(p).items():
        if name.isupper() and isinstance(value, str):
            assert f"`{value}`" in PROTOCOL, name
        if name.startswith("CLOSE_"):
            assert f"| {value} |" in PROTOCOL, name


def test_resume_parses_the_epoch_beside_the_cursors() -> None:
    cmd = p.parse_message('{"op":"subscribe","symbols":["A","B"],"resume":{"A":{"trades":"5-1",'
                          '"epoch":"9f1c2a"},"B":{"epoch":"9f1c2a"}}}', max_symbols=2)
    assert isinstance(cmd, p.Subscribe)
    assert cmd.resume == {("A", T): "5-1"} and cmd.epochs == {"A": "9f1c2a", "B": "9f1c2a"}
    for bad in ('""', "7", '"not an epoch"', '"' + "a" * 65 + '"'):
        with pytest.raises(ProtocolError) as info:
            p.parse_message('{"op":"subscribe","symbols":["A"],"resume":{"A":{"epoch":' + bad
                            + "}}}", max_symbols=1)
        assert info.value.code == p.INVALID_CURSOR


def test_epochs_in_server_messages() -> None:
    assert codec.decode_json(p.subscribed(["A"], [T], epochs={"A": "e1"}))["epochs"] == \
        {"A": "e1"}
    assert codec.decode_json(p.snapshot_frame({T: []}, epochs={"A": "e1"})) == {
        "type": "snapshot", "epochs": {"A": "e1"}, "trades": []}
    assert codec.decode_json(p.unrecoverable("A", T, "1-0", p.GAP_EPOCH, first_id="2-0",
                                             epoch="e2")) == {
        "type": "unrecoverable", "symbol": "A", "channel": "trades", "after": "1-0",
        "reason": "epoch", "first_id": "2-0", "epoch": "e2"}
    assert codec.decode_json(p.error(p.UNKNOWN_SYMBOL, "x", 1, symbols=["Q"])) == {
        "type": "error", "code": "unknown_symbol", "message": "x", "req": 1, "symbols": ["Q"]}


def _info(first: str | None, last: str, *, length: int, added: int,
          deleted: str = "0-0") -> dict[str, object]:
    return {"first-entry": (first.encode(), {}) if first else None,
            "last-generated-id": last.encode(), "length": length, "entries-added": added,
            "max-deleted-entry-id": deleted.encode()}


@pytest.mark.parametrize(("cursor", "info", "trimmed", "want"), [
    # Nothing ever removed: any cursor up to the last entry resumes.
    ("5-0", _info("1-0", "9-0", length=9, added=9), None, (None, "1-0")),
    ("0-0", _info("1-0", "9-0", length=9, added=9), None, (None, "1-0")),
    ("10-0", _info("1-0", "9-0", length=9, added=9), None, ("cursor_ahead", "1-0")),
    # Trimmed with a record: exact. At the record (the last entry removed):
    # nothing missed, although the cursor is older than the first entry left.
    ("4-0", _info("5-0", "9-0", length=5, added=9), b"4-0", (None, "5-0")),
    ("3-0", _info("5-0", "9-0", length=5, added=9), b"4-0", ("trimmed", "5-0")),
    ("7-0", _info("5-0", "9-0", length=5, added=9), b"4-0", (None, "5-0")),
    ("3-0", _info(None, "9-0", length=0, added=9), b"9-0", ("trimmed", None)),
    ("9-0", _info(None, "9-0", length=0, added=9), b"9-0", (None, None)),
    # Without a record (a trim that keeps none): conservative.
    ("4-0", _info("5-0", "9-0", length=5, added=9), None, ("trimmed", "5-0")),
    ("5-0", _info("5-0", "9-0", length=5, added=9), None, (None, "5-0")),
    ("3-0", _info(None, "9-0", length=0, added=9), None, ("trimmed", None)),
    # An XDEL after the cursor, whatever the record says.
    ("5-0", _info("1-0", "9-0", length=8, added=9, deleted="6-0"), b"0-5", ("trimmed", "1-0")),
    # No stream: fine for "0-0" only (trimming leaves an empty stream, not none).
    ("0-0", None, None, (None, None)),
    ("3-0", None, None, ("cursor_ahead", None)),
])
def test_resume_verdict(cursor: str, info: dict[str, object] | None, trimmed: bytes | None,
                        want: tuple[str | None, str | None]) -> None:
    assert verdict(cursor, info, trimmed) == want


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
def test_text_frame_is_what_websockets_serializes_at_each_length_boundary(size: int) -> None:
    """The live path frames with :func:`text_frame`; websockets' ``Frame`` is
    the reference (RFC 6455: 7-bit, 16-bit and 64-bit lengths)."""
    from websockets.frames import Frame, Opcode

    payload = bytes(i % 251 for i in range(size))
    assert p.text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=70_000))
def test_text_frame_matches_websockets_for_any_payload(payload: bytes) -> None:
    from websockets.frames import Frame, Opcode

    assert p.text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_a_batchs_wire_frame_is_built_once_and_parses_back() -> None:
    """Every subscriber whose flush holds only this batch gets the same bytes:
    a text frame of the live frame of its entries."""
    from pricepipe.subscriber.ws.hub import Batch

    entries = [((1, i), f"1-{i}", codec.encode_json({"id": f"1-{i}", "n": i})) for i in range(3)]
    batch = Batch("AAPL", Channel.QUOTES, entries)
    wire = batch.wire()
    assert batch.wire() is wire
    payload = wire[2:]
    assert wire[:2] == bytes((0x81, len(payload)))
    assert codec.decode_json(payload) == {
        "type": "quotes", "quotes": [{"id": f"1-{i}", "n": i} for i in range(3)]}
