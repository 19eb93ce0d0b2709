"""bf16 against fp32 on Omniglot: the same MAML run (same seed, same tasks, same iterations) in both
precisions, each meta-tested on the same 1,000 test episodes (evaluation in fp32 for both).

    python benchmarks/precision.py [--iterations 150] [--threads 1]

Writes benchmarks/results/precision.json; docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from metalab.builders import build_source, load_dataset
from metalab.config import config_from_dict, load_config
from metalab.evaluate import evaluate
from metalab.train import train

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "omniglot" / "maml_5w1s.yaml"))
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--threads", type=int, default=1, help="task threads (one intra-op thread each)")
    p.add_argument("--test-tasks", type=int, default=1000)
    args = p.parse_args()
    record = {
        "config": Path(args.config).name,
        "iterations": args.iterations,
        "test_episodes": args.test_tasks,
        "task_threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "runs": {},
    }
    for precision in ("fp32", "bf16"):
        overrides = {
            "iterations": args.iterations,
            "precision": precision,
            "threads": args.threads,
            "task_threads": args.threads,
            "val_every": 0,
            "checkpoint_every": 0,
            "test_tasks": args.test_tasks,
        }
        c = config_from_dict(overrides, load_config(args.config))
        run_dir = ROOT / "benchmarks" / "out" / "precision" / precision
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time: this compares, it does not resume
        result = train(c, run_dir, progress=sys.stderr.isatty())
        dataset = load_dataset(result.config)
        r = evaluate(result.learner, build_source(result.config.resolved(), "test", dataset), args.test_tasks)
        record["runs"][precision] = {
            "accuracy": round(100 * r.mean, 2),
            "ci95": round(100 * r.ci95, 2),
            "train_seconds": round(result.seconds),
            "seconds_per_iteration": round(result.seconds / args.iterations, 3),
        }
        print(
            f"{precision}: {r} after {args.iterations} iterations, "
            f"{result.seconds / args.iterations:.2f} s/iteration",
            flush=True,
        )
    out = ROOT / "benchmarks" / "results" / "precision.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
