"""The one meta-training loop, for every algorithm.

It knows nothing of any algorithm beyond `learner.meta_loss(batch)`: draw a meta-batch, take an outer
optimizer step, validate every `val_every` iterations, append metrics to `metrics.jsonl`, and write
an atomic checkpoint every `checkpoint_every` iterations and at the end. A run resumed from its
checkpoint ends with exactly the parameters of an uninterrupted run with the same seed.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm import tqdm

from .algorithms.base import MetaLearner
from .builders import bind_dataset, load_dataset, build_learner, build_optimizer, build_schedule, build_source
from . import distributed
from .checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, config_from_dict
from .evaluate import EvalResult, evaluate
from .parallel import TaskThreads, autocast_context, available_cores

__all__ = ["TrainResult", "train", "learner_from_checkpoint"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# Keys that may change between an interrupted run and its resumption without changing its result.
_RESUMABLE_CHANGES = {"iterations", "max_minutes", "val_every", "checkpoint_every", "log_every", "test_tasks", "eval_steps", "threads", "task_threads", "data_dir"}


def task_workers(c: Config, learner: MetaLearner, world: int = 1, local_batch: int | None = None) -> int:
    """How many task-parallel worker threads a run uses (1: none); see `Config.task_threads`."""
    if not getattr(learner, "task_parallel", False) or getattr(learner, "strategy", None) != "loop":
        return 1
    workers = c.task_threads or c.threads or max(1, available_cores() // world)
    return max(1, min(workers, local_batch or c.meta_batch))


@dataclass
class TrainResult:
    learner: MetaLearner
    config: Config
    run_dir: Path
    iteration: int
    seconds: float
    last_val: EvalResult | None = None
    history: list = field(default_factory=list)


def learner_from_checkpoint(path: str | Path) -> tuple[MetaLearner, Config, dict]:
    """Rebuild the learner a checkpoint was saved from, with its weights."""
    state = load_checkpoint(path)
    config = config_from_dict(state["config"]).resolved()
    learner = build_learner(config)
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {str(e).splitlines()[0]}") from None
    return learner, config, state


def _tensorboard(run_dir: Path, log: Callable[[str], None]):
    """A TensorBoard writer into the run folder, or None (and one line saying so) without the package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard is not installed: metrics go to metrics.jsonl only (pip install 'metalab[tracking]')")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop the lines an interrupted run logged after its last checkpoint (they will be redone)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, MetaLearner], None] | None = None,
) -> TrainResult:
    """Meta-train `config` into `run_dir` (config.yaml, metrics.jsonl, checkpoint.pt).

    Args:
        resume: continue from `run_dir/checkpoint.pt` (its config must match but for the budget keys).
        progress: show a progress bar.
        stop_after: stop (after checkpointing) at this iteration, as if interrupted; for tests.
        on_step: called as `on_step(iteration, learner)` after every outer step.

    Under torchrun (see `metalab.distributed`) every rank runs this function on `meta_batch /
    world_size` tasks of its own and the gradients are averaged before each step; only rank 0
    writes the run folder.
    """
    c = config.resolved()
    run_dir = Path(run_dir)
    ckpt_path, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS
    if c.threads:
        torch.set_num_threads(c.threads)
    distributed.setup(c.dist_timeout)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    if c.meta_batch % world:
        raise ConfigError(f"config key 'meta_batch' ({c.meta_batch}) must be divisible by the number of processes ({world})")
    local_batch = c.meta_batch // world
    # The data first: some config keys come from it (a CSV's feature columns size the model).
    dataset = load_dataset(c)
    c = bind_dataset(c, dataset)
    torch.manual_seed(c.seed)
    learner = build_learner(c)
    optimizer = build_optimizer(c, learner)
    schedule = build_schedule(c, optimizer)
    source = build_source(c, "train", dataset, rank=rank)
    start, elapsed_before = 0, 0.0
    if resume:
        state = load_checkpoint(ckpt_path)
        saved = config_from_dict(state["config"]).resolved()
        changed = [k for k, v in saved.to_dict().items() if v != getattr(c, k) and k not in _RESUMABLE_CHANGES]
        if changed:
            raise CheckpointError(f"cannot resume {ckpt_path}: config differs in {', '.join(changed)}")
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"])
        task_states = state["rng"].get("rank_tasks", [state["rng"]["tasks"]])
        if len(task_states) != world:
            raise CheckpointError(f"cannot resume {ckpt_path}: it was written by {len(task_states)} process(es), this run has {world}")
        source.set_state(task_states[rank])
        start = state["iteration"]
        elapsed_before = state.get("seconds", 0.0)
        if main:
            _truncate_metrics(metrics_path, start)
            log(f"resuming {run_dir} at iteration {start}")
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another run folder")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(c.to_dict(), sort_keys=False))

    def checkpoint(iteration: int) -> None:
        task_states = distributed.gather_objects(source.get_state())  # every rank takes part
        if not main:
            return
        save_checkpoint(
            ckpt_path,
            {
                "learner": learner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "tasks": task_states[0], "rank_tasks": task_states},
                "iteration": iteration,
                "seconds": elapsed_before + time.perf_counter() - t0,
                "config": c.to_dict(),
            },
        )

    workers = task_workers(c, learner, world, local_batch)
    low_precision = torch.bfloat16 if c.precision == "bf16" else None
    engine, threads_before = None, torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)  # one intra-op thread per worker (see metalab.parallel)
        engine = TaskThreads(learner, workers, autocast=low_precision)
    writer = _tensorboard(run_dir, log) if main else None
    result = TrainResult(learner, c, run_dir, start, 0.0)
    end = c.iterations if stop_after is None else min(stop_after, c.iterations)
    bar = tqdm(range(start, end), initial=start, total=c.iterations, disable=not (progress and main), dynamic_ncols=True, desc=f"{c.algorithm} {c.benchmark}")
    running, t0 = None, time.perf_counter()
    learner.train()
    with metrics_path.open("a") if main else contextlib.nullcontext() as log_file:
        for it in bar:
            batch = source.sample(local_batch)
            learner.set_iteration(it)
            optimizer.zero_grad(set_to_none=True)
            if engine is None:
                with autocast_context(low_precision):
                    loss, metrics = learner.meta_loss(batch)
                loss.backward()
            else:
                engine.set_iteration(it)
                loss, metrics = engine.meta_backward(batch)
            distributed.average_gradients(learner.parameters())
            optimizer.step()
            schedule.step()
            n = it + 1
            if on_step is not None:
                on_step(n, learner)
            running = metrics["loss"] if running is None else 0.98 * running + 0.02 * metrics["loss"]
            record = None
            if n % c.log_every == 0 or n == end:
                record = {"iteration": n, **metrics, "lr": optimizer.param_groups[0]["lr"]}
            if main and c.val_every and (n % c.val_every == 0 or n == c.iterations):
                result.last_val = evaluate(learner, build_source(c, "val", dataset), c.val_tasks)
                learner.train()
                record = {**(record or {"iteration": n}), f"val_{result.last_val.metric}": result.last_val.mean, "val_ci95": result.last_val.ci95}
            if record is not None and main:
                record["seconds"] = round(elapsed_before + time.perf_counter() - t0, 3)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                result.history.append(record)
                if writer is not None:
                    for key, value in record.items():
                        if key not in ("iteration", "seconds") and isinstance(value, (int, float)):
                            writer.add_scalar(key, value, n)
            postfix = {"loss": f"{running:.4f}"}
            if result.last_val is not None:
                postfix[f"val_{result.last_val.metric}"] = f"{result.last_val.mean:.4f}"
            bar.set_postfix(postfix, refresh=False)
            out_of_time = c.max_minutes is not None and distributed.agree(time.perf_counter() - t0 > 60 * c.max_minutes)
            if (c.checkpoint_every and n % c.checkpoint_every == 0) or n == end or out_of_time:
                checkpoint(n)
            result.iteration = n
            if out_of_time:
                log(f"stopping at iteration {n}: max_minutes={c.max_minutes} reached (continue with --resume)")
                break
    bar.close()
    if engine is not None:
        engine.close()
        torch.set_num_threads(threads_before)
    if writer is not None:
        writer.close()
    result.seconds = elapsed_before + time.perf_counter() - t0
    return result
