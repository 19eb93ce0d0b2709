"""Is a learner's flat curve underfitting or a generalisation gap? Meta-test zoo models on episodes
drawn from the meta-train, meta-validation and meta-test classes alike (each model's own test
settings: ways, shots, queries, inner steps), and compare.

    python benchmarks/omniglot_gap.py [zoo:NAME ...] [--tasks 500] [--threads 1]

A model that answers training-class episodes far better than unseen-class ones has fitted its
training classes (more training will mostly widen the gap); one that is low on both underfits
(a capacity, objective or optimisation limit). Writes benchmarks/results/omniglot_gap.json (one
entry per model, updated in place) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from metalab import zoo
from metalab.builders import load_dataset
from metalab.evaluate import evaluate
from metalab.train import learner_from_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "omniglot_gap.json"
SPLITS = ("train", "val", "test")
SEED = 20261203  # the episodes of every split and model
# The 5-way 1-shot models of the gradient and metric learners (name others to include them; Reptile's
# 50 test steps and the transfer baselines' fine-tuning make theirs slow).
DEFAULT_MODELS = [
    "maml", "fomaml", "metasgd", "mamlpp", "anil", "protonet", "matching", "relation", "siamese"
]  # fmt: skip


def measure(name: str, tasks: int) -> dict:
    learner, config, _ = learner_from_checkpoint(name)
    dataset = load_dataset(config)
    steps = (config.eval_steps or [None])[0]
    entry = {
        "model": name,
        "ways": config.test_ways,
        "shots": config.test_shots,
        "queries": config.test_queries,
        "tasks": tasks,
        "iterations": zoo.read_index()[name.removeprefix("zoo:")]["iterations"],
    }
    for split in SPLITS:
        torch.manual_seed(0)
        t0 = time.process_time()
        # The test shape on every split (the train split's own source would be the training shape:
        # other ways and queries, and mini-batches for the transfer baselines).
        source = dataset.sampler(
            split, ways=config.test_ways, shots=config.test_shots, queries=config.test_queries, seed=SEED
        )
        r = evaluate(learner, source, tasks, steps=steps)
        entry[split] = {"accuracy": round(100 * r.mean, 2), "ci95": round(100 * r.ci95, 2)}
        entry[f"{split}_cpu_seconds"] = round(time.process_time() - t0, 1)
        print(f"{name} {split}: {r}", flush=True)
    entry["gap_train_val"] = round(entry["train"]["accuracy"] - entry["val"]["accuracy"], 2)
    return entry


def table(entries: list[dict]) -> str:
    cell = lambda e, s: f"{e[s]['accuracy']:.2f} ± {e[s]['ci95']:.2f}"  # noqa: E731
    lines = [
        "| model | meta-train classes | meta-val classes | meta-test classes | train - val |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| `{e['model']}` | {cell(e, 'train')} | {cell(e, 'val')} | {cell(e, 'test')} | "
            f"{e['gap_train_val']:+.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="zoo:NAME ... (default: the 5-way 1-shot models but Reptile's)")
    p.add_argument("--tasks", type=int, default=500, help="episodes per split (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    known = set(zoo.read_index())
    models = args.models or [f"zoo:{m}-omniglot-5w1s" for m in DEFAULT_MODELS]
    missing = [m for m in models if m.removeprefix("zoo:") not in known]
    if missing:
        raise SystemExit(
            f"omniglot_gap.py: error: not in the zoo: {', '.join(missing)} (metalab zoo lists it)"
        )
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in models:
        stored[name] = measure(name, args.tasks)
        RESULTS.write_text(json.dumps(stored, indent=2) + "\n")
    print(table([stored[m] for m in models]))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
