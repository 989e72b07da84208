"""The instruments refresh job: pure parsing, history, Finnhub, and as an rq job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from pricepipe.exceptions import BadResponseError
from pricepipe.keys import Keys
from pricepipe.publisher.metadata import (
    Instrument,
    parse_metric,
    parse_profile,
    refresh_instruments,
)
from pricepipe.streams import register_symbols

from .fake_upstream import FakeUpstream

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def test_parse_documented_profile_and_metric() -> None:
    assert parse_profile("AAPL", fixture("finnhub_profile2.json")) == Instrument(
        "AAPL", "Apple Inc",
        "https://static.finnhub.io/logo/87cb30d8-80df-11ea-8951-00000000092a.png",
        "USD", "NASDAQ/NMS (GLOBAL MARKET)")
    assert parse_metric(fixture("finnhub_metric.json")) == (310.43, 149.22)
    assert parse_profile("X", {}) == Instrument("X")  # unknown symbol: nothing known
    assert parse_profile("X", {"logo": "javascript:alert(1)"}).logo_url is None
    assert parse_metric({"metric": {"52WeekHigh": 1.0, "52WeekLow": 5.0}}) == (None, None)
    assert parse_metric({"metric": {"52WeekHigh": "x", "52WeekLow": -1}}) == (None, None)
    bad: Any
    for bad in ([], "x", {"error": "Invalid API key"}):
        with pytest.raises(BadResponseError):
            parse_profile("X", bad)
        with pytest.raises(BadResponseError):
            parse_metric(bad)


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, pipeline_env: dict[str, str]) -> None:
    """The job reads its connections from the environment, as in an rq worker."""
    for name in ("PRICEPIPE_REDIS_URL", "PRICEPIPE_DATABASE_URL", "PRICEPIPE_REDIS_SHARDS",
                 "PRICEPIPE_REDIS_PREFIX"):
        monkeypatch.setenv(name, pipeline_env[name])
    monkeypatch.setenv("PRICEPIPE_FINNHUB_API_KEY", "test-key")
    monkeypatch.setenv("PRICEPIPE_POLL_RETRIES", "0")
    monkeypatch.delenv("PRICEPIPE_METADATA_SOURCE", raising=False)
    monkeypatch.delenv("PRICEPIPE_METADATA_SYMBOLS", raising=False)


def insert_history(db: Any) -> None:
    now = datetime.now(UTC)
    rows = [("AAPL", now - timedelta(days=400), 500.0),  # older than a year: ignored
            ("AAPL", now - timedelta(days=200), 150.0),
            ("AAPL", now - timedelta(days=2), 210.0),
            ("AAPL", now - timedelta(minutes=5), 190.0)]
    with db.cursor() as cur:
        for _, ts, _ in rows:
            cur.execute("SELECT ensure_partitions('trades', %s::date, %s::date)", (ts, ts))
        for i, (symbol, ts, price) in enumerate(rows):
            cur.execute("INSERT INTO trades (symbol, ts, price, size, side, source, entry_id)"
                        " VALUES (%s, %s, %s, 1.0, 'buy', 'test', %s)", (symbol, ts, price, i))
        # MSFT has bars: they are used rather than trades. (Its trades, had
        # it any, would be in those bars.)
        bucket = (now - timedelta(days=3)).replace(second=0, microsecond=0)
        cur.execute(
            "INSERT INTO bars_1m (symbol, bucket, open, high, low, close, volume, notional,"
            " trade_count, open_ts, open_entry, close_ts, close_entry)"
            " VALUES ('MSFT', %s, 400, 430, 390, 420, 10, 4150, 5, %s, 1, %s, 2)",
            (bucket, bucket, bucket))
        cur.execute("INSERT INTO trades (symbol, ts, price, source, entry_id)"
                    " VALUES ('MSFT', %s, 999, 'test', 99)", (now - timedelta(days=2),))


def instruments(db: Any) -> dict[str, tuple[Any, ...]]:
    with db.cursor() as cur:
        cur.execute("SELECT symbol, name, logo_url, week52_high, week52_low FROM instruments")
        return {row[0]: row[1:] for row in cur.fetchall()}


def test_history_source(job_env: None, db: Any, r: Any, keys: Keys) -> None:
    register_symbols(r, keys, ["AAPL", "MSFT", "NEW"])
    insert_history(db)
    result = refresh_instruments(source="history")
    assert result == {"updated": 3, "from_provider": 0, "from_history": 2, "errors": 0}
    assert instruments(db) == {"AAPL": (None, None, 210.0, 150.0),
                               "MSFT": (None, None, 430.0, 390.0),
                               "NEW": (None, None, None, None)}
    # Idempotent: running again changes nothing.
    refresh_instruments(source="history")
    assert len(instruments(db)) == 3


def test_finnhub_source_with_a_failing_symbol(job_env: None, db: Any, r: Any, keys: Keys,
                                              fake: FakeUpstream) -> None:
    insert_history(db)
    with db.cursor() as cur:  # known from an earlier run: kept when the provider fails
        cur.execute("INSERT INTO instruments (symbol, name) VALUES ('MSFT', 'Microsoft')")
    fake.script("ok", "ok", "503")  # AAPL profile and metric fine; MSFT's profile fails
    result = refresh_instruments(source="finnhub", symbols=["AAPL", "MSFT"],
                                 base_url=fake.url)
    assert result["errors"] == 1 and result["updated"] == 2
    rows = instruments(db)
    assert rows["AAPL"] == ("AAPL Inc", "https://static.example/logo/AAPL.png", 310.43, 149.22)
    assert rows["MSFT"] == ("Microsoft", None, 430.0, 390.0)  # history filled the range


def test_runs_as_an_rq_job(job_env: None, db: Any, r: Any, keys: Keys) -> None:
    from rq import Queue, SimpleWorker

    register_symbols(r, keys, ["AAPL"])
    insert_history(db)
    queue = Queue(keys.rq_queue("maintenance"), connection=r)
    job = queue.enqueue("pricepipe.publisher.metadata.refresh_instruments",
                        kwargs={"source": "history"})
    SimpleWorker([queue], connection=r).work(burst=True)
    job.refresh()
    assert job.get_status() == "finished", job.latest_result()
    assert job.return_value() == {"updated": 1, "from_provider": 0, "from_history": 1,
                                  "errors": 0}
    assert instruments(db)["AAPL"] == (None, None, 210.0, 150.0)
