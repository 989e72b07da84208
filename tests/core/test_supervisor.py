"""The ``pricepipe up`` status line counts from the persist group's own
bookkeeping, also after Redis reloaded its AOF (when Redis 7.0 no longer
knows the group's lag)."""

from __future__ import annotations

from typing import Any

from pricepipe import streams
from pricepipe.embedded import RedisServer
from pricepipe.events import Quote, Trade
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.supervisor import pipeline_counts

TS = 1_767_323_045_000_000


def test_counts_survive_an_aof_reload(redis_server: RedisServer, r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["AAPL"])
    streams.append_events(r, keys, [Trade("AAPL", TS + i, 1.0 + i, 1.0) for i in range(100)])
    streams.append_events(r, keys, [Quote("AAPL", TS + i, 1.0, 1.0, 2.0, 1.0)
                                    for i in range(20)])
    stream = keys.trades("AAPL")
    got = r.xreadgroup(PERSIST_GROUP, "c1", {stream: ">"}, count=60)
    r.xack(stream, PERSIST_GROUP, *[eid for eid, _ in got[0][1]][:50])
    # 120 published (both streams), 50 trades acknowledged, 10 pending, 60 never delivered.
    assert pipeline_counts(r, keys, ["AAPL"]) == (120, 50, 70)
    redis_server.restart()
    r.connection_pool.disconnect()
    assert pipeline_counts(r, keys, ["AAPL"]) == (120, 50, 70)


def test_postgres_data_goes_where_its_user_can_reach(tmp_path: Any) -> None:
    import os
    from pathlib import Path

    from pricepipe.supervisor import postgres_dir

    private = Path(tmp_path) / "home"  # pytest's tmp_path is 0700: like /root
    private.mkdir(mode=0o700)
    chosen = postgres_dir(private / ".pricepipe")
    if os.geteuid() != 0:
        assert chosen == private / ".pricepipe" / "postgres"
        return
    try:
        assert str(chosen).startswith("/var/tmp/pricepipe-")
        assert chosen == postgres_dir(private / ".pricepipe")  # stable: the next run finds it
    finally:
        chosen.parent.rmdir()
    open_dir = Path("/tmp") / f"pp-open-{os.getpid()}"
    open_dir.mkdir(mode=0o755, exist_ok=True)
    try:
        assert postgres_dir(open_dir) == open_dir / "postgres"
    finally:
        open_dir.rmdir()
