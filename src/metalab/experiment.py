"""Run folders: train, meta-test and record, list past runs, and sweep a grid of configs.

A run folder holds `config.yaml`, `metrics.jsonl`, `checkpoint.pt` and, once meta-tested,
`results.json` (every test figure with its 95% CI, the iterations and the wall-clock).
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from . import run_folder
from .checkpoint import WriteError, atomic_write_text, load_checkpoint
from .config import Config, ConfigError, config_from_dict, parse_override, read_yaml, yaml_problem

__all__ = [
    "default_run_dir",
    "meta_test",
    "RunFolderError",
    "read_metrics",
    "read_results",
    "read_run_config",
    "list_runs",
    "run_details",
    "figure_cell",
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


def meta_test(result, log: Callable[[str], None] = print, *, progress: bool = False) -> dict:
    """Meta-test a run on `test_tasks` held-out tasks per step count; write results.json.

    Each line names the inner steps (learners with an inner loop) and the weights' iteration: with
    `keep_best`, a run that trained its config's iterations is tested on best.pt's weights
    (`run.tested_best`); `progress` shows a progress bar per step count (on a terminal)."""
    from .builders import build_source, load_dataset
    from .devices import place_dataset
    from .evaluate import evaluate
    from .run import BEST, tested_best
    from .threads import threads_for

    c = result.config
    learner, iteration = result.learner, result.iteration
    best = tested_best(c.keep_best, iteration, getattr(result, "best_iteration", None), c.iterations)
    if best is not None:  # the weights of the best validation, from best.pt
        learner = copy.deepcopy(result.learner)
        learner.load_state_dict(load_checkpoint(Path(result.run_dir) / BEST)["learner"])
        iteration = best
    device = next(learner.parameters()).device
    dataset = place_dataset(load_dataset(c), device)
    tests = []
    at = f"at iteration {iteration}" + (
        f" ({BEST}, the best validation)" if iteration != result.iteration else ""
    )
    with threads_for(c.threads, learner):
        for steps in c.eval_steps or [None]:
            source = build_source(c, "test", dataset, device=device)
            r = evaluate(learner, source, c.test_tasks, steps=steps, progress=progress)
            log(f"test {r} {at}")
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
    if iteration != result.iteration:
        record["weights"] = {"file": BEST, "iteration": iteration}
    try:
        atomic_write_text(Path(result.run_dir) / RESULTS, json.dumps(record, indent=2) + "\n")
    except WriteError as e:
        raise WriteError(f"{e}; the checkpoint (iteration {result.iteration}) is intact", e.errno) from None
    return record


class RunFolderError(ValueError):
    """A file of a run folder that cannot be read as what it should hold; the message names it."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RunFolderError(f"{path} is not UTF-8 text ({e.reason})") from None
    except IsADirectoryError:
        raise RunFolderError(f"{path} is a directory") from None


def read_run_config(run_dir: str | Path) -> dict:
    """A run folder's config.yaml as a dict (`RunFolderError` where it is not one)."""
    path = Path(run_dir) / "config.yaml"
    try:
        values = read_yaml(_read_text(path))
    except yaml.YAMLError as e:
        raise RunFolderError(f"{path} is not valid YAML ({yaml_problem(e)})") from None
    except ConfigError as e:  # a key given twice
        raise RunFolderError(f"{path}: {e}") from None
    except RecursionError:
        raise RunFolderError(f"{path} is nested too deeply to be a config") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RunFolderError(
            f"{path} is a YAML {type(values).__name__}, not a mapping of config keys to values"
        )
    return values


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run folder's metrics.jsonl (a torn last line, left by a process killed
    while writing it, is skipped); a line that is not a record is a `RunFolderError` naming it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in _read_text(path).splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        at = record.get("iteration") if isinstance(record, dict) else None
        if not isinstance(at, int) or isinstance(at, bool):
            if number == len(lines) and record is None:
                break  # torn by an interrupted write
            raise RunFolderError(f"{path}, line {number} is not a metrics record: {line[:60]!r}")
        records.append(record)
    return records


def _is_best_weights(weights) -> bool:
    """keep_best's results field, `{"file": "best.pt", "iteration": N}`."""
    return isinstance(weights, dict) and isinstance(weights.get("iteration"), int)


def read_results(run_dir: str | Path) -> dict | None:
    """A run folder's results.json, checked to hold what `meta_test` writes (None if absent)."""
    path = Path(run_dir) / RESULTS
    if not path.exists():
        return None
    try:
        record = json.loads(_read_text(path))
    except ValueError as e:
        raise RunFolderError(f"{path} is not valid JSON ({e})") from None
    tests = record.get("test") if isinstance(record, dict) else None
    fields = {"metric": str, "mean": (int, float), "ci95": (int, float)}
    if not (
        isinstance(tests, list)
        and all(isinstance(record.get(k), int) for k in ("ways", "shots", "iterations"))
        and ("weights" not in record or _is_best_weights(record["weights"]))
        and all(
            isinstance(t, dict) and all(isinstance(t.get(k), kind) for k, kind in fields.items())
            for t in tests
        )
    ):
        raise RunFolderError(
            f"{path} is not a results record (ways, shots, iterations and a list of test figures, each "
            "with its metric, mean and ci95; keep_best's weights with their iteration)"
        )
    return record


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
        return figure_cell(self.results["test"][-1], unit=True)


def figure_cell(t: dict, *, unit: bool = False) -> str:
    """A results.json test entry as a table cell: "97.40 ± 0.30% (5 steps)", "0.366 ± 0.033 MSE
    (10 steps)", "-13.7 ± 0.9 return (1 step)"; no step count for learners without an inner loop."""
    steps = t.get("steps")
    after = f" ({steps} step{'s' if steps != 1 else ''})" if steps is not None else ""
    if t["metric"] == "accuracy":
        return f"{100 * t['mean']:.2f} ± {100 * t['ci95']:.2f}%{after}"
    name = "MSE" if t["metric"] == "mse" else t["metric"]
    return f"{t['mean']:.3f} ± {t['ci95']:.3f}{' ' + name if unit else ''}{after}"


def list_runs(root: str | Path = "runs") -> list[RunSummary]:
    """Every run folder under `root` (recursively), oldest first."""
    runs = []
    for cfg in sorted(Path(root).rglob("config.yaml")):
        run = cfg.parent
        metrics = read_metrics(run)
        config = read_run_config(run)
        runs.append(RunSummary(run, config, metrics[-1]["iteration"] if metrics else 0, read_results(run)))
    return runs


def run_details(run: RunSummary) -> str:
    """What `metalab runs RUN` adds for one run folder: its class split and every test figure."""
    lines = run_folder.describe_split(run.path, run.config)
    if run.results:
        at = run.results.get("iterations")
        for t in run.results["test"]:
            lines.append(f"test at iteration {at}: {figure_cell(t, unit=True)}, {t['tasks']} tasks")
    return "\n".join(lines)


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
        with run_folder.hold(run_dir):  # one writer from training through results.json
            result = train(c, run_dir, progress=progress, log=log)
            record = meta_test(result, log=log, progress=progress)
        value = figure_cell(record["test"][-1])
        rows.append(
            [*[str(v) for v in overrides.values()], value, f"{record['train_seconds']:.0f}", str(run_dir)]
        )
    metric = "accuracy" if configs[0].benchmark != "sine" else "test MSE"
    return format_table(rows, [*grid[0].keys(), metric, "seconds", "run"])
