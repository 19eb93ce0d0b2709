"""`metalab report RUN...`: learning curves, validation accuracy against iterations and CPU time
beside the papers' figures, accuracy against shots and ways, the sine adaptation figure and the
results table beside the papers, as PNGs plus a markdown page and a self-contained
HTML page (images embedded) that opens without a server."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .curves import (  # noqa: E402
    LearnerCurve,
    TimeToAccuracy,
    read_curve_record,
    record_curve,
    validation_curve,
)
from .experiment import (  # noqa: E402
    RESULTS,
    RunFolderError,
    RunSummary,
    format_table,
    read_metrics,
    read_results,
    read_run_config,
)
from .papers import SINE, paper_figure  # noqa: E402

__all__ = ["accuracy_curves", "accuracy_curves_figure", "time_to_accuracy_figure", "write_report"]


def _load(run: Path) -> RunSummary:
    cfg = run / "config.yaml"
    if not cfg.exists():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    config, metrics = read_run_config(run), read_metrics(run)
    missing = [k for k in ("algorithm", "benchmark") if not isinstance(config.get(k), str)]
    if missing:
        raise RunFolderError(f"{cfg} does not name the run's {' and '.join(missing)}")
    return RunSummary(run, config, metrics[-1]["iteration"] if metrics else 0, read_results(run))


def _label(r: RunSummary) -> str:
    c = r.config
    cell = f"{c.get('ways')}w{c.get('shots')}s" if c.get("benchmark") != "sine" else f"K={c.get('shots')}"
    label = f"{c.get('algorithm')} {cell}"
    return label if r.path.name == c.get("algorithm") else f"{label} ({r.path.name})"


def _smooth(values, fraction: float = 0.02) -> list[float]:
    """A trailing moving average over about `fraction` of the points (the raw curve is drawn faintly)."""
    window = max(1, int(len(values) * fraction))
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _band(ax, x, mean, ci, *, color=None, label=None):
    """A curve with markers and its 95% CI as a band of the same colour; returns the line."""
    (line,) = ax.plot(x, mean, marker="o", ms=3, color=color, label=label)
    lower = [m - c for m, c in zip(mean, ci)]
    upper = [m + c for m, c in zip(mean, ci)]
    ax.fill_between(x, lower, upper, color=line.get_color(), alpha=0.2)
    return line


def learning_curves(runs: list[RunSummary], out: Path) -> Path:
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in runs:
        rows = read_metrics(r.path)
        train = [(m["iteration"], m["loss"]) for m in rows if "loss" in m]
        val_key = next((k for m in rows for k in m if k.startswith("val_") and k != "val_ci95"), None)
        line = None
        if train:
            it, loss = zip(*train)
            (raw,) = ax_loss.plot(it, loss, lw=0.5, alpha=0.25)
            (line,) = ax_loss.plot(it, _smooth(loss), lw=1.5, color=raw.get_color(), label=_label(r))
        if val_key:
            pts = [(m["iteration"], m[val_key], m.get("val_ci95", 0.0)) for m in rows if val_key in m]
            color = line.get_color() if line is not None else None
            _band(ax_val, *zip(*pts), color=color, label=_label(r))
            ax_val.set_ylabel(val_key.replace("_", " ") + " (95% CI band)")
    ax_loss.set(xlabel="iteration", ylabel="training meta-loss (moving average)", title="meta-training")
    ax_val.set(xlabel="iteration", title="validation")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# The x axes of `accuracy_curves`: axis label, and a point's x (None: the point lacks it).
CURVE_AXES = {
    "iteration": ("iteration", lambda p: p["iteration"]),
    "cpu": (
        "CPU minutes (training process, all threads)",
        lambda p: None if p.get("cpu_seconds") is None else p["cpu_seconds"] / 60,
    ),
}


def _colors(n: int) -> list:
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def accuracy_curves_figure(
    curves: list[LearnerCurve],
    axes: tuple[str, ...] = ("iteration", "cpu"),
    *,
    log_x: bool = False,
    title: str | None = None,
    y_min: float | None = None,
):
    """Validation accuracy (%) with its 95% CI band, one curve per learner, one panel per x axis
    (`CURVE_AXES`), and each learner's paper figure as a dashed line in the curve's colour; the
    legend has one entry per learner. Points without the panel's x (runs logged before CPU time was
    recorded) are left out of that panel. Returns the matplotlib figure."""
    fig, panels = plt.subplots(1, len(axes), figsize=(6.5 * len(axes), 4.8), squeeze=False)
    colors = _colors(len(curves))
    for ax, axis in zip(panels[0], axes):
        xlabel, x_of = CURVE_AXES[axis]
        for curve, color in zip(curves, colors):
            paper = curve.paper
            label = curve.label + (f" (paper {paper:g})" if paper is not None else "")
            pts = [(x_of(p), 100 * p["val_accuracy"], 100 * p["val_ci95"]) for p in curve.points]
            pts = [p for p in pts if p[0] is not None and (not log_x or p[0] > 0)]
            if pts:
                _band(ax, *zip(*pts), color=color, label=label)
            if paper is not None:
                ax.axhline(paper, color=color, ls="--", lw=1, alpha=0.8)
        ax.set(xlabel=xlabel, ylabel="validation accuracy (%, 95% CI band)")
        if log_x:
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        if y_min is not None:
            ax.set_ylim(bottom=y_min, top=100.5)
        ax.grid(alpha=0.3, which="both" if log_x else "major")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, title="dashed: the paper's figure", title_fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_curves(curves: list[LearnerCurve], out: Path, **options) -> Path:
    """`accuracy_curves_figure` saved as a PNG at `out`."""
    fig = accuracy_curves_figure(curves, **options)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plain_log_ticks(axis) -> None:
    """Tick labels such as 0.5, 2 and 30 on a log axis instead of powers of ten."""
    formatter = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.1g}"[0] in "25" else ""))


def time_to_accuracy_figure(rows: list[tuple[str, dict[str, TimeToAccuracy | None]]], out: Path) -> Path:
    """Horizontal bars of CPU minutes to each target, one group per learner: `rows` pairs a learner's
    label with {target name: `curves.time_to_accuracy` result or None}. A solid bar ends where the
    target was first reached; a faint one at the CPU time spent when it was not, continued by a
    hatched one to the estimate for a curve still rising. Saved as a PNG at `out`."""
    names = list(dict.fromkeys(name for _, targets in rows for name in targets))
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.3 * len(names) * len(rows)))
    height = 0.8 / max(1, len(names))
    ends = []
    for i, (_, targets) in enumerate(rows):
        for j, name in enumerate(names):
            t, y, color = targets.get(name), i + (j - (len(names) - 1) / 2) * height, f"C{j}"
            if t is None:
                continue
            if t.reached:
                ax.barh(y, t.minutes, height=height, color=color, alpha=0.9)
                end, note = t.minutes, f"{t.minutes:.3g}"
            else:
                ax.barh(y, t.spent_minutes, height=height, color=color, alpha=0.2)
                end, note = t.spent_minutes, f"not reached (best {t.best:.1f}%)"
                if t.estimate is not None and math.isfinite(t.estimate):
                    ax.barh(
                        y,
                        t.estimate - t.spent_minutes,
                        left=t.spent_minutes,
                        height=height,
                        facecolor="none",
                        edgecolor=color,
                        hatch="///",
                    )
                    end, note = t.estimate, note + f"; estimate ~{t.estimate:.3g}"
                elif t.estimate is not None:
                    note += "; estimate off the scale"
            ends += [end, t.minutes if t.reached else t.spent_minutes]
            ax.text(end, y, " " + note, va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xscale("log")
    if ends:
        ax.set_xlim(min(ends) / 2, max(ends) * 8)  # from the first bar's start; room for the notes
    _plain_log_ticks(ax.xaxis)
    ax.set(
        xlabel="CPU minutes (training process, all threads)",
        title="time to validation accuracy (hatched: estimate)",
    )
    ax.grid(alpha=0.3, axis="x", which="both")
    handles = [Patch(color=f"C{j}", label=name) for j, name in enumerate(names)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def shots_ways_figure(runs: list[RunSummary], out: Path) -> Path | None:
    points: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
    for r in runs:
        if r.results and r.results["test"] and r.results["test"][-1]["metric"] == "accuracy":
            t = r.results["test"][-1]
            points.setdefault((r.config["algorithm"], r.results["ways"]), []).append(
                (r.results["shots"], 100 * t["mean"], 100 * t["ci95"])
            )
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (algorithm, ways), pts in sorted(points.items()):
        shots, mean, ci = zip(*sorted(pts))
        ax.errorbar(shots, mean, yerr=ci, marker="o", capsize=3, label=f"{algorithm}, {ways}-way")
    ax.set(xlabel="shots (K)", ylabel="test accuracy (%)", title="accuracy against shots and ways")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def sine_figure(runs: list[RunSummary], out: Path, device: str | None = None) -> Path | None:
    from .plots import sine_adaptation_figure
    from .train import learner_on_device

    learners = {}
    for r in runs:
        if r.config.get("benchmark") == "sine" and (r.path / "checkpoint.pt").exists() and len(learners) < 3:
            learners[_label(r)] = learner_on_device(r.path / "checkpoint.pt", device)[0]
    if not learners:
        return None
    return sine_adaptation_figure(learners, out, shots=5, steps=[1, 10])


def _run_curve(r: RunSummary) -> LearnerCurve | None:
    """A run's validation accuracy curve (None for runs validated on another metric, or never);
    validation episodes have the test shape (`test_ways`, `test_shots`)."""
    points = validation_curve(read_metrics(r.path))
    if not points:
        return None
    c = r.config
    ways, shots = c.get("test_ways") or c.get("ways"), c.get("test_shots") or c.get("shots")
    label = f"{c['algorithm']} {ways}w{shots}s"
    label = label if r.path.name == c["algorithm"] else f"{label} ({r.path.name})"
    return LearnerCurve(label, c["algorithm"], ways, shots, points)


def results_table(runs: list[RunSummary], records: list[tuple[Path, dict]] = ()) -> str:
    """The test figures of run folders, then those of results files (`read_curve_record`)."""
    rows = []
    for r in runs:
        c, res = r.config, r.results
        if not res:
            rows.append([r.path.name, c.get("algorithm"), "-", str(r.iteration), "-", "not meta-tested", "-"])
            continue
        for t in res["test"]:
            if t["metric"] == "accuracy":
                cell = f"{res['ways']}-way {res['shots']}-shot"
                ours = f"{100 * t['mean']:.2f} ± {100 * t['ci95']:.2f}"
                paper = paper_figure(c["algorithm"], res["ways"], res["shots"])
            else:
                cell = f"K={res['shots']}, {t['steps']} step(s)"
                ours = f"{t['mean']:.3f} ± {t['ci95']:.3f}" if math.isfinite(t["mean"]) else "diverges"
                paper = SINE.get(c["algorithm"], {}).get(t["steps"]) if res["shots"] == 5 else None
            seconds = (
                f"{res['train_seconds']:.0f}" if res.get("train_seconds") else "-"
            )  # unknown for old checkpoints
            rows.append(
                [
                    r.path.name,
                    c["algorithm"],
                    cell,
                    str(res["iterations"]),
                    seconds,
                    ours,
                    "-" if paper is None else str(paper),
                ]
            )
    for path, rec in records:
        tested = isinstance(rec.get("accuracy"), (int, float))
        paper = paper_figure(rec["algorithm"], rec["ways"], rec["shots"])
        rows.append(
            [
                path.stem,
                rec["algorithm"],
                f"{rec['ways']}-way {rec['shots']}-shot",
                str(rec.get("iterations", "-")),
                f"{rec['train_seconds']:.0f}" if rec.get("train_seconds") else "-",
                f"{rec['accuracy']:.2f} ± {rec.get('ci95', 0):.2f}" if tested else "not meta-tested",
                "-" if paper is None else str(paper),
            ]
        )
    return format_table(rows, ["run", "algorithm", "task", "iterations", "train s", "ours (95% CI)", "paper"])


def write_report(run_dirs: list[str | Path], out_dir: str | Path, device: str | None = None) -> Path:
    """Write the figures, `report.md` and `report.html` into `out_dir`; returns the HTML page.

    `run_dirs` are run folders (or their results.json) and results files holding a validation
    curve (`curves.read_curve_record`); classification runs get their validation accuracy drawn
    against iterations and CPU minutes with their papers' figures (`accuracy_curves`).

    `device` is where the sine figure's learners adapt (default: each checkpoint's own `device`)."""
    runs, records = [], []
    for p in map(Path, run_dirs):
        if p.is_file() and not (p.name == RESULTS and (p.parent / "config.yaml").exists()):
            records.append((p, read_curve_record(p)))
        else:  # a run folder, or its results.json
            runs.append(_load(p.parent if p.is_file() else p))
    if not runs and not records:
        raise ValueError("no runs to report on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [("Learning curves", learning_curves(runs, out_dir / "learning_curves.png"))] if runs else []
    curves = [c for c in map(_run_curve, runs) if c is not None]
    curves += [record_curve(rec) for _, rec in records if rec["curve"]]
    if curves:
        figures.append(
            (
                "Validation accuracy against iterations and CPU time",
                accuracy_curves(curves, out_dir / "accuracy_curves.png"),
            )
        )
    for title, maker, name in (
        ("Accuracy against shots and ways", shots_ways_figure, "shots_ways.png"),
        ("Sine-wave adaptation (Finn et al. 2017, figure 2)", sine_figure, "sine_adaptation.png"),
    ):
        path = maker(runs, out_dir / name, device) if maker is sine_figure else maker(runs, out_dir / name)
        if path is not None:
            figures.append((title, path))
    table = results_table(runs, records)
    md = ["# metalab report", "", "## Results", "", table, ""]
    for title, path in figures:
        md += [f"## {title}", "", f"![{title}]({path.name})", ""]
    (out_dir / "report.md").write_text("\n".join(md))
    body = [f"<h1>metalab report</h1><h2>Results</h2><pre>{html.escape(table)}</pre>"]
    for title, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        body.append(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{data}'>"
        )
    page = out_dir / "report.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>metalab report</title></head><body>"
        + "".join(body)
        + "</body></html>"
    )
    return page
