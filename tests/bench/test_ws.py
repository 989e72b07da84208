"""``pricepipe bench ws`` runs end to end on a tiny load (figures are printed,
never asserted)."""

from __future__ import annotations

from pricepipe.bench import ws as bench


def test_bench_smoke(redis_url: str) -> None:
    report = bench.run(redis_url=redis_url, database_url="", n=4)
    assert report["target"] == "ws"
    assert report["params"]["clients"] == 4
    for section in ("figures", "baselines"):
        assert report[section]["deliveries_per_s"] > 0
        assert report[section]["p99_ms"] > 0
    assert set(report["ratios"]) == {"deliveries_per_s", "p99_ms", "server_cpu_us_per_delivery"}
