"""Validation curves of classification runs, and the CPU time each took to reach an accuracy.

A curve is a run's validation points, in order of iteration, each a dict
``{iteration, val_accuracy, val_ci95, seconds, cpu_seconds}``: accuracy and its 95% CI half-width
as fractions, ``seconds`` of wall-clock and ``cpu_seconds`` of CPU time (the training process, all
its threads) since the run began, across resumptions. ``cpu_seconds`` is None in runs logged
before CPU time was recorded.

    curve = run_curve("runs/protonet")
    print(time_to_accuracy(curve, 95.0).text())  # CPU-min to 95%, or how far it got
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .experiment import RunFolderError, _read_text, read_metrics
from .papers import paper_figure

__all__ = [
    "CURVE_KEYS",
    "ESTIMATE_METHOD",
    "LearnerCurve",
    "read_curve_record",
    "record_curve",
    "run_curve",
    "TimeToAccuracy",
    "time_to_accuracy",
    "validation_curve",
]

CURVE_KEYS = ("iteration", "val_accuracy", "val_ci95", "seconds", "cpu_seconds")
# Five points: fewer make the slope swing with one noisy validation figure.
ESTIMATE_POINTS = 5
ESTIMATE_MIN_POINTS = 3
# Still rising is judged on the last five points and on the last ten: five alone read one low figure
# at their start as a rise on a curve that is flat over the ten.
TREND_POINTS = 10
# An extrapolation this far beyond the CPU time spent says little; it is reported as a bound.
ESTIMATE_LIMIT = 100.0
ESTIMATE_METHOD = (
    f"least-squares line through the last {ESTIMATE_POINTS} validation points (at least "
    f"{ESTIMATE_MIN_POINTS}), accuracy against log CPU time, extended to the target, where the "
    f"curve is still rising: the slopes of that line and of the line through the last "
    f"{TREND_POINTS} points both above 1.96 standard errors (from each point's 95% CI)"
)


def validation_curve(records: list[dict]) -> list[dict]:
    """The validation points of a run's metrics records (`experiment.read_metrics`), one per
    iteration (the last record wins), ordered by iteration; empty for a run never validated or one
    whose validation metric is not accuracy."""
    points: dict[int, dict] = {}
    for m in records:
        if isinstance(m.get("val_accuracy"), (int, float)):
            points[m["iteration"]] = {
                "iteration": m["iteration"],
                "val_accuracy": round(float(m["val_accuracy"]), 6),
                "val_ci95": round(float(m.get("val_ci95", 0.0)), 6),
                "seconds": m.get("seconds"),
                "cpu_seconds": m.get("cpu_seconds"),
            }
    return [points[i] for i in sorted(points)]


def run_curve(run_dir: str | Path) -> list[dict]:
    """`validation_curve` of a run folder's metrics.jsonl."""
    return validation_curve(read_metrics(run_dir))


@dataclass
class LearnerCurve:
    """One learner's validation curve on `ways`-way `shots`-shot episodes, labelled for a legend."""

    label: str
    algorithm: str
    ways: int | None
    shots: int | None
    points: list[dict] = field(default_factory=list)

    @property
    def paper(self) -> float | None:
        """The paper's accuracy (%) for the validation episodes' shape, if it reports one."""
        if self.ways is None or self.shots is None:
            return None
        return paper_figure(self.algorithm, self.ways, self.shots)


