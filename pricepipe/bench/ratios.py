"""Ratios against baselines measured in the same run, from interleaved
repeats, judged against goals. Pure, except :func:`interleave`, which only
calls what it is given.

Why: on a shared VM the same code measured 0.63x and then 0.91x of the same
baseline in two runs (issue 18). A figure taken once, or a baseline taken
once at the start of a run, rides whatever else the machine did at that
moment. So a target measures its baseline and itself in turns (baseline,
pricepipe, baseline, pricepipe, ... :func:`interleave`), each pair close in
time and thus under about the same disturbance, computes the ratio *per pair*
(:func:`pair_ratios`), and reports the median of those ratios with their
min and max (:class:`Ratio`). The spread is part of the result: a goal met
by the median with a min below it is met by a small margin.

A :class:`Ratio` may also judge an absolute figure (a p99 in ms, memory per
connection) where the issue's goal is one: ``unit`` says which.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Better = Literal["higher", "lower"]
T = TypeVar("T")
U = TypeVar("U")

#: Pairs of (baseline, pricepipe) runs per ratio unless ``--repeats`` says otherwise.
DEFAULT_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Spread:
    """Median, min and max of some samples (all None when there are none)."""

    median: float | None
    low: float | None
    high: float | None
    count: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Spread:
        data = [float(v) for v in samples]
        if not data:
            return cls(None, None, None, 0)
        return cls(float(statistics.median(data)), min(data), max(data), len(data))


@dataclass(frozen=True, slots=True)
class Ratio:
    """A ratio (or an absolute figure) from repeated samples, and its goal.

    ``goal`` None: reported, not judged. ``better`` says which side of the
    goal meets it: ``"higher"`` means median >= goal, ``"lower"`` median <=
    goal; ``strict`` makes those > and <. Judged on the median: the min-max
    beside it says how much the verdict can be trusted.
    """

    name: str
    goal: float | None
    better: Better = "higher"
    samples: tuple[float, ...] = ()
    #: "x" for a ratio; otherwise the figure's unit ("ms", "kB", "/s").
    unit: str = "x"
    strict: bool = False
    #: What the ratio compares, or why its goal reads as it does (one line).
    note: str = ""

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', not {self.better!r}")

    @property
    def spread(self) -> Spread:
        return Spread.of(self.samples)

    @property
    def median(self) -> float | None:
        return self.spread.median

    @property
    def met(self) -> bool | None:
        """Whether the median meets the goal; None without a goal or samples."""
        median = self.median
        if self.goal is None or median is None:
            return None
        if self.better == "higher":
            return median > self.goal if self.strict else median >= self.goal
        return median < self.goal if self.strict else median <= self.goal

    def goal_text(self) -> str:
        """``">= 1.0x"``, ``"< 50 ms"``; "" without a goal."""
        if self.goal is None:
            return ""
        sign = {("higher", False): ">=", ("higher", True): ">",
                ("lower", False): "<=", ("lower", True): "<"}[(self.better, self.strict)]
        return f"{sign} {format_value(self.goal, self.unit)}"

    def to_dict(self) -> dict[str, Any]:
        spread = self.spread
        return {"goal": self.goal, "better": self.better, "strict": self.strict,
                "unit": self.unit, "median": spread.median, "min": spread.low,
                "max": spread.high, "samples": list(self.samples), "met": self.met,
                "goal_text": self.goal_text(), "note": self.note}

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Ratio:
        return cls(name, data.get("goal"), data.get("better", "higher"),
                   tuple(data.get("samples", ())), data.get("unit", "x"),
                   bool(data.get("strict", False)), data.get("note", ""))


def format_value(value: float | None, unit: str = "") -> str:
    """A figure for people: ratios to 2-3 digits, big numbers with commas."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x" if abs(value) < 10 else f"{value:,.1f}x"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}" if unit and not unit.startswith("/") else f"{text}{unit}"


