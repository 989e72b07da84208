"""The columnar event batch and its column-wise encoding, held to the
event-by-event reference path: pure code, no servers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricepipe import codec, streams
from pricepipe.exceptions import InvalidEventError
from pricepipe.keys import Channel, Keys
from pricepipe.publisher.batch import EventBatch
from pricepipe.publisher.catalog import SymbolSpec, demo_symbols
from pricepipe.publisher.generator import GbmGenerator

KEYS = Keys("pp", 8)
TS = [1_700_000_000_000_000 + i for i in range(60)]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_float_texts_is_repr_of_any_float(values: list[float]) -> None:
    assert codec.float_texts(values) == [repr(v) for v in values]


@settings(max_examples=300)
@given(st.lists(st.floats(min_value=1e-4, max_value=1e16, exclude_max=True), min_size=1,
                max_size=50))
def test_float_texts_fast_path_is_repr(values: list[float]) -> None:
    # Every value in the orjson range: the fast path, which must agree with repr.
    assert codec.float_texts(values) == [repr(v) for v in values]


def test_float_texts_fast_path_on_gbm_like_values() -> None:
    values = (10 ** np.random.default_rng(3).uniform(-4, 15.9, 200_000)).tolist()
    values += [1e-4, 0.1, 1.0, 100.0, 123.45, 9.999999999999998e15]
    assert codec.float_texts(values) == [repr(v) for v in values]


def _calls_as_dict(calls: list[streams.AppendCall]) -> list[tuple[list[int], list[str], list[str]]]:
    return [(idx, keys_, [a.decode() if isinstance(a, bytes) else a for a in args])
            for idx, keys_, args in calls]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 30),
       st.floats(0.0, 8.0), st.integers(0, 400))
def test_batch_encodes_as_its_events_do(seed: int, n_symbols: int, periods: int,
                                        quotes_per_trade: float, cut: int) -> None:
    gen = GbmGenerator(demo_symbols(n_symbols), seed=seed, quotes_per_trade=quotes_per_trade)
    batch = gen.events(TS[:periods])[:cut]
    assert isinstance(batch, EventBatch)
    events = list(batch)
    assert len(batch) == len(events) == min(cut, periods * n_symbols)
    assert _calls_as_dict(batch.append_calls(KEYS)) == \
        _calls_as_dict(streams.append_calls(KEYS, events))
    counts = batch.channel_counts()
    assert counts[Channel.TRADES] == sum(codec.channel_of(e) is Channel.TRADES for e in events)
    assert counts[Channel.QUOTES] == len(events) - counts[Channel.TRADES]
    assert set(batch.present_symbols()) == {e.symbol for e in events}


def test_batch_is_a_sequence_of_its_events() -> None:
    batch = GbmGenerator(demo_symbols(3), seed=4).events(TS[:5])
    events = batch.events()
    assert batch == events and len(batch) == 15
    assert [batch[i] for i in range(15)] == events
    assert batch[-1] == events[-1]
    assert list(batch[:7]) == events[:7] and batch[2:9:3] == events[2:9:3]
    with pytest.raises(IndexError):
        batch[15]
    assert GbmGenerator(demo_symbols(3), seed=4).events([]) == []


def test_invalid_cell_raises_as_building_the_event_would() -> None:
    gen = GbmGenerator([SymbolSpec("AAA", 100.0, 0.1, 0.3)], seed=1, quotes_per_trade=0.0)
    batch = gen.events(TS[:3])
    batch.price[1, 0] = math.inf
    with pytest.raises(InvalidEventError) as from_batch:
        batch.append_calls(KEYS)
    with pytest.raises(InvalidEventError) as from_event:
        list(batch)
    assert from_batch.value.reason == from_event.value.reason == "not_finite"


def test_generator_validates_source_once() -> None:
    with pytest.raises(InvalidEventError):
        GbmGenerator(demo_symbols(2), source="Not A Source")
