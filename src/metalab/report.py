"""`metalab report RUN...`: learning curves, accuracy against shots and ways, the sine adaptation
figure and the results table beside the papers, as PNGs plus a markdown page and a self-contained
HTML page (images embedded) that opens without a server."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .experiment import (  # noqa: E402
    RunFolderError,
    RunSummary,
    format_table,
    read_metrics,
    read_results,
    read_run_config,
)
from .papers import SINE, paper_figure  # noqa: E402

__all__ = ["write_report"]


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
            it, mean, ci = zip(*pts)
            color = line.get_color() if line is not None else None
            ax_val.plot(it, mean, marker="o", ms=3, color=color, label=_label(r))
            ax_val.fill_between(
                it,
                [m - c for m, c in zip(mean, ci)],
                [m + c for m, c in zip(mean, ci)],
                color=color,
                alpha=0.2,
            )
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


def results_table(runs: list[RunSummary]) -> str:
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
    return format_table(rows, ["run", "algorithm", "task", "iterations", "train s", "ours (95% CI)", "paper"])


def write_report(run_dirs: list[str | Path], out_dir: str | Path, device: str | None = None) -> Path:
    """Write the figures, `report.md` and `report.html` into `out_dir`; returns the HTML page.

    `device` is where the sine figure's learners adapt (default: each checkpoint's own `device`)."""
    runs = [_load(Path(p)) for p in run_dirs]
    if not runs:
        raise ValueError("no runs to report on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [("Learning curves", learning_curves(runs, out_dir / "learning_curves.png"))]
    for title, maker, name in (
        ("Accuracy against shots and ways", shots_ways_figure, "shots_ways.png"),
        ("Sine-wave adaptation (Finn et al. 2017, figure 2)", sine_figure, "sine_adaptation.png"),
    ):
        path = maker(runs, out_dir / name, device) if maker is sine_figure else maker(runs, out_dir / name)
        if path is not None:
            figures.append((title, path))
    table = results_table(runs)
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
