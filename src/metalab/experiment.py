"""Run folders: train, meta-test and record, list past runs, and sweep a grid of configs.

A run folder holds `config.yaml`, `metrics.jsonl`, `checkpoint.pt` and, once meta-tested,
`results.json` (every test figure with its 95% CI, the iterations and the wall-clock).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from .checkpoint import atomic_write_text
from .config import Config, ConfigError, config_from_dict, parse_override

__all__ = [
    "default_run_dir",
    "meta_test",
    "read_metrics",
    "read_results",
    "list_runs",
    "format_table",
    "expand_grid",
    "sweep",
]

RESULTS = "results.json"


def default_run_dir(c: Config, root: str | Path = "runs", stamp: str | None = None) -> Path:
    """`runs/<time>-<benchmark>-<algorithm>-<ways>w<shots>s`: sortable by time, readable by config."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    cell = f"-{c.ways}w{c.shots}s" if c.benchmark != "sine" else f"-k{c.shots}"
    return Path(root) / f"{stamp}-{c.benchmark}-{c.algorithm}{cell}"


def meta_test(result, log: Callable[[str], None] = print) -> dict:
    """Meta-test a finished run on `test_tasks` held-out tasks per step count; write results.json."""
    from .builders import build_source, load_dataset
    from .devices import place_dataset
    from .evaluate import evaluate

    c = result.config
    device = next(result.learner.parameters()).device
    dataset = place_dataset(load_dataset(c), device)
    tests = []
    for steps in c.eval_steps or [None]:
        source = build_source(c, "test", dataset, device=device)
        r = evaluate(result.learner, source, c.test_tasks, steps=steps)
        log("test " + str(r))
        tests.append(r.to_dict())
    record = {
        "algorithm": c.algorithm,
        "benchmark": c.benchmark,
        "ways": c.test_ways,
        "shots": c.test_shots,
        "iterations": result.iteration,
        "train_seconds": round(result.seconds, 1),
        "test": tests,
    }
    atomic_write_text(Path(result.run_dir) / RESULTS, json.dumps(record, indent=2) + "\n")
    return record


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_results(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / RESULTS
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class RunSummary:
    path: Path
    config: dict
    iteration: int
    results: dict | None

    @property
    def headline(self) -> str:
        if not self.results or not self.results["test"]:
            return "-"
        t = self.results["test"][-1]
        if t["metric"] == "accuracy":
            return f"{100 * t['mean']:.2f} ± {100 * t['ci95']:.2f}%"
        return f"{t['mean']:.3f} ± {t['ci95']:.3f} {'MSE' if t['metric'] == 'mse' else t['metric']}"


def list_runs(root: str | Path = "runs") -> list[RunSummary]:
    """Every run folder under `root` (recursively), oldest first."""
    runs = []
    for cfg in sorted(Path(root).rglob("config.yaml")):
        run = cfg.parent
        metrics = read_metrics(run)
        config = yaml.safe_load(cfg.read_text()) or {}
        runs.append(RunSummary(run, config, metrics[-1]["iteration"] if metrics else 0, read_results(run)))
    return runs


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A markdown table (readable as plain text too)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def runs_table(runs: list[RunSummary]) -> str:
    rows = [
        [
            str(r.path),
            r.config.get("algorithm", "?"),
            r.config.get("benchmark", "?"),
            f"{r.config.get('test_ways', '')}w{r.config.get('test_shots', '')}s"
            if r.config.get("benchmark") != "sine"
            else f"K={r.config.get('test_shots')}",
            f"{r.iteration}/{r.config.get('iterations', '?')}",
            r.headline,
        ]
        for r in runs
    ]
    return format_table(rows, ["run", "algorithm", "benchmark", "cell", "iterations", "test"])


def expand_grid(sets: list[str]) -> list[dict]:
    """`["inner_lr=0.1,0.4", "shots=1,5"]` -> the 4 combinations as override dicts."""
    axes = []
    for text in sets:
        key, _ = parse_override(text.split(",")[0])
        raw_values = text.split("=", 1)[1].split(",")
        values = [parse_override(f"{key}={v}")[1] for v in raw_values]
        if any(v is None for v in values):
            raise ConfigError(f"--set {text}: empty value in the list")
        axes.append([(key, v) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)]


def sweep(
    base: Config,
    sets: list[str],
    root: str | Path,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Train and meta-test every combination of `sets` on top of `base`, one run folder each,
    one after another; returns the summary table. Every config is validated before the first run."""
    from .devices import check_precision, resolve_device
    from .train import train

    grid = expand_grid(sets)
    configs = [config_from_dict(overrides, base).resolved() for overrides in grid]
    for c in configs:  # a device this machine lacks, or fp16 on the CPU, before any run starts
        check_precision(c.precision, resolve_device(c.device))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for i, (overrides, c) in enumerate(zip(grid, configs)):
        name = ",".join(f"{k}={v}" for k, v in overrides.items())
        slug = "".join(ch for ch in name.replace(",", "-") if ch.isalnum() or ch in "-_.")
        run_dir = Path(root) / f"{stamp}-sweep-{i:02d}-{slug}"
        log(f"[{i + 1}/{len(grid)}] {name} -> {run_dir}")
        result = train(c, run_dir, progress=progress, log=log)
        record = meta_test(result, log=log)
        t = record["test"][-1]
        value = (
            f"{100 * t['mean']:.2f} ± {100 * t['ci95']:.2f}%"
            if t["metric"] == "accuracy"
            else f"{t['mean']:.3f} ± {t['ci95']:.3f}"
        )
        rows.append(
            [*[str(v) for v in overrides.values()], value, f"{record['train_seconds']:.0f}", str(run_dir)]
        )
    metric = "accuracy" if configs[0].benchmark != "sine" else "test MSE"
    return format_table(rows, [*grid[0].keys(), metric, "seconds", "run"])
