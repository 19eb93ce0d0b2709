"""The sine-wave adaptation curve of a trained checkpoint, step by step, with paired statistics.

Adapts the checkpoint's initialisation to held-out sine tasks (the meta-test tasks of
`metalab eval`: seed 20,000) by plain SGD on the K support points and records every task's query
MSE after 0, 1, ..., `--steps` steps in one pass, so every step count is scored on the same tasks.
For each step it prints

- the mean query MSE with its 95% CI over tasks;
- the mean change from the previous step with its *paired* 95% CI (the same tasks, so much of the
  between-task spread cancels) and the share of tasks whose MSE rose;

and, for the initialisation, the sharpness the SGD steps meet on each task's support loss: the
largest Hessian eigenvalue lambda_max (power iteration on Hessian-vector products). Plain gradient
descent with step size alpha is stable along a direction only where alpha * lambda < 2; the table
splits the tasks at that line and by amplitude.

Usage:
    python benchmarks/sine_steps.py benchmarks/out/sine/maml/checkpoint.pt
    python benchmarks/sine_steps.py RUN/checkpoint.pt --lr 0.01 --later-lr 0.005 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

from metalab.builders import SPLIT_SEEDS
from metalab.functional import named_params
from metalab.tasks.episode import TaskBatch
from metalab.tasks.sine import SineTasks
from metalab.train import learner_from_checkpoint

FIELDS = ("support_x", "support_y", "query_x", "query_y")


def ci95(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())


def step_curve(model, params, batch, *, steps: int, lr: float, later_lr: float | None = None) -> torch.Tensor:
    """Query MSE of every task after 0..steps SGD steps on its support set: shape (steps + 1, T)."""
    later_lr = lr if later_lr is None else later_lr

    def loss(p, x, y):
        return torch.nn.functional.mse_loss(functional_call(model, p, (x,)), y)

    def one_task(sx, sy, qx, qy):
        p = dict(params)
        out = [loss(p, qx, qy)]
        for s in range(steps):
            g = grad(loss)(p, sx, sy)
            rate = lr if s == 0 else later_lr
            p = {k: v - rate * g[k] for k, v in p.items()}
            out.append(loss(p, qx, qy))
        return torch.stack(out)

    with torch.no_grad():
        curves = vmap(one_task)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    return curves.T


def sharpness(model, params, batch, iterations: int = 30) -> torch.Tensor:
    """Largest eigenvalue of each task's support-loss Hessian at `params` (power iteration)."""
    names = list(params)

    def loss(p, x, y):
        return torch.nn.functional.mse_loss(functional_call(model, p, (x,)), y)

    def one_task(sx, sy, v0):
        def hvp(v):
            def directional(p):
                g = grad(loss)(p, sx, sy)
                return sum((g[k] * v[k]).sum() for k in names)

            return grad(directional)(dict(params))

        v = v0
        lam = torch.zeros(())
        for _ in range(iterations):
            norm = torch.sqrt(sum((v[k] ** 2).sum() for k in names))
            v = {k: v[k] / norm for k in names}
            hv = hvp(v)
            lam = sum((v[k] * hv[k]).sum() for k in names)
            v = hv
        return lam

    gen = torch.Generator().manual_seed(0)
    tasks = batch.support_x.shape[0]
    v0 = {k: torch.randn((tasks, *p.shape), generator=gen) for k, p in params.items()}
    return vmap(one_task)(batch.support_x, batch.support_y, v0).detach()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, help="step size of the first step (default: the run's inner_lr)")
    p.add_argument("--later-lr", type=float, help="step size of steps 2.. (default: --lr)")
    p.add_argument("--seed", type=int, default=SPLIT_SEEDS["test"])
    p.add_argument("--no-sharpness", action="store_true")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    torch.set_num_threads(1)
    learner, config, state = learner_from_checkpoint(args.checkpoint)
    lr = args.lr if args.lr is not None else learner.inner_lr
    later = args.later_lr if args.later_lr is not None else lr
    model = learner.model
    params = {k: v.detach() for k, v in named_params(model).items()}
    # The tasks `metalab eval` draws: batches of 25 from the test seed; each batch's amplitudes are
    # read from a copy of the generator's state.
    source = SineTasks(args.shots, args.queries, seed=args.seed)
    batches, amplitudes = [], []
    for start in range(0, args.tasks, 25):
        n = min(25, args.tasks - start)
        rng = source.get_state()
        amplitudes.append(source.sample_functions(n)[0].flatten())
        source.set_state(rng)
        batches.append(source.sample(n))
    batch = TaskBatch(*(torch.cat([getattr(b, f) for b in batches]) for f in FIELDS))
    amplitude = torch.cat(amplitudes)
    curves = step_curve(model, params, batch, steps=args.steps, lr=lr, later_lr=later)

    print(
        f"{args.checkpoint}: {config.algorithm}, iteration {state.get('iteration')}, K={args.shots}, "
        f"{args.queries} queries, {args.tasks} tasks, step size {lr}"
        + (f" then {later}" if later != lr else "")
    )
    print("steps | query MSE (95% CI) | change from previous step (paired 95% CI) | tasks that rose")
    rows = []
    for s in range(args.steps + 1):
        mean, ci = ci95(curves[s])
        bad = int((~curves[s].isfinite()).sum())
        row = {"steps": s, "mean": mean, "ci95": ci, "not_finite": bad}
        line = f"{s:5d} | {mean:.3f} ± {ci:.3f}"
        if s:
            d_mean, d_ci = ci95(curves[s] - curves[s - 1])
            rose = (curves[s] > curves[s - 1]).float().mean().item()
            row.update(change=d_mean, change_ci95=d_ci, rose=rose)
            line += f" | {d_mean:+.3f} ± {d_ci:.3f} | {100 * rose:.1f}%"
        rows.append(row)
        print(
            line
            + (
                f" (not finite on {bad} task{'s' if bad != 1 else ''}: the adaptation diverged)"
                if bad
                else ""
            )
        )
    record = {
        "checkpoint": str(args.checkpoint),
        "algorithm": config.algorithm,
        "iteration": state.get("iteration"),
        "shots": args.shots,
        "queries": args.queries,
        "tasks": args.tasks,
        "lr": lr,
        "later_lr": later,
        "curve": rows,
    }
    # Where the curve rises: per amplitude third, the 1, 5 and 10-step figures.
    edges = [0.1, 1.73, 3.37, 5.0]
    groups = []
    for lo, hi in zip(edges, edges[1:]):
        mask = (amplitude >= lo) & (amplitude < hi + 1e-9)
        cells = {s: ci95(curves[s][mask]) for s in (1, 2, 3, 5, 10) if s <= args.steps}
        groups.append(
            {"amplitude": [lo, hi], "tasks": int(mask.sum()), **{str(s): v for s, v in cells.items()}}
        )
        print(
            f"A in [{lo:.2f}, {hi:.2f}] ({int(mask.sum())} tasks): "
            + ", ".join(f"{s} steps {m:.3f} ± {c:.3f}" for s, (m, c) in cells.items())
        )
    record["by_amplitude"] = groups
    if not args.no_sharpness:
        lam = sharpness(model, params, batch)
        unstable = lr * lam > 2
        record["sharpness"] = {
            "median_alpha_lambda": (lr * lam).median().item(),
            "share_alpha_lambda_over_2": unstable.float().mean().item(),
        }
        print(
            f"alpha * lambda_max at the initialisation: median {(lr * lam).median().item():.2f}, "
            f"90th percentile {(lr * lam).quantile(0.9).item():.2f}; over 2 on "
            f"{100 * unstable.float().mean().item():.1f}% of tasks"
        )
        for name, mask in (("alpha*lambda > 2", unstable), ("alpha*lambda <= 2", ~unstable)):
            if mask.any():
                cells = {s: ci95(curves[s][mask]) for s in (1, 2, 3, 5, 10) if s <= args.steps}
                record["sharpness"][name] = {str(s): v for s, v in cells.items()}
                print(
                    f"{name} ({int(mask.sum())} tasks): "
                    + ", ".join(f"{s} steps {m:.3f} ± {c:.3f}" for s, (m, c) in cells.items())
                )
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
