"""CSV downloads read as two halves at once (pricepipe.api.copystream): the
same bytes as one COPY, in every order, with every limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pricepipe.api import queries
from pricepipe.api.settings import ApiSettings
from pricepipe.events import Side, Trade
from tests.api.helpers import (
    DAY0_US,
    backfill_entry,
    entry_for,
    insert_quotes,
    insert_trades,
    steady_quotes,
    steady_trades,
)


@pytest.fixture
def splits(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each download was split (True) or one COPY (False); a few
    rows are enough to split."""
    seen: list[bool] = []
    real = queries.event_csv_halves

    def spy(*args: Any, **kwargs: Any) -> tuple[bytes, bytes] | None:
        halves = real(*args, **kwargs)
        seen.append(halves is not None)
        return halves

    monkeypatch.setattr(queries, "SPLIT_CSV_ROWS", 4)
    monkeypatch.setattr(queries, "event_csv_halves", spy)
    return seen


def _download(client: TestClient, path: str, **params: str) -> bytes:
    resp = client.get(path, params={**params, "format": "csv"})
    assert resp.status_code == 200, resp.text
    return resp.content


def test_split_download_equals_one_copy(make_client: Callable[..., TestClient], db: Any,
                                        splits: list[bool],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, csv_chunk_bytes=64))
    trades = steady_trades("SPLT", DAY0_US, 40, 1_000_000)
    # Ties at one instant (ordered by entry ID), and a backfilled trade among them.
    tied = [Trade("SPLT", DAY0_US + 20_000_000, 5.0 + i, 1.0, "test", f"t{i}", Side.BUY)
            for i in range(5)]
    backfilled = Trade("SPLT", DAY0_US + 20_000_000, 9.0, None, "test")
    entries = [*(entry_for(t) for t in trades), *(entry_for(t, seq=i + 1)
                                                  for i, t in enumerate(tied)),
               backfill_entry(backfilled.ts_us)]
    insert_trades(db, [*trades, *tied, backfilled], entries)
    insert_quotes(db, steady_quotes("SPLT", DAY0_US, 30, 1_000_000))
    window = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9)}
    ids = {"after_id": f"{DAY0_US // 1000 - 1}-0", "until_id": f"{(DAY0_US + 10**9) // 1000}-0"}
    cases: list[tuple[str, dict[str, str]]] = [
        ("/v1/trades/SPLT", window),
        ("/v1/trades/SPLT", {**window, "limit": "21"}),
        ("/v1/trades/SPLT", {**window, "limit": "1000"}),
        ("/v1/trades/SPLT", ids),  # stream order
        ("/v1/trades/SPLT", {**ids, "limit": "9"}),
        ("/v1/quotes/SPLT", window),
        ("/v1/quotes/SPLT", {**window, "limit": "7"}),
    ]
    split_bodies = [_download(client, path, **params) for path, params in cases]
    assert splits == [True] * len(cases)
    monkeypatch.setattr(queries, "SPLIT_CSV_ROWS", 10**9)  # one COPY each
    whole_bodies = [_download(client, path, **params) for path, params in cases]
    assert splits[len(cases):] == [False] * len(cases)
    for (path, params), split, whole in zip(cases, split_bodies, whole_bodies, strict=True):
        assert split == whole, (path, params)
    # The limits hold: header + rows.
    assert len(split_bodies[1].splitlines()) == 22 and len(split_bodies[4].splitlines()) == 10
    assert len(split_bodies[0].splitlines()) == 1 + len(trades) + len(tied) + 1


def test_too_many_rows_to_split_is_one_copy(make_client: Callable[..., TestClient], db: Any,
                                            splits: list[bool],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None))
    insert_trades(db, steady_trades("BIGS", DAY0_US, 30, 1_000_000))
    monkeypatch.setattr(queries, "MAX_SPLIT_CSV_ROWS", 20)
    window = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9)}
    body = _download(client, "/v1/trades/BIGS", **window)
    assert len(body.splitlines()) == 31 and splits == [False]
    # A limit within the bound splits again.
    assert len(_download(client, "/v1/trades/BIGS", **window, limit="20").splitlines()) == 21
    assert splits == [False, True]


def test_split_download_abandoned_midway_frees_both_connections(
        make_live_api: Callable[..., str], db: Any, splits: list[bool]) -> None:
    import http.client
    import urllib.parse

    insert_trades(db, steady_trades("GONE", DAY0_US, 4000, 10_000))
    base = make_live_api(ApiSettings(rate_limit=None, key_rate_limit=None,
                                     csv_chunk_bytes=256))
    url = urllib.parse.urlsplit(base)
    host = url.hostname or "127.0.0.1"
    query = f"start={DAY0_US}&end={DAY0_US + 10**9}&format=csv"
    for _ in range(12):  # more than the pool's connections, were any leaked
        conn = http.client.HTTPConnection(host, url.port, timeout=30)
        conn.request("GET", f"/v1/trades/GONE?{query}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read(512)
        resp.close()  # mid-download
        conn.close()
    conn = http.client.HTTPConnection(host, url.port, timeout=30)
    conn.request("GET", f"/v1/trades/GONE?{query}")
    resp = conn.getresponse()
    body = resp.read()
    resp.close()
    conn.close()
    assert len(body.splitlines()) == 4001
    assert splits and all(splits)