def read_curve_record(path: str | Path) -> dict:
    """A results file that holds a validation curve (`benchmarks/omniglot.py` writes one per
    table cell: algorithm, ways, shots and `curve`; `val_ways` / `val_shots` when the validation
    episodes differ from the cell's), checked; `RunFolderError` naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(_read_text(path))
    except ValueError as e:
        raise RunFolderError(f"{path} is not valid JSON ({e})") from None
    points = record.get("curve") if isinstance(record, dict) else None
    if not (
        isinstance(record.get("algorithm") if isinstance(record, dict) else None, str)
        and all(isinstance(record.get(k), int) for k in ("ways", "shots"))
        and isinstance(points, list)
        and all(
            isinstance(p, dict)
            and isinstance(p.get("iteration"), int)
            and all(isinstance(p.get(k), (int, float)) for k in ("val_accuracy", "val_ci95"))
            and all(p.get(k) is None or isinstance(p[k], (int, float)) for k in ("seconds", "cpu_seconds"))
            for p in points
        )
    ):
        raise RunFolderError(
            f"{path} is neither a run folder nor a results file with a validation curve (algorithm, "
            "ways, shots and a curve of points with iteration, val_accuracy and val_ci95)"
        )
    return record


def record_curve(record: dict, label: str | None = None) -> LearnerCurve:
    """The `LearnerCurve` of a results record (`read_curve_record`), labelled by its learner and
    validation episodes unless `label` is given."""
    ways, shots = record.get("val_ways", record["ways"]), record.get("val_shots", record["shots"])
    name = label if label is not None else f"{record['algorithm']} {ways}w{shots}s"
    return LearnerCurve(name, record["algorithm"], ways, shots, list(record.get("curve") or []))


@dataclass(frozen=True)
class TimeToAccuracy:
    """When a curve first reached `target` (%): at CPU minute `minutes` and `iteration`; or not
    reached, with the best accuracy (%) and the CPU minutes spent, and where the curve is still
    rising an `estimate` of the CPU minutes it would take (`ESTIMATE_METHOD`; infinite when the
    extrapolation passes `ESTIMATE_LIMIT` times the time spent)."""

    target: float
    minutes: float | None
    iteration: int | None
    best: float
    spent_minutes: float
    estimate: float | None = None

    @property
    def reached(self) -> bool:
        return self.minutes is not None

    def text(self) -> str:
        if self.reached:
            return f"{_minutes(self.minutes)} CPU-min (iteration {self.iteration:,})"
        text = f"not reached (best {self.best:.2f}% after {_minutes(self.spent_minutes)} CPU-min)"
        if self.estimate is None:
            return text
        if math.isinf(self.estimate):
            return text + f"; still rising, estimate over {ESTIMATE_LIMIT:.0f}x the time spent"
        return text + f"; still rising, estimate ~{_minutes(self.estimate)} CPU-min"


def _minutes(m: float) -> str:
    return f"{m:.1f}" if m < 10 else f"{m:,.0f}"


def time_to_accuracy(curve: list[dict], target: float) -> TimeToAccuracy | None:
    """CPU minutes for `curve` to reach `target` (% accuracy): the first validation point at or
    above it. None when the curve is empty or lacks CPU times.

    Not reached: the best point, the CPU minutes spent, and, where the curve is still rising, an
    estimate by `ESTIMATE_METHOD`."""
    points = [p for p in curve if p.get("cpu_seconds") is not None]
    if not points or len(points) != len(curve):
        return None
    for p in points:
        if 100 * p["val_accuracy"] >= target:
            return TimeToAccuracy(
                target, p["cpu_seconds"] / 60, p["iteration"], 100 * p["val_accuracy"], p["cpu_seconds"] / 60
            )
    spent = points[-1]["cpu_seconds"] / 60
    best = 100 * max(p["val_accuracy"] for p in points)
    line = _line(points[-ESTIMATE_POINTS:])
    rising = _rises(line) and _rises(_line(points[-TREND_POINTS:]))
    return TimeToAccuracy(target, None, None, best, spent, _estimate(line, target, spent) if rising else None)


def _line(window: list[dict]) -> tuple[float, float, float, float] | None:
    """The least-squares line of accuracy (%) against log CPU minutes through `window`: (slope,
    its standard error from the points' 95% CIs taken as independent errors, mean log minutes,
    mean accuracy); None for fewer than `ESTIMATE_MIN_POINTS` points or no spread in time."""
    if len(window) < ESTIMATE_MIN_POINTS or any(p["cpu_seconds"] <= 0 for p in window):
        return None
    xs = [math.log(p["cpu_seconds"] / 60) for p in window]
    ys = [100 * p["val_accuracy"] for p in window]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    sd = [100 * p["val_ci95"] / 1.96 for p in window]
    stderr = math.sqrt(sum(((x - mx) * s) ** 2 for x, s in zip(xs, sd))) / sxx
    return slope, stderr, mx, my


def _rises(line: tuple[float, float, float, float] | None) -> bool:
    """Whether a `_line` rises by more than 1.96 standard errors of its slope."""
    return line is not None and line[0] > 1.96 * line[1]


def _estimate(line: tuple[float, float, float, float], target: float, spent: float) -> float:
    """CPU minutes at which a rising `_line` of accuracy (%) against log CPU time reaches `target`,
    at least `spent`; infinite past `ESTIMATE_LIMIT` times `spent`."""
    slope, _, mx, my = line
    log_minutes = mx + (target - my) / slope
    if log_minutes > math.log(ESTIMATE_LIMIT * spent):
        return math.inf
    # A line already past the target where no point reached it says "about now".
    return max(spent, math.exp(log_minutes))
