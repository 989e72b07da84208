"""Done-when checks across roles: a poller against the fake upstream feeds the
trades and quotes streams, and a persist worker (burst) writes them to
PostgreSQL; correlated GBM symbols from the command line."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pricepipe.keys import Keys

from .fake_upstream import FakeUpstream
from .helpers import read_quotes

Spawn = Callable[..., subprocess.Popen[bytes]]


def test_coinbase_poll_reaches_postgres(spawn: Spawn, pipeline_env: dict[str, str], db: Any,
                                        fake: FakeUpstream) -> None:
    ts_ms = int(time.time() * 1000) - 1500
    fake.set_market("BTC-USD", 64000.5, ts_ms)
    fake.set_market("ETH-USD", 3100.25, ts_ms)
    poll = spawn(["publish", "--source", "coinbase", "--symbols", "BTC-USD,ETH-USD",
                  "--base-url", fake.url, "--rounds", "2", "--interval", "0.05"],
                 env=pipeline_env)
    out, _ = poll.communicate(timeout=60)
    assert poll.returncode == 0, out.decode()
    persist = spawn(["persist", "--burst"], env=pipeline_env)
    out, _ = persist.communicate(timeout=90)
    assert persist.returncode == 0, out.decode()
    with db.cursor() as cur:
        cur.execute("SELECT symbol, price, size, trade_id, source,"
                    " extract(epoch FROM ts) * 1000, recv_ts IS NOT NULL FROM trades"
                    " ORDER BY symbol")
        trades = cur.fetchall()
        cur.execute("SELECT symbol, bid, ask, source, ts = recv_ts FROM quotes ORDER BY symbol")
        quotes = cur.fetchall()
    # A venue's symbols are venue-qualified by default.
    assert [(s, p, size, tid, src, round(float(t)), has_recv)
            for s, p, size, tid, src, t, has_recv in trades] == [
        ("COINBASE:BTC-USD", 64000.5, 0.5, "1000", "coinbase", ts_ms, True),
        ("COINBASE:ETH-USD", 3100.25, 0.5, "1000", "coinbase", ts_ms, True),
    ]
    assert quotes == [("COINBASE:BTC-USD", 64000.49, 64000.51, "coinbase", True),
                      ("COINBASE:ETH-USD", 3100.24, 3100.26, "coinbase", True)]


def test_correlated_symbols_from_the_cli(spawn: Spawn, pipeline_env: dict[str, str], r: Any,
                                         keys: Keys) -> None:
    proc = spawn(["publish", "--symbols", "AAPL,MSFT", "--count", "4000", "--seed", "5",
                  "--correlation", "0.9", "--dt-years", "0.004"], env=pipeline_env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    # Correlated mids: compare the two symbols' quotes, period by period (a
    # period where either traded instead is left out).
    mids: dict[str, dict[int, float]] = {}
    for symbol in ("AAPL", "MSFT"):
        mids[symbol] = {q.ts_us: q.mid for q in read_quotes(r, keys, symbol) if q.mid}
    both = sorted(set(mids["AAPL"]) & set(mids["MSFT"]))
    assert len(both) > 1000
    series = np.array([[mids[s][t] for t in both] for s in ("AAPL", "MSFT")])
    returns = np.diff(np.log(series), axis=1)
    assert np.corrcoef(returns)[0, 1] > 0.8
    bad = spawn(["publish", "--symbols", "AAPL,MSFT", "--count", "10", "--correlation",
                 "1,2;2,1"], env=pipeline_env)
    out, _ = bad.communicate(timeout=60)
    assert bad.returncode == 2 and b"correlation" in out
