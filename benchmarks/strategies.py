"""vmap against the per-task loop: meta-iterations per second of the same MAML meta-batch.

Measures the choice behind `strategy: auto` (vmap for the sine MLP, loop for Conv-4), alternating
the two strategies on identical batches, median of repeated timings, and writes
benchmarks/results/strategies.json.

    python benchmarks/strategies.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from metalab import MAML, SineTasks, TaskBatch
from metalab.models import MLP, FastConv4

ROOT = Path(__file__).resolve().parent.parent


def step_time(learner: MAML, batch: TaskBatch) -> float:
    t = time.perf_counter()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    return time.perf_counter() - t


def compare(name: str, make_model, kind: str, batch: TaskBatch, repeats: int, **maml_kwargs) -> dict:
    torch.manual_seed(0)
    model = make_model()
    learners = {s: MAML(model, kind, strategy=s, **maml_kwargs) for s in ("vmap", "loop")}
    for learner in learners.values():  # warm-up
        step_time(learner, batch)
    times = {s: [] for s in learners}
    for _ in range(repeats):  # alternate A/B so drifts in machine load hit both alike
        for s, learner in learners.items():
            model.zero_grad()
            times[s].append(step_time(learner, batch))
    row = {s: round(1 / statistics.median(t), 2) for s, t in times.items()}
    row["vmap_over_loop"] = round(row["vmap"] / row["loop"], 2)
    print(
        f"{name}: vmap {row['vmap']} it/s, loop {row['loop']} it/s, ratio {row['vmap_over_loop']}", flush=True
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "torch": torch.__version__, "machine": platform.machine()}
    sine = SineTasks(shots=10, queries=10, seed=0).sample(25)
    results["sine_mlp_25_tasks"] = compare(
        "sine MLP, 25 tasks, 1 step", MLP, "regression", sine, args.repeats * 5, inner_lr=0.01
    )
    g = torch.Generator().manual_seed(0)
    images = TaskBatch(
        torch.rand(8, 5, 1, 28, 28, generator=g),
        torch.arange(5).expand(8, 5),
        torch.rand(8, 75, 1, 28, 28, generator=g),
        torch.arange(5).repeat_interleave(15).expand(8, 75),
    )
    results["conv4_5w1s_8_tasks"] = compare(
        "Conv-4 5-way 1-shot 15 queries, 8 tasks, 1 step",
        lambda: FastConv4(out_features=5),
        "classification",
        images,
        max(2, args.repeats // 3),
        inner_lr=0.4,
    )
    out = ROOT / "benchmarks" / "results" / "strategies.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