def pair_ratios(figures: Sequence[float], baselines: Sequence[float]) -> list[float]:
    """``figure / baseline`` for each pair, in order (a zero or missing
    baseline gives no ratio). Raises ValueError when the lengths differ: the
    ratios are per pair, not of two medians."""
    if len(figures) != len(baselines):
        raise ValueError(f"{len(figures)} figures for {len(baselines)} baselines")
    return [f / b for f, b in zip(figures, baselines, strict=True) if b]


def interleave(baseline: Callable[[int], T], contender: Callable[[int], U], repeats: int,
               *, say: Callable[[str], None] | None = print) -> list[tuple[T, U]]:
    """Run ``baseline(i)`` then ``contender(i)`` for i in 0..repeats-1:
    baseline, pricepipe, baseline, pricepipe, ...; the pairs in order."""
    pairs: list[tuple[T, U]] = []
    for i in range(max(int(repeats), 1)):
        if say is not None:
            say(f"  -- pair {i + 1} of {max(int(repeats), 1)}")
        base = baseline(i)
        pairs.append((base, contender(i)))
    return pairs


def collect(runs: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """Per figure name, its value in each run that measured it, in order."""
    out: dict[str, list[float]] = {}
    for run in runs:
        for name, value in run.items():
            if value is not None:
                out.setdefault(name, []).append(float(value))
    return out


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Per name, the median of its samples (names without samples left out)."""
    return {name: float(statistics.median(values)) for name, values in samples.items() if values}


def target_report(target: str, *, figures: Mapping[str, Sequence[float]],
                  baselines: Mapping[str, Sequence[float]], ratios: Sequence[Ratio],
                  params: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A target's report: ``figures`` and ``baselines`` as medians (name ->
    float), every sample under ``samples``, ``ratios`` as name ->
    :meth:`Ratio.to_dict`, and ``goals_met`` (every judged ratio met; None
    when none is judged)."""
    judged = [r.met for r in ratios if r.met is not None]
    return {
        "target": target,
        "ratios": {r.name: r.to_dict() for r in ratios},
        "goals_met": all(judged) if judged else None,
        "figures": medians(figures),
        "baselines": medians(baselines),
        "samples": {"figures": {k: list(v) for k, v in figures.items()},
                    "baselines": {k: list(v) for k, v in baselines.items()}},
        "params": dict(params),
        **extra,
    }


def ratio_lines(report: Mapping[str, Any]) -> list[str]:
    """The ratio lines a target prints first: name, median (min-max), goal, verdict."""
    lines = []
    for name, data in report.get("ratios", {}).items():
        ratio = Ratio.from_dict(name, data)
        spread = ratio.spread
        verdict = {True: "met", False: "NOT MET", None: ""}[ratio.met]
        goal = f"goal {ratio.goal_text()}" if ratio.goal is not None else "(no goal)"
        lines.append(f"  {name:<40} {format_value(spread.median, ratio.unit):>10}  "
                     f"({format_value(spread.low, ratio.unit)} - "
                     f"{format_value(spread.high, ratio.unit)}, n={spread.count})  "
                     f"{goal} {verdict}".rstrip())
    return lines


def summary_text(report: Mapping[str, Any]) -> str:
    """What a target prints at its end: the ratios and their goals first,
    then every figure and baseline as median (min-max)."""
    params = report.get("params", {})
    head = f"== {report.get('target')}: ratios"
    if params.get("samples_note"):
        head += f" ({params['samples_note']})"
    elif params.get("repeats"):
        head += f" (median of {params['repeats']} interleaved pairs, min - max)"
    lines = [head, *ratio_lines(report)]
    samples = report.get("samples", {})
    for section in ("figures", "baselines"):
        values = report.get(section, {})
        if not values:
            continue
        lines.append(f"   {section}:")
        for name, median in values.items():
            spread = Spread.of(samples.get(section, {}).get(name, [median]))
            lines.append(f"    {name:<40} {format_value(median):>12}  "
                         f"({format_value(spread.low)} - {format_value(spread.high)})")
    return "\n".join(lines)
