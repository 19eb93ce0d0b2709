"""The Omniglot table: train configs from configs/omniglot/, meta-test them the papers' way, and
write docs/results.md (our accuracy +/- 95% CI beside the paper's, with the budget that produced it).

    python benchmarks/omniglot.py train configs/omniglot/protonet_5w1s.yaml [--iterations N] [--minutes M]
    python benchmarks/omniglot.py table

`train` runs (or resumes) the config in benchmarks/out/omniglot/<name>/, meta-tests the result on
1,000 test episodes with 15 queries per class, and also on every other cell whose config trains the
same model (e.g. protonet_20w1s from protonet_5w1s's run: the papers train one model per shot count
and test it 5- and 20-way); each cell's figure goes to benchmarks/results/omniglot/<cell>.json.
`table` reads those files and writes docs/results.md. Budgets on 2 CPU cores are far below the
papers'; the table says how many iterations and how much wall-clock each figure took.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from metalab.builders import build_source, load_dataset
from metalab.config import config_from_dict, load_config
from metalab.evaluate import confidence_interval, evaluate
from metalab.papers import CITATIONS, MANN_BY_INSTANCE, paper_figure
from metalab.train import train
from metalab.zoo import seed_run_folder

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "omniglot"
OUT = ROOT / "benchmarks" / "out" / "omniglot"
RESULTS = ROOT / "benchmarks" / "results" / "omniglot"
TEST_ONLY = {"test_ways", "test_shots", "test_queries", "test_tasks", "eval_steps", "eval_inner_steps"}


# The transfer baselines train on ordinary mini-batches of the base classes; their ways / shots /
# queries only shape validation episodes, so one pre-trained model serves every test cell.
EPISODE_SHAPE = {"ways", "shots", "queries"}


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


def cmd_train(args) -> None:
    path = Path(args.config).resolve()
    config = load_config(path)
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
    result = train(config, run_dir, resume=resume, progress=sys.stderr.isatty())
    dataset = load_dataset(result.config)
    for cell_path in cells:
        cell = config_from_dict(overrides, load_config(cell_path)).resolved()
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
            "planned_iterations": load_config(path).iterations,
            "train_seconds": round(result.seconds),
            "train_cpu_seconds": round(result.cpu_seconds),
            "eval_seconds": round(time.perf_counter() - t0),
            "trained_by": path.stem,
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, torch {torch.__version__}",
        }
        if hasattr(result.learner, "accuracy_by_instance"):
            record["by_instance"] = _by_instance(
                result.learner, build_source(cell, "test", dataset), cell.test_tasks
            )
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{cell_path.stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(
            f"{cell_path.stem}: {r} after {result.iteration} iterations "
            f"({result.seconds / 60:.0f} min of training)",
            flush=True,
        )


def _queries(record: dict) -> str:
    q = record.get("test_queries", 15)
    return "" if q == 15 else f", {q} queries per class"


def _threads(record: dict) -> str:
    n = record.get("threads", 1)
    return f"{n} thread" + ("s" if n != 1 else "")


def cmd_table(args) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    order = [
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
    rows.sort(
        key=lambda r: (order.index(r["algorithm"]) if r["algorithm"] in order else 99, r["ways"], r["shots"])
    )
    lines = [
        "# Results on Omniglot",
        "",
        "Produced by `python benchmarks/omniglot.py train CONFIG` (one per trained model) and",
        "`python benchmarks/omniglot.py table`; every figure is the mean accuracy over the stated number of",
        "meta-test episodes (15 queries per class unless the row says otherwise) "
        "on the 423 Vinyals meta-test",
        "characters x 4 rotations,",
        "with its 95% confidence interval. Training ran on this project's 2-core CPU machine, "
        "so most budgets",
        "are a small fraction of the papers'; the columns say what each figure cost.",
        "",
        "| method | task | ours (95% CI) | paper | iterations (of planned) "
        "| training wall-clock, torch threads | config |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = paper_figure(r["algorithm"], r["ways"], r["shots"])
        paper_text = f"{paper} ({CITATIONS.get(r['algorithm'], '')})" if paper is not None else "-"
        source = "" if r["trained_by"] == r["cell"] else f" (model trained by {r['trained_by']})"
        lines.append(
            f"| {r['algorithm']} | {r['ways']}-way {r['shots']}-shot | {r['accuracy']:.2f} ± {r['ci95']:.2f} "
            f"({r['test_episodes']} episodes{_queries(r)}) | {paper_text} | "
            f"{r['iterations']:,} of {r['planned_iterations']:,} | "
            f"{r['train_seconds'] / 60:.0f} min, {_threads(r)} | "
            f"`configs/omniglot/{r['cell']}.yaml`{source} |"
        )
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
    tb = sub.add_parser("table")
    tb.add_argument(
        "--notes",
        default=str(ROOT / "benchmarks" / "results" / "omniglot_notes.md"),
        help="markdown appended under the table",
    )
    args = p.parse_args()
    {"train": cmd_train, "table": cmd_table}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
