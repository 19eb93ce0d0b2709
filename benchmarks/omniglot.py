"""The Omniglot table: train configs from configs/omniglot/, meta-test them the papers' way, and
write docs/results.md (our accuracy +/- 95% CI beside the paper's, with the budget that produced it).

    python benchmarks/omniglot.py train configs/omniglot/protonet_5w1s.yaml [--iterations N] [--minutes M]
    python benchmarks/omniglot.py curves [CONFIG...] [--runs DIR]
    python benchmarks/omniglot.py table

`train` runs (or resumes) the config in benchmarks/out/omniglot/<name>/, meta-tests the result on
1,000 test episodes with 15 queries per class, and also on every other cell whose config trains the
same model (e.g. protonet_20w1s from protonet_5w1s's run: the papers train one model per shot count
and test it 5- and 20-way; Reptile's non-transductive cell from reptile_5w1s's run; such a config
extends the trainer's and sets only test keys), or only those named by `--cells`; each cell's figure
goes to benchmarks/results/omniglot/<cell>.json, with the run's validation curve (accuracy and its
CI at every validation, with wall-clock and CPU seconds); `--weights float16` meta-tests the
finished model with its weights rounded to float16, as the zoo stores a model whose float32 weights
are over its limit (MANN); `--from-weights` continues such a finished zoo model, which keeps no
optimizer state, from its weights with fresh optimizer moments. `curves` refreshes those curves from
run folders still training, without training or testing. `table` reads those files and writes
docs/results.md, docs/omniglot_curves.png and docs/omniglot_time_to_accuracy.png. Budgets on 2 CPU
cores are far below the papers'; the tables say how many iterations and how much wall-clock and CPU
time each figure took.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import sys
import textwrap
import time
from pathlib import Path

import torch

from metalab.builders import build_source, load_dataset
from metalab.checkpoint import load_checkpoint
from metalab.config import config_from_dict, load_config
from metalab.curves import ESTIMATE_METHOD, record_curve, run_curve, time_to_accuracy
from metalab.evaluate import confidence_interval, evaluate
from metalab.experiment import read_metrics, read_run_config
from metalab.papers import CITATIONS, MANN_BY_INSTANCE, paper_figure
from metalab.report import accuracy_curves, time_to_accuracy_figure
from metalab.run import BEST, best_note, tested_best
from metalab.train import train
from metalab.zoo import ZooError, round_weights, seed_from_weights, seed_run_folder

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "omniglot"
OUT = ROOT / "benchmarks" / "out" / "omniglot"
RESULTS = ROOT / "benchmarks" / "results" / "omniglot"
ORDER = [
    "maml",
    "fomaml",
    "metasgd",
    "mamlpp",
    "anil",
    "reptile",
    "protonet",
    "matching",
    "relation",
    "siamese",
    "mann",
    "metanet",
    "lstm_meta",
    "baseline",
    "baseline_pp",
]
TEST_ONLY = {
    "test_ways",
    "test_shots",
    "test_queries",
    "test_tasks",
    "eval_steps",
    "eval_inner_steps",
    "transductive",  # Reptile: how its test queries are answered, not how it trains
    "eval_inner_batch",  # Reptile: the mini-batches of its test-time inner loop
}


# The transfer baselines train on ordinary mini-batches of the base classes; their ways / shots /
# queries only shape validation episodes, so one pre-trained model serves every test cell.
EPISODE_SHAPE = {"ways", "shots", "queries"}


# Options a cell may set that its paper does not have, with the paper's value: a record names the ones
# that differ ("variant"), and the tables show them beside the method.
NOT_IN_PAPER = {"cosine_scale": 1.0, "learn_cosine_scale": False}


def _variant(cell) -> str:
    return ", ".join(
        f"{key} {getattr(cell.options, key):g}" if not isinstance(paper, bool) else key
        for key, paper in NOT_IN_PAPER.items()
        if getattr(cell.options, key, paper) != paper
    )


def _training_part(config) -> dict:
    # Learners that pre-train on plain mini-batches see the episode shape at validation only.
    c = config.resolved()
    ignored = TEST_ONLY | EPISODE_SHAPE if c.spec().learner.training_source == "batches" else TEST_ONLY
    return {k: v for k, v in c.to_dict().items() if k not in ignored}


def _by_instance(learner, source, episodes: int) -> dict[str, list[float]]:
    """MANN's table: accuracy at the k-th presentation of a class, mean and 95% CI over episodes."""
    per_episode: dict[int, list[float]] = {}
    with torch.no_grad():
        for i in range(episodes):
            for k, acc in learner.accuracy_by_instance(source.sample(1), seed=i).items():
                per_episode.setdefault(k, []).append(acc)
    out = {}
    for k, values in sorted(per_episode.items()):
        mean, ci = confidence_interval(torch.tensor(values))
        out[str(k)] = [round(100 * mean, 2), round(100 * ci, 2)]
    return out


