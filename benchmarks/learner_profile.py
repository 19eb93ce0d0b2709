"""Where each learner's meta-training iteration goes, phase by phase, against what its arithmetic
predicts.

    python benchmarks/learner_profile.py                 # every learner, about 5-10 minutes on one core
    python benchmarks/learner_profile.py --learners mann  # some of them
    python benchmarks/learner_profile.py --smoke         # meta-batch <= 2, one iteration: a quick check
    python benchmarks/learner_profile.py --fixes 5       # each fix's old and new code, alternated

Every learner runs its paper config (configs/omniglot/<name>_5w1s.yaml; mann_5w.yaml for MANN;
Matching Networks twice, with and without full-context embeddings) on one thread (torch's intra-op
threads set to 1, task threads off), on real Omniglot episodes from the in-memory index when
../shared/data/omniglot is there. After `--warmup` iterations, `--iterations` steady ones are timed
phase by phase with `time.thread_time()` (CPU time of this thread: two busy neighbours on the cores
move it far less than wall time; wall time and the load average are recorded too):

- sampling: drawing the meta-batch from the training source;
- inner: the learner's adaptation, timed by wrapping what exists (see INNER below): the inner
  steps of the MAML family (`metalab.functional.inner_step`), the LSTM meta-learner's `adapt`;
  learners without an inner loop (the metric learners, MANN, the baselines) have none, and Meta
  Networks' fast-weight generation is interleaved with its forward pass, so none is split off;
- outer forward: the rest of `meta_loss`;
- backward: `loss.backward()` of the meta-loss (for second-order MAML, through the inner steps);
- optimizer: zeroing the gradients, the outer optimizer's step and the schedule's step;
- validation: the loop's `Run.validate` on a few tasks, per task, times `val_tasks / val_every`,
  plus building the validation source once per validation;
- checkpoint: one `Run.save` (the file the loop writes), divided by `checkpoint_every`.

The arithmetic's prediction: the FLOPs of one training iteration (meta_loss, backward) counted by
`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions, Conv-4's compiled
first block run on its plain-op fallback so that it is counted), divided by this machine's one-thread
rate on the same products: every distinct (op, shapes, strides) call of the iteration is replayed on
random tensors and timed. The prediction covers only those products; elementwise work, batch norm,
pooling, LSTM gates and Python are what the ratio measured / predicted says is left.

`--fixes ROUNDS` times, instead, each fix made from this profile against the code before it
(`FIXES`: the old code is kept here, re-classing a learner built from the same config and seed) in
one process, old and new steps alternated on the same episodes.

Results go to benchmarks/results/profile.json; docs/performance.md ("Where each learner's
iteration goes") quotes them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from metalab import functional
from metalab.algorithms.optimization.lstm_meta import LSTMMetaLearner, preprocess
from metalab.builders import (
    bind_dataset,
    build_learner,
    build_optimizer,
    build_schedule,
    build_source,
    load_dataset,
)
from metalab.config import config_from_dict, load_config
from metalab.run import Run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "profile.json"
CONFIGS = ROOT / "configs" / "omniglot"
DATA = Path(os.environ.get("METALAB_OMNIGLOT", ROOT.parent / "shared" / "data" / "omniglot"))

# label -> (config file, overrides)
LEARNERS = {
    "maml": ("maml_5w1s.yaml", {}),
    "fomaml": ("fomaml_5w1s.yaml", {}),
    "metasgd": ("metasgd_5w1s.yaml", {}),
    "mamlpp": ("mamlpp_5w1s.yaml", {}),
    "anil": ("anil_5w1s.yaml", {}),
    "reptile": ("reptile_5w1s.yaml", {}),
    "lstm_meta": ("lstm_meta_5w1s.yaml", {}),
    "protonet": ("protonet_5w1s.yaml", {}),
    "matching": ("matching_5w1s.yaml", {}),
    "matching_fce": ("matching_5w1s.yaml", {"fce": True}),
    "relation": ("relation_5w1s.yaml", {}),
    "siamese": ("siamese_5w1s.yaml", {}),
    "mann": ("mann_5w.yaml", {}),
    "metanet": ("metanet_5w1s.yaml", {}),
    "baseline": ("baseline_5w1s.yaml", {}),
    "baseline_pp": ("baseline_pp_5w1s.yaml", {}),
}
PHASES = ("sampling", "inner", "outer_forward", "backward", "optimizer", "validation", "checkpoint")
# How the inner loop is split off, per learner ("" where no split is meaningful).
INNER = {
    **dict.fromkeys(["maml", "fomaml", "metasgd", "mamlpp", "anil", "reptile"], "functional.inner_step"),
    "lstm_meta": "LSTMMetaLearner.adapt",
}


# --- timing ---------------------------------------------------------------------------------------
class Clock:
    """Accumulates thread CPU time and wall time per phase; `inner` may be nested inside another."""

    def __init__(self) -> None:
        self.cpu: Counter = Counter()
        self.wall: Counter = Counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[name] += time.thread_time() - c0
            self.wall[name] += time.perf_counter() - w0


@contextlib.contextmanager
def inner_hook(label: str, learner, clock: Clock):
    """Time the learner's adaptation under `clock.phase("inner")` by wrapping what it calls."""
    kind = INNER.get(label, "")
    if not kind:
        yield
        return

    def timed(fn):
        depth = [0]

        def wrapper(*args, **kwargs):
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            try:
                with clock.phase("inner"):
                    return fn(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    if kind == "functional.inner_step":
        from metalab.algorithms.optimization import mamlpp

        modules = (functional, mamlpp)
        saved = [m.inner_step for m in modules]
        for m in modules:
            m.inner_step = timed(m.inner_step)
        try:
            yield
        finally:
            for m, fn in zip(modules, saved):
                m.inner_step = fn
    else:
        learner.adapt = timed(learner.adapt)
        try:
            yield
        finally:
            del learner.adapt


def training_step(run: Run, label: str, iteration: int, clock: Clock) -> float:
    """One step as `Run.step` takes it (no task threads), each phase timed; the meta-loss."""
    with clock.phase("sampling"):
        batch = run.source.sample(run.local_batch)
    run.learner.set_iteration(iteration)
    with clock.phase("optimizer"):
        run.optimizer.zero_grad(set_to_none=True)
    with inner_hook(label, run.learner, clock), clock.phase("meta_loss"):
        loss, metrics = run.learner.meta_loss(batch)
    with clock.phase("backward"):
        loss.backward()
    with clock.phase("optimizer"):
        run.optimizer.step()
        run.schedule.step()
    return metrics["loss"]


# --- the arithmetic's prediction -----------------------------------------------------------------
class ProductRecorder(TorchDispatchMode):
    """Records every call of an op FlopCounterMode counts, as (op, argument specs) with its FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = FlopCounterMode().flop_registry
        self.calls: Counter = Counter()
        self.flops: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in self.registry:
            spec = (func, _spec(args), _spec(kwargs))
            self.calls[spec] += 1
            if spec not in self.flops:
                self.flops[spec] = self.registry[packet](*args, **kwargs, out_val=out)
        return out


def _spec(tree):
    def leaf(a):
        if isinstance(a, torch.Tensor):
            return ("T", tuple(a.shape), tuple(a.stride()), a.dtype, a.requires_grad)
        return a

    flat, spec = torch.utils._pytree.tree_flatten(tree)
    return (tuple(leaf(a) for a in flat), spec)


def _rebuild(spec, g: torch.Generator):
    leaves, tree = spec

    def make(a):
        if isinstance(a, tuple) and a and a[0] == "T":
            _, shape, stride, dtype, _ = a
            # One storage as large as the strides reach (a stride of 0, an expanded tensor, repeats it).
            size = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
            base = torch.empty(size, dtype=dtype)
            if dtype.is_floating_point:
                base.normal_(generator=g)
            else:
                base.zero_()
            return base.as_strided(shape, stride)
        return a

    return torch.utils._pytree.tree_unflatten([make(a) for a in leaves], tree)


def replay_seconds(recorder: ProductRecorder, repeats: int = 3) -> tuple[float, float]:
    """(FLOPs, seconds) of the recorded products, each distinct call replayed on random tensors of
    its shapes and strides at one thread (the fastest of `repeats` thread-CPU timings)."""
    g = torch.Generator().manual_seed(0)
    flops = seconds = 0.0
    with torch.no_grad():
        for spec, count in recorder.calls.items():
            func, args, kwargs = spec
            args, kwargs = _rebuild(args, g), _rebuild(kwargs, g)
            func(*args, **kwargs)  # warm
            best = float("inf")
            for _ in range(repeats):
                c0 = time.thread_time()
                func(*args, **kwargs)
                best = min(best, time.thread_time() - c0)
            flops += count * recorder.flops[spec]
            seconds += count * best
    return flops, seconds


@contextlib.contextmanager
def plain_first_block():
    """Conv-4's compiled kernels off (their plain-op fallback: same arithmetic, visible to the counter)."""
    before = os.environ.get("METALAB_KERNELS")
    os.environ["METALAB_KERNELS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["METALAB_KERNELS"]
        else:
            os.environ["METALAB_KERNELS"] = before


def predicted(run: Run, label: str, iteration: int) -> dict:
    """FLOPs of one training iteration and of one validation task, and their predicted seconds."""
    out = {}
    with plain_first_block():
        counter, recorder = FlopCounterMode(display=False), ProductRecorder()
        with counter, recorder:
            training_step(run, label, iteration, Clock())
        flops, seconds = replay_seconds(recorder)
        out["train_flops"] = counter.get_total_flops()
        assert abs(flops - out["train_flops"]) <= 1e-6 * max(1, flops), (flops, out["train_flops"])
        out["train_predicted_s"] = seconds
        source = build_source(run.config, "val", run.dataset)
        batch = source.sample(2)
        run.learner.eval()
        counter, recorder = FlopCounterMode(display=False), ProductRecorder()
        with counter, recorder, torch.no_grad():
            run.learner.predict(batch.support_x, batch.support_y, batch.query_x)
        run.learner.train()
        flops, seconds = replay_seconds(recorder)
        out["val_task_flops"] = counter.get_total_flops() / 2
        out["val_task_predicted_s"] = seconds / 2
    return out


# --- one learner -----------------------------------------------------------------------------------


def make_run(label: str, run_dir: Path, datasets: dict, smoke: bool) -> Run:
    file, overrides = LEARNERS[label]
    keys = {"data_dir": str(DATA), "threads": 1, "task_threads": 1, **overrides}
    c = config_from_dict(keys, base=load_config(CONFIGS / file)).resolved()
    if smoke:
        c = dataclasses.replace(c, meta_batch=min(c.meta_batch, 2)).resolved()
    key = (c.data_dir, c.split, c.image_size)
    if key not in datasets:
        datasets[key] = load_dataset(c)
    dataset = datasets[key]
    c = bind_dataset(c, dataset)
    torch.manual_seed(c.seed)
    learner = build_learner(c)
    optimizer = build_optimizer(c, learner)
    return Run(
        c,
        run_dir,
        learner,
        optimizer,
        build_schedule(c, optimizer),
        build_source(c, "train", dataset),
        dataset,
    )


def profile(label: str, datasets: dict, warmup: int, iterations: int, val_tasks: int, smoke: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(label, Path(tmp), datasets, smoke)
        c = run.config
        run.learner.train()
        for it in range(warmup):
            training_step(run, label, it, Clock())
        clock, load0, wall0 = Clock(), os.getloadavg()[0], time.perf_counter()
        for it in range(warmup, warmup + iterations):
            training_step(run, label, it, clock)
        per = {k: clock.cpu[k] / iterations for k in clock.cpu}
        per_wall = {k: clock.wall[k] / iterations for k in clock.wall}
        per["outer_forward"] = per.pop("meta_loss") - per.get("inner", 0.0)
        per_wall["outer_forward"] = per_wall.pop("meta_loss") - per_wall.get("inner", 0.0)
        steady_wall = (time.perf_counter() - wall0) / iterations

        # Validation: building the source (once per validation) and the loop's validate on a few tasks.
        vclock = Clock()
        with vclock.phase("build"):
            build_source(c, "val", run.dataset)
        few = dataclasses.replace(c, val_tasks=val_tasks)
        run.config = few
        run.validate()  # warm
        with vclock.phase("validate"):
            run.validate()
        run.config = c
        per_val_task = max(0.0, vclock.cpu["validate"] - vclock.cpu["build"]) / val_tasks
        per_validation = vclock.cpu["build"] + per_val_task * c.val_tasks
        per["validation"] = per_validation / c.val_every if c.val_every else 0.0
        # Checkpoint: one save of what the loop writes, amortised.
        run.save(1, 0.0)  # warm (creates the file)
        with vclock.phase("save"):
            run.save(2, 0.0)
        size = run.checkpoint_path.stat().st_size
        per["checkpoint"] = vclock.cpu["save"] / c.checkpoint_every if c.checkpoint_every else 0.0
        per_wall["checkpoint"] = vclock.wall["save"] / c.checkpoint_every if c.checkpoint_every else 0.0

        arithmetic = predicted(run, label, warmup + iterations)
        train_s = sum(
            per.get(k, 0.0) for k in ("sampling", "inner", "outer_forward", "backward", "optimizer")
        )
        compute_s = train_s - per.get("sampling", 0.0)
        return {
            "config": LEARNERS[label][0],
            "overrides": LEARNERS[label][1],
            "meta_batch": c.meta_batch,
            "inner_split": INNER.get(label, ""),
            "cpu_seconds": {k: per.get(k, 0.0) for k in PHASES},
            "wall_seconds": {k: per_wall.get(k, 0.0) for k in PHASES if k in per_wall},
            "steady_wall_seconds_per_iteration": steady_wall,
            "train_cpu_seconds": train_s,
            "total_cpu_seconds": train_s + per["validation"] + per["checkpoint"],
            "validation": {
                "build_source_s": vclock.cpu["build"],
                "per_task_s": per_val_task,
                "val_tasks": c.val_tasks,
                "val_every": c.val_every,
                "per_task_predicted_s": arithmetic["val_task_predicted_s"],
                "per_task_flops": arithmetic["val_task_flops"],
            },
            "checkpoint": {
                "bytes": size,
                "save_s": vclock.cpu["save"],
                "checkpoint_every": c.checkpoint_every,
            },
            "train_flops": arithmetic["train_flops"],
            "predicted_s": arithmetic["train_predicted_s"],
            "measured_over_predicted": compute_s / arithmetic["train_predicted_s"]
            if arithmetic["train_predicted_s"]
            else None,
            "load_average": [load0, os.getloadavg()[0]],
        }


# --- fixes, old against new in one process ----------------------------------------------------------
class LSTMCellLayout(LSTMMetaLearner):
    """The LSTM meta-learner's update as it was before the fix: `nn.LSTMCell` over one row
    [gradient, loss] per coordinate, its gates strided quarters of each row (same values)."""

    def init_state(self, theta):
        h = theta.new_zeros(*theta.shape, self.lstm.hidden_size)
        return h, h.clone(), theta.new_zeros(theta.shape), theta.new_zeros(theta.shape)

    def update(self, theta, grad, loss, state):
        h, c, f, i = state
        x = torch.cat([preprocess(grad), preprocess(loss)[:, None, :].expand(*grad.shape, 2)], -1)
        hidden = self.lstm.hidden_size
        h, c = self.lstm(x.reshape(-1, 4), (h.reshape(-1, hidden), c.reshape(-1, hidden)))
        h, c = h.view(*theta.shape, hidden), c.view(*theta.shape, hidden)

        def gate(linear, previous):
            w = linear.weight[0]
            return h @ w[:hidden] + theta * w[hidden] + previous * w[hidden + 1] + linear.bias[0]

        f, i = torch.sigmoid(gate(self.forget_gate, f)), torch.sigmoid(gate(self.input_gate, i))
        return f * theta - i * grad, (h, c, f, i)


# label -> (what was fixed, the learner class before the fix)
FIXES = {"lstm_meta": ("the meta-learner LSTM's gates laid out per coordinate (contiguous)", LSTMCellLayout)}


def compare_fix(label: str, datasets: dict, rounds: int, val_tasks: int, smoke: bool) -> dict:
    """Old and new code of one fix in this process: two runs of the same config, seed and weights
    (the old one's learner re-classed to the code before the fix), steps alternated old, new, old,
    ...; each variant's phases in thread CPU time, its validation per task on the same tasks, and
    the loss both compute on the same first batch."""
    what, old_class = FIXES[label]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("old", "new"):
            run = runs[name] = make_run(label, Path(tmp) / name, datasets, smoke)
            if name == "old":
                run.learner.__class__ = old_class
            run.learner.train()
        batch = runs["new"].source.sample(runs["new"].local_batch)
        losses = {name: run.learner.meta_loss(batch)[0].item() for name, run in runs.items()}
        val = build_source(runs["new"].config, "val", runs["new"].dataset).sample(val_tasks)
        clocks = {name: Clock() for name in runs}
        for it in range(rounds + 1):  # the first round warms up
            for name, run in runs.items():
                clock = clocks[name] if it else Clock()
                training_step(run, label, it, clock)
                run.learner.eval()
                with torch.no_grad(), clock.phase("validation_task"):
                    run.learner.predict(val.support_x, val.support_y, val.query_x)
                run.learner.train()
        out = {"fix": what, "rounds": rounds, "loss_first_batch": losses}
        for name, clock in clocks.items():
            per = {k: v / rounds for k, v in clock.cpu.items()}
            per["outer_forward"] = per.pop("meta_loss") - per.get("inner", 0.0)
            per["validation_task"] /= val_tasks
            c = runs[name].config
            per["validation"] = per["validation_task"] * c.val_tasks / c.val_every
            per["train"] = sum(
                per.get(k, 0.0) for k in ("sampling", "inner", "outer_forward", "backward", "optimizer")
            )
            out[name] = per
        out["speedup_train"] = out["old"]["train"] / out["new"]["train"]
        out["speedup_validation"] = out["old"]["validation_task"] / out["new"]["validation_task"]
        return out


def markdown(record: dict) -> str:
    """The tables docs/performance.md quotes, from a results record."""
    ms = lambda v: f"{1e3 * v:.1f}"  # noqa: E731
    lines = [
        "| learner | meta-batch | sampling | inner | outer forward | backward | optimizer | validation "
        "| checkpoint | total | predicted (products) | measured / predicted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in record.get("learners", {}).items():
        t = r["cpu_seconds"]
        inner = ms(t["inner"]) if r["inner_split"] else "-"
        lines.append(
            f"| {label} | {r['meta_batch']} | {ms(t['sampling'])} | {inner} | {ms(t['outer_forward'])} | "
            f"{ms(t['backward'])} | {ms(t['optimizer'])} | {ms(t['validation'])} | {ms(t['checkpoint'])} | "
            f"{ms(r['total_cpu_seconds'])} | {ms(r['predicted_s'])} | {r['measured_over_predicted']:.1f}x |"
        )
    for label, r in record.get("fixes", {}).items():
        lines += [
            "",
            f"{label}: {r['fix']} ({r['rounds']} alternated steps each; loss on the same first batch "
            f"{r['loss_first_batch']['old']:.9f} before, {r['loss_first_batch']['new']:.9f} after)",
            "",
            "| code | sampling | inner | outer forward | backward | optimizer | training step "
            "| validation task | validation per iteration |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in ("old", "new"):
            v = r[name]
            lines.append(
                f"| {'before' if name == 'old' else 'after'} | {ms(v['sampling'])} | "
                f"{ms(v.get('inner', 0.0))} | {ms(v['outer_forward'])} | {ms(v['backward'])} | "
                f"{ms(v['optimizer'])} | {ms(v['train'])} | "
                f"{ms(v['validation_task'])} | {ms(v['validation'])} |"
            )
        lines.append(f"| speed-up | | | | | | {r['speedup_train']:.2f}x | {r['speedup_validation']:.2f}x | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--learners", nargs="+", choices=sorted(LEARNERS), default=list(LEARNERS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--val-tasks", type=int, default=10, help="validation tasks timed per learner")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="two iterations, meta-batch <= 2, few tasks")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of --out and stop")
    parser.add_argument(
        "--fixes",
        type=int,
        metavar="ROUNDS",
        help="instead: each fix's old and new code alternated for ROUNDS steps (results under 'fixes')",
    )
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    if args.smoke:
        args.warmup, args.iterations, args.val_tasks = 1, 1, 2
    if not DATA.is_dir():
        print(f"profile: the Omniglot data is not at {DATA} (set METALAB_OMNIGLOT)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    datasets: dict = {}
    results: dict = {}
    record = {
        "command": "python benchmarks/learner_profile.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": 1,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "val_tasks_timed": args.val_tasks,
        "learners": results,
    }
    write = not args.smoke or args.out != RESULTS
    previous = json.loads(args.out.read_text()) if write and args.out.exists() else {}
    if args.fixes:
        record = json.loads(args.out.read_text()) if args.out.exists() else {}
        record["fixes_command"] = "python benchmarks/learner_profile.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        record["fixes_date"] = time.strftime("%Y-%m-%d")
        record.setdefault("fixes", {})
        for label in FIXES:
            r = record["fixes"][label] = compare_fix(label, datasets, args.fixes, args.val_tasks, args.smoke)
            print(
                f"{label}: train {r['old']['train']:.3f} -> {r['new']['train']:.3f} s/it "
                f"({r['speedup_train']:.2f}x), validation task {r['old']['validation_task']:.3f} -> "
                f"{r['new']['validation_task']:.3f} s ({r['speedup_validation']:.2f}x); "
                f"loss {r['loss_first_batch']['old']:.9f} / {r['loss_first_batch']['new']:.9f}",
                flush=True,
            )
        if write:
            args.out.write_text(json.dumps(record, indent=1) + "\n")
        return 0
    for label in args.learners:
        t0 = time.perf_counter()
        r = results[label] = profile(
            label, datasets, args.warmup, args.iterations, args.val_tasks, args.smoke
        )
        print(
            f"{label:13s} train {r['train_cpu_seconds']:.3f} s/it (cpu), predicted {r['predicted_s']:.3f} "
            f"({r['measured_over_predicted']:.1f}x); "
            + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in r["cpu_seconds"].items())
            + f" ms  [{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
        if write:  # after every learner, so that a long run keeps what it measured
            if set(args.learners) != set(LEARNERS) and previous.get("learners"):
                record["learners"] = {**previous["learners"], **results}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=1) + "\n")
    if write:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
