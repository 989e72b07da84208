"""The picture of an e2e ramp: throughput and tail latency against the
offered rate, as a PNG beside the Markdown report (and in the README).

matplotlib comes with the ``research`` extra; without it the report is
written without the chart (:func:`ramp_chart` returns False). The Agg
backend only: no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def ramp_series(steps: Sequence[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per measured quantity, its value at each step (None where a step did
    not measure it), in the steps' order. Pure."""
    keys = {
        "offered": "target_events_per_s",
        "published": "published_events_per_s",
        "persisted": "persisted_events_per_s",
        "websocket": "ws_events_per_s",
        "persist_lag_p99_ms": "persist_lag_p99_ms",
        "ws_latency_p99_ms": "ws_latency_p99_ms",
    }
    return {name: [None if step.get(key) is None else float(step[key]) for step in steps]
            for name, key in keys.items()}


def ramp_chart(steps: Sequence[dict[str, Any]], path: Path, *, title: str,
               goal_events_per_s: float, goal_lag_ms: float, goal_ws_ms: float) -> bool:
    """Draw the ramp to ``path`` (PNG); False when matplotlib is missing or
    there is no step."""
    if not steps:
        return False
    # In the order of their rates: the steps that bisect after the ramp's
    # first failure come after it.
    steps = sorted(steps, key=lambda step: step.get("target_events_per_s") or 0)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    # 50k rather than 50000: five full rates side by side run into each other.
    thousands = FuncFormatter(lambda value, _pos: f"{value / 1000:g}k" if value else "0")
    series = ramp_series(steps)
    offered = [v or 0.0 for v in series["offered"]]
    figure = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    rate, tail = figure.subplots(1, 2)
    top = max(offered) * 1.05
    rate.plot([0, top], [0, top], color="#bbbbbb", linewidth=1, label="offered")
    for name, style in (("published", "o-"), ("persisted", "s-"), ("websocket", "^-")):
        rate.plot(offered, series[name], style, label=name, markersize=4)
    rate.axvline(goal_events_per_s, color="#d62728", linestyle=":", linewidth=1,
                 label=f"goal {goal_events_per_s:,.0f}/s")
    rate.set(xlabel="offered events/s", ylabel="events/s", title="throughput")
    rate.xaxis.set_major_formatter(thousands)
    rate.yaxis.set_major_formatter(thousands)
    rate.legend(fontsize=8)
    for name, label in (("persist_lag_p99_ms", "persist lag p99"),
                        ("ws_latency_p99_ms", "websocket p99")):
        points = [(x, y) for x, y in zip(offered, series[name], strict=True) if y]
        if points:
            tail.plot(*zip(*points, strict=True), "o-", label=label, markersize=4)
    tail.axhline(goal_lag_ms, color="#1f77b4", linestyle=":", linewidth=1,
                 label=f"lag goal {goal_lag_ms:,.0f} ms")
    tail.axhline(goal_ws_ms, color="#ff7f0e", linestyle=":", linewidth=1,
                 label=f"websocket goal {goal_ws_ms:,.0f} ms")
    tail.set_yscale("log")
    tail.set(xlabel="offered events/s", ylabel="ms (log)", title="tail latency")
    tail.xaxis.set_major_formatter(thousands)
    tail.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return True