def _curve_fields(run_dir: Path) -> dict:
    """A run's validation curve (`metalab.curves`) and the shape of its validation episodes, which
    for a cell tested on a model trained by another config differs from the cell's."""
    config = read_run_config(run_dir)
    return {
        "val_ways": config.get("test_ways") or config.get("ways"),
        "val_shots": config.get("test_shots") or config.get("shots"),
        "curve": run_curve(run_dir),
    }


def _device_name(learner) -> str:
    """Where the model was trained and tested: a CUDA GPU's name, else the device type ("cpu", "mps")."""
    device = next(learner.parameters()).device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def cmd_train(args) -> None:
    path = Path(args.config).resolve()
    config = load_config(path)
    planned = config.iterations  # the config's own budget, whatever --iterations sets
    overrides = {
        k: v
        for k, v in {
            "iterations": args.iterations,
            "max_minutes": args.minutes,
            "threads": args.threads,
            "data_dir": args.data_dir,
            "val_every": args.val_every,
        }.items()
        if v is not None
    }
    config = config_from_dict(overrides, config)
    run_dir = OUT / path.stem
    if args.from_weights:  # a finished, weights-only zoo model of this config, trained further
        try:
            seeded = seed_from_weights(run_dir, config, path.stem)
        except ZooError as e:
            raise SystemExit(f"omniglot.py: error: --from-weights: {e}") from None
    else:
        seeded = seed_run_folder(run_dir, config, path.stem)  # an unfinished zoo model of this config
    if seeded:
        print(seeded, flush=True)
    resume = (run_dir / "checkpoint.pt").exists()
    # Every cell whose config trains this very model (same keys but the test ones), found before
    # training so that a bad config elsewhere fails now, not after an hour of training.
    cells = [path] + [
        p
        for p in sorted(CONFIGS.glob("*.yaml"))
        if p != path and _training_part(config_from_dict(overrides, load_config(p))) == _training_part(config)
    ]
    if args.cells:
        unknown = sorted(set(args.cells) - {p.stem for p in cells})
        if unknown:
            raise SystemExit(
                f"omniglot.py: error: {', '.join(unknown)}: not a cell of the model {path.stem} trains "
                f"(its cells: {', '.join(p.stem for p in cells)})"
            )
        cells = [p for p in cells if p.stem in args.cells]
    result = train(config, run_dir, resume=resume, progress=sys.stderr.isatty())
    best = _load_best(result, planned)
    if args.weights == "float16":  # as the zoo stores a finished model whose float32 weights are too large
        if result.iteration < config.iterations:
            raise SystemExit(
                f"omniglot.py: error: --weights float16 meta-tests a finished model; {path.stem} stopped "
                f"at iteration {result.iteration} of {config.iterations} (its checkpoint is kept: run "
                "again to resume)"
            )
        round_weights(result.learner, torch.float16)
    dataset = load_dataset(result.config)
    own_eval_batch = getattr(result.learner, "eval_inner_batch", None)
    for cell_path in cells:
        cell = config_from_dict(overrides, load_config(cell_path)).resolved()
        if hasattr(result.learner, "transductive"):  # Reptile: how this cell answers its queries
            result.learner.transductive = getattr(cell.options, "transductive", True)
        eval_batch = getattr(cell.options, "eval_inner_batch", None)
        if hasattr(result.learner, "eval_inner_batch"):  # Reptile: this cell's test-time mini-batches
            result.learner.eval_inner_batch = own_eval_batch if eval_batch is None else eval_batch
        t0 = time.perf_counter()
        r = evaluate(
            result.learner,
            build_source(cell, "test", dataset),
            cell.test_tasks,
            steps=(cell.eval_steps or [None])[0],
        )
        record = {
            "cell": cell_path.stem,
            "algorithm": cell.algorithm,
            "ways": cell.test_ways,
            "shots": cell.test_shots,
            "accuracy": round(100 * r.mean, 2),
            "ci95": round(100 * r.ci95, 2),
            "test_episodes": r.tasks,
            "test_queries": cell.test_queries,
            "iterations": result.iteration,
            "planned_iterations": planned,
            "train_seconds": round(result.seconds),
            "train_cpu_seconds": round(result.cpu_seconds),
            "eval_seconds": round(time.perf_counter() - t0),
            "trained_by": path.stem,
            "threads": result.config.threads or torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, torch {torch.__version__}",
            "device": _device_name(result.learner),
        }
        if args.weights == "float16":
            record["weights"] = "float16"
        if best is not None:
            record["best_iteration"] = best
        if getattr(cell.options, "transductive", True) is False:
            record["transductive"] = False
        if eval_batch is not None:
            record["eval_inner_batch"] = eval_batch
        if _variant(cell):
            record["variant"] = _variant(cell)
        record.update(_curve_fields(run_dir))
        if hasattr(result.learner, "accuracy_by_instance"):
            record["by_instance"] = _by_instance(
                result.learner, build_source(cell, "test", dataset), cell.test_tasks
            )
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{cell_path.stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(
            f"{cell_path.stem}: {r} after {result.iteration} iterations "
            f"({result.seconds / 60:.0f} min of training)"
            + (
                f", the weights of iteration {best} ({BEST}, the best validation)" if best is not None else ""
            ),
            flush=True,
        )


def _load_best(result, planned: int) -> int | None:
    """Load best.pt's weights into `result.learner` where they are the ones to meta-test
    (`run.tested_best`: keep_best, and the run at the cell config's `planned` iterations); returns
    their iteration, else None (the latest weights stay)."""
    best = tested_best(result.config.keep_best, result.iteration, result.best_iteration, planned)
    if best is None:
        return None
    result.learner.load_state_dict(load_checkpoint(Path(result.run_dir) / BEST)["learner"])
    return best


def _same_run(stored: list[dict], curve: list[dict]) -> bool:
    """Whether `curve` continues the run `stored` was read from: it reaches as far and agrees at
    every validation point the two share (a run restarted from scratch draws other figures)."""
    if not stored:
        return False
    if curve[-1]["iteration"] < stored[-1]["iteration"]:
        return False
    now = {p["iteration"]: p["val_accuracy"] for p in curve}
    return all(now.get(p["iteration"]) == p["val_accuracy"] for p in stored)


def cmd_curves(args) -> int:
    """Refresh the cells' `curve` from their run folders without training or testing: the curve of
    a run still going, beside the figure it was tested on. A cell tested on another run (a retrained
    model, or a record older than its curve) keeps its record unless --new-run replaces it with a
    curve-only one (no test figure until `train` tests the run)."""
    runs = Path(args.runs)
    configs = [Path(c) for c in args.configs] or [
        p for p in sorted(CONFIGS.glob("*.yaml")) if (runs / p.stem).is_dir()
    ]
    status = 0
    for path in configs:
        run_dir = runs / path.stem
        if not (run_dir / "config.yaml").exists():
            print(f"{path.stem}: no run folder at {run_dir}", file=sys.stderr)
            status = 1
            continue
        fields = _curve_fields(run_dir)
        if not fields["curve"]:
            print(f"{path.stem}: no validation point yet in {run_dir / 'metrics.jsonl'}")
            continue
        last = read_metrics(run_dir)[-1]
        cells = [path.stem] + [
            p.stem
            for p in sorted(RESULTS.glob("*.json"))
            if p.stem != path.stem and json.loads(p.read_text()).get("trained_by") == path.stem
        ]
        for cell in cells:
            out = RESULTS / f"{cell}.json"
            record = json.loads(out.read_text()) if out.exists() else None
            if (
                record is not None
                and "accuracy" in record
                and not _same_run(record.get("curve"), fields["curve"])
            ):
                if not args.new_run:
                    print(
                        f"{cell}: kept: {run_dir} is not the run its figure was tested on (or the record "
                        "predates curves); --new-run replaces the record with this run's curve",
                        file=sys.stderr,
                    )
                    status = 1
                    continue
                record = None
            if record is None:  # a curve-only record: what the run has done, no test figure yet
                cell_config = load_config(CONFIGS / f"{cell}.yaml").resolved()
                run_config = read_run_config(run_dir)
                record = {
                    "cell": cell,
                    "algorithm": cell_config.algorithm,
                    "ways": cell_config.test_ways,
                    "shots": cell_config.test_shots,
                    "planned_iterations": load_config(path).iterations,
                    "trained_by": path.stem,
                    "threads": run_config.get("threads"),
                    "machine": f"{platform.machine()}, torch {torch.__version__}",
                }
            if "accuracy" not in record:
                record.update(
                    iterations=last["iteration"],
                    train_seconds=round(last["seconds"]),
                    train_cpu_seconds=None if last.get("cpu_seconds") is None else round(last["cpu_seconds"]),
                    date=time.strftime("%Y-%m-%d"),
                )
            record.update(fields)
            RESULTS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
            end = fields["curve"][-1]
            print(
                f"{cell}: curve of {len(fields['curve'])} validation points to iteration "
                f"{end['iteration']:,} ({100 * end['val_accuracy']:.2f}%)"
            )
    return status


def _queries(record: dict) -> str:
    q = record.get("test_queries", 15)
    return "" if q == 15 else f", {q} {'query' if q == 1 else 'queries'} per class"


def _setting(record: dict) -> str:
    return ", non-transductive" if record.get("transductive") is False else ""


def _threads(record: dict) -> str:
    n = record.get("threads", 1)
    return "torch's default threads" if n is None else f"{n} thread" + ("s" if n != 1 else "")


def _of_planned(iterations: int, r: dict) -> str:
    """The iterations cell, "8,500 of 75,000"; a model trained past its config's budget (each sitting
    set its own with --iterations) says so: "89,160 (past the config's 6,250)"; one tested on its
    best validation weights (keep_best) names their iteration: "50,000 of 50,000 (best.pt: 18,000)"."""
    planned = r["planned_iterations"]
    text = (
        f"{iterations:,} (past the config's {planned:,})"
        if iterations > planned
        else f"{iterations:,} of {planned:,}"
    )
    return text + (best_note(r.get("best_iteration")) if iterations == r.get("iterations") else "")


def _cost(minutes: float | None, cpu_seconds: float | None, record: dict) -> str:
    """Wall-clock, CPU time ("-" for records older than CPU time) and torch threads."""
    cpu = "-" if cpu_seconds is None else f"{cpu_seconds / 60:.0f}"
    where = f", latest sitting on an {record['device']}" if _on_gpu(record) else ""
    return f"{minutes:.0f} min, {cpu} CPU-min, {_threads(record)}{where}"


def _on_gpu(record: dict) -> bool:
    """Whether the record's latest sitting ran on a GPU (its CPU time is then not this machine's)."""
    return record.get("device") not in (None, "cpu")


def _split(r: dict) -> str:
    """The Omniglot class split the row's cell tests on, as its config names it."""
    return _cell_split(r["cell"])


@functools.cache
def _cell_config(cell: str):
    """The cell's config as its file reads (None where it has none), read once per cell: the tables
    ask for every row several times."""
    path = CONFIGS / f"{cell}.yaml"
    return load_config(path) if path.exists() else None


def _cell_split(cell: str) -> str:
    c = _cell_config(cell)
    return c.split if c is not None else "vinyals"


def _cell_model(cell: str) -> str:
    """ "authors' model" where the cell's config builds the MAML authors' Omniglot model (strided
    Conv-4, their initialisation, batch norm with a shift only and kept out of the inner loop), with
    its step schedule where it has one; else ""."""
    c = _cell_config(cell)
    if c is None:
        return ""
    options = c.options if isinstance(c.options, dict) else c.options.to_dict()  # read, not resolved
    authors = (
        c.downsample == "stride"
        and c.init == "maml"
        and not c.norm_scale
        and "norm" in (options.get("inner_exclude") or [])
    )
    if not authors:
        return ""
    if c.lr_schedule == "step":  # the runs on this model differ in when the outer rate falls
        return f"authors' model, rate /{1 / c.lr_decay_factor:g} every {c.lr_decay_every:,}"
    return "authors' model"


def _method(r: dict) -> str:
    """The learner, the options outside its paper that its cell sets, the MAML authors' model where
    it runs on it, and its split where it is not the Vinyals split."""
    notes = [r["variant"]] if r.get("variant") else []
    model = _cell_model(r["cell"])
    if model:
        notes.append(model)
    split = _split(r)
    if split != "vinyals":
        notes.append(f"{split} split")
    return r["algorithm"] + (f" ({', '.join(notes)})" if notes else "")


def _learner_order(r: dict) -> tuple:
    rank = ORDER.index(r["algorithm"]) if r["algorithm"] in ORDER else 99
    return (rank, r["ways"], r["shots"], r.get("variant", ""), _split(r) != "vinyals", _cell_model(r["cell"]))


CURVES_Y_MIN = 75.0  # the curves plot's lowest accuracy (%), so that the runs near 100% stay apart


def _curves_section(rows: list[dict]) -> list[str]:
    """Learning curves and time to accuracy of every trained model (not the cells that test another
    config's model): docs/omniglot_curves.png, docs/omniglot_time_to_accuracy.png and the table."""
    trained = [r for r in rows if r["trained_by"] == r["cell"]]
    lines = [
        "## Learning curves and time to accuracy",
        "",
        "Validation accuracy (mean over the config's `val_tasks` validation episodes, with its 95% CI)",
        "against the CPU time of the training process (all its threads, carried across resumptions),",
        "measured every `val_every` iterations. A figure below its paper is read off its curve: flat",
        "or still rising.",
        "",
    ]
    one_shot = [r for r in trained if r.get("curve") and (r["ways"], r["shots"]) == (5, 1)]
    figure = ROOT / "docs" / "omniglot_curves.png"
    if one_shot:
        curves = [record_curve(r, label=_method(r)) for r in one_shot]
        accuracy_curves(
            curves,
            figure,
            axes=("cpu",),
            log_x=True,
            title="Omniglot 5-way 1-shot: validation accuracy",
            y_min=CURVES_Y_MIN,
        )
        below = [c.label for c in curves if any(100 * p["val_accuracy"] < CURVES_Y_MIN for p in c.points)]
        if below:
            lines += [
                f"The axis starts at {CURVES_Y_MIN:g}%; points of {', '.join(below)} lie below it",
                "(each run's results file has them all).",
                "",
            ]
        lines += [f"![5-way 1-shot validation curves]({figure.name})", ""]
    else:
        lines += ["No run in the table has a recorded curve yet (`train` records one).", ""]
    lines += [
        *textwrap.wrap(
            "CPU minutes until the validation accuracy first reached 95% and the paper's figure (at "
            "the first validation point at or above it); where it was not reached, the best "
            "validation accuracy and the CPU time spent, and for a curve still rising an estimate: "
            f"{ESTIMATE_METHOD}. Validation accuracy, not the meta-test figure of the table above. The last "
            "columns give the curve's last point; a run refreshed by `python benchmarks/omniglot.py "
            'curves` while still training can be past the table\'s tested iteration. "-": no curve '
            "recorded for that run. A row whose latest sitting ran on a GPU gets no estimate and is "
            "left out of the plot: its CPU minutes are not this machine's.",
            100,
        ),
        "",
        "| method | validation task | to 95% | to the paper's figure | iterations (of planned) "
        "| training wall-clock, CPU time, torch threads | config |",
        "|---|---|---|---|---|---|---|",
    ]
    plotted = []
    for r in trained:
        curve = r.get("curve") or []
        ways, shots = r.get("val_ways", r["ways"]), r.get("val_shots", r["shots"])
        paper = paper_figure(r["algorithm"], ways, shots)
        t95 = time_to_accuracy(curve, 95.0)
        tpaper = time_to_accuracy(curve, paper) if paper is not None else None
        if _on_gpu(r):  # no extrapolation along CPU minutes that a GPU sitting compressed
            t95, tpaper = (t and dataclasses.replace(t, estimate=None) for t in (t95, tpaper))
        if curve:
            end = curve[-1]
            iterations, cost = end["iteration"], _cost(end["seconds"] / 60, end["cpu_seconds"], r)
        else:
            iterations = r["iterations"]
            cost = _cost(r["train_seconds"] / 60, r.get("train_cpu_seconds"), r)
        to_paper = "no paper figure" if paper is None else ("-" if tpaper is None else tpaper.text())
        lines.append(
            f"| {_method(r)} | {ways}-way {shots}-shot | {'-' if t95 is None else t95.text()} | "
            f"{'' if paper is None else f'{paper}%: '}{to_paper} | "
            f"{_of_planned(iterations, r)} | {cost} | `configs/omniglot/{r['cell']}.yaml` |"
        )
        if t95 is not None and not _on_gpu(r):
            targets = {"95%": t95}
            if paper is not None:
                targets["the paper's figure"] = tpaper
            plotted.append((f"{_method(r)} {ways}w{shots}s", targets))
    if plotted:
        out = time_to_accuracy_figure(plotted, ROOT / "docs" / "omniglot_time_to_accuracy.png")
        lines += ["", f"![CPU minutes to 95% and to the paper's figure]({out.name})"]
    return lines + [""]


def cmd_table(args) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    rows.sort(key=_learner_order)
    lines = [
        "# Results on Omniglot",
        "",
        "Produced by `python benchmarks/omniglot.py train CONFIG` (one per trained model) and",
        "`python benchmarks/omniglot.py table`; every figure is the mean accuracy over the stated number of",
        "meta-test episodes (15 queries per class unless the row says otherwise) on the 423 meta-test",
        "characters x 4 rotations of the Vinyals split (whole alphabets unseen in meta-training) or, where",
        'the method says "random split", of the "random" split (characters drawn without regard to',
        "alphabet, as the code of MAML, MAML++, Relation Networks and Reptile draws them; docs/omniglot.md),",
        "each with its 95% confidence interval. Training ran on this project's 2-core CPU machine, "
        "so most budgets",
        "are a small fraction of the papers'; the columns say what each figure cost. A row whose "
        "latest sitting",
        "ran on a GPU says so: its CPU time then includes the GPU process's (the host thread that "
        "launches the",
        "kernels), which is not this machine's cost.",
        "",
        "| method | task | ours (95% CI) | paper | iterations (of planned) "
        "| training wall-clock, CPU time, torch threads | config |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = paper_figure(r["algorithm"], r["ways"], r["shots"], transductive=r.get("transductive", True))
        paper_text = f"{paper} ({CITATIONS.get(r['algorithm'], '')})" if paper is not None else "-"
        source = "" if r["trained_by"] == r["cell"] else f" (model trained by {r['trained_by']})"
        ours = (
            f"{r['accuracy']:.2f} ± {r['ci95']:.2f} ({r['test_episodes']} episodes{_queries(r)})"
            if "accuracy" in r
            else "not meta-tested yet"
        )
        lines.append(
            f"| {_method(r)} | {r['ways']}-way {r['shots']}-shot{_setting(r)} | {ours} | {paper_text} | "
            f"{_of_planned(r['iterations'], r)} | "
            f"{_cost(r['train_seconds'] / 60, r.get('train_cpu_seconds'), r)} | "
            f"`configs/omniglot/{r['cell']}.yaml`{source} |"
        )
    lines += ["", *_curves_section(rows)]
    for r in rows:
        if "by_instance" not in r:
            continue
        ks = [k for k in ("1", "2", "3", "4", "5", "10") if k in r["by_instance"]]
        lines += [
            "",
            f"## {r['algorithm']}: accuracy by instance "
            f"({r['ways']} classes, `configs/omniglot/{r['cell']}.yaml`)",
            "",
            "Accuracy at the k-th presentation of a class within an episode sequence, "
            f"over {r['test_episodes']:,}",
            f"meta-test episodes, after {r['iterations']:,} iterations "
            f"({r['train_seconds'] / 60:.0f} min of training);",
            f"the paper's figures are {CITATIONS['mann']}, table 1 (MANN, LSTM controller).",
            "",
            "| instance | " + " | ".join(ks) + " |",
            "|---|" + "---|" * len(ks),
            "| ours (95% CI) | "
            + " | ".join(f"{r['by_instance'][k][0]:.1f} ± {r['by_instance'][k][1]:.1f}" for k in ks)
            + " |",
            "| paper | " + " | ".join(f"{MANN_BY_INSTANCE[int(k)]}" for k in ks) + " |",
        ]
    if args.notes and Path(args.notes).exists():
        lines += ["", Path(args.notes).read_text().strip()]
    out = ROOT / "docs" / "results.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(rows)} rows)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("--iterations", type=int, help="budget (default: the config's)")
    t.add_argument("--minutes", type=float, help="stop training after this much wall-clock (resumable)")
    t.add_argument("--threads", type=int)
    t.add_argument("--data-dir")
    t.add_argument("--val-every", type=int, help="validate every N iterations (default: the config's)")
    t.add_argument(
        "--cells",
        nargs="+",
        metavar="CELL",
        help="meta-test only these cells of the model (config stems; default: every cell it serves); "
        "with --iterations at the checkpoint's iteration, a cell is meta-tested without training",
    )
    t.add_argument(
        "--weights",
        choices=("float32", "float16"),
        default="float32",
        help="meta-test the finished model with its weights rounded to this precision (float16: as the "
        "zoo stores a model whose float32 weights are over its limit; default: %(default)s)",
    )
    t.add_argument(
        "--from-weights",
        action="store_true",
        help="train further the zoo's finished model of this config, which keeps no optimizer state "
        "(MANN): from its weights, with fresh optimizer moments; give --iterations past its own",
    )
    cv = sub.add_parser("curves", help="refresh the cells' validation curves from their run folders")
    cv.add_argument(
        "configs", nargs="*", help="configs whose runs to read (default: every one with a run folder)"
    )
    cv.add_argument("--runs", default=str(OUT), help="folder of the run folders (default: %(default)s)")
    cv.add_argument(
        "--new-run",
        action="store_true",
        help="replace a cell tested on another run by a curve-only record of this one",
    )
    tb = sub.add_parser("table")
    tb.add_argument(
        "--notes",
        default=str(ROOT / "benchmarks" / "results" / "omniglot_notes.md"),
        help="markdown appended under the table",
    )
    args = p.parse_args()
    return {"train": cmd_train, "curves": cmd_curves, "table": cmd_table}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
