"""The example strategy: its crossover maths, and the script itself against
live Redis streams and as a replay from PostgreSQL."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from pricepipe import streams
from pricepipe.events import Quote, Trade
from pricepipe.keys import Keys

from .helpers import TS, insert_events, quote

ROOT = Path(__file__).parents[3]
SCRIPT = ROOT / "examples" / "ma_crossover.py"
# Down, up, down: the fast average crosses the slow one twice.
PRICES = [10.0] * 4 + [9.0, 8.0, 7.0, 6.0] + [8.0, 10.0, 12.0, 14.0] + [10.0, 7.0, 4.0, 2.0]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ma_crossover", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_crossover_signals() -> None:
    model = _module().Crossover(2, 4)
    signals = [(i, s) for i, price in enumerate(PRICES) if (s := model.update(price))]
    assert [s for _, s in signals] == ["BUY", "SELL"]
    assert signals[0][0] > 8 and signals[1][0] > 12


def test_signals_use_the_mid_and_pay_the_spread_unless_it_is_too_wide() -> None:
    module = _module()
    model = module.Crossover(2, 4)
    got = [module.signal_of(model, quote("AAPL", i, p), 50.0) for i, p in enumerate(PRICES)]
    signals = [s for s in got if s]
    # Quotes are mid -/+ 0.01: a buy pays the ask, a sell gets the bid.
    assert signals == [("BUY", PRICES[9] + 0.01), ("SELL", PRICES[13] - 0.01)]
    # The same crossings with a spread wider than allowed: no signal at all.
    wide = module.Crossover(2, 4)
    assert not any(module.signal_of(wide, quote("AAPL", i, p), 0.5)
                   for i, p in enumerate(PRICES))
    one_sided = Quote("AAPL", TS, 1.0, 1.0, None, None)
    assert module.signal_of(module.Crossover(2, 4), one_sided, 50.0) is None


def _run(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **kwargs)


def test_example_on_live_streams(pipeline_env: dict[str, str], r: redis.Redis,
                                 keys: Keys) -> None:
    env = {**pipeline_env, "PYTHONPATH": str(ROOT)}
    streams.register_symbols(r, keys, ["AAPL"])
    proc = _run(["--fast", "2", "--slow", "4", "--count", str(len(PRICES))], env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("watching AAPL")
        # The reader starts at the end of the stream: publish once it watches.
        # A trade between quotes: the strategy reads quotes only.
        events: list[Trade | Quote] = [quote("AAPL", i, p) for i, p in enumerate(PRICES)]
        events.insert(5, Trade("AAPL", TS + 5, 1.0, 1.0))
        streams.append_events(r, keys, events)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert [line.split()[1] for line in out.splitlines() if line[:4].isdigit()] == ["BUY", "SELL"]


def test_example_replays_history(pipeline_env: dict[str, str], db: Any) -> None:
    insert_events(db, [(quote("MSFT", i * 1000, p), f"{1_767_323_045_000 + i}-0")
                       for i, p in enumerate(PRICES)])
    env = {**pipeline_env, "PYTHONPATH": str(ROOT)}
    proc = _run(["--replay", "--symbols", "MSFT", "--since", str(TS), "--fast", "2",
                 "--slow", "4"], env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert [line.split()[1] for line in out.splitlines() if line[:4].isdigit()] == ["BUY", "SELL"]
    assert f"{len(PRICES)} quotes" in out
