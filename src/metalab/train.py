"""The one meta-training loop, for every algorithm.

It knows nothing of any algorithm: each iteration it takes one outer step (`Run.step`), validates
every `val_every` iterations, appends metrics to `metrics.jsonl` (and TensorBoard, where installed),
and writes an atomic checkpoint every `checkpoint_every` iterations and at the end. A run resumed
from its checkpoint ends with exactly the parameters of an uninterrupted run with the same seed.
The run's set-up and state live in `metalab.run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import distributed, zoo
from .algorithms.base import MetaLearner
from .builders import build_learner
from .checkpoint import (
    CheckpointError,
    WriteError,
    atomic_write_text,
    load_checkpoint,
    non_finite,
    state_error,
    write_error,
)
from .config import Config, config_from_dict
from .devices import check_device_name, resolve_device
from .evaluate import EvalResult
from .notices import once_per_machine
from .run import BEST, CHECKPOINT, METRICS, Run, checkpoint_config, improves, metrics_lines, task_workers

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "train",
    "final_lines",
    "learner_from_checkpoint",
    "learner_on_device",
    "task_workers",
    "CHECKPOINT",
    "BEST",
    "METRICS",
]


class TrainingDiverged(ValueError):
    """The meta-loss or a parameter became non-finite; the last checkpoint written is kept."""


def _check_finite(run: Run, iteration: int, loss: float, saved: int) -> None:
    kept = f"{run.checkpoint_path} keeps iteration {saved}" if saved else "no checkpoint was written"
    hint = "lower outer_lr (or the inner learning rate) and train again"
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at iteration {iteration}: the meta-loss is {loss}; {kept}; {hint}"
        )
    for name, p in run.learner.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingDiverged(
                f"training diverged at iteration {iteration}: parameter {name!r} is not finite; "
                f"{kept}; {hint}"
            )


@dataclass
class TrainResult:
    learner: MetaLearner
    config: Config
    run_dir: Path
    iteration: int
    seconds: float
    last_val: EvalResult | None = None
    history: list = field(default_factory=list)
    val_iteration: int | None = None  # the iteration `last_val` was measured at
    cpu_seconds: float = 0.0  # CPU time of the training process (all its threads), across resumptions
    best_iteration: int | None = None  # keep_best: the iteration of best.pt's weights
    best_val: EvalResult | None = None  # and their validation figure


def learner_from_checkpoint(
    path: str | Path, device: torch.device | str | None = None
) -> tuple[MetaLearner, Config, dict]:
    """Rebuild the learner a checkpoint was saved from, with its weights, on `device` (default: the
    CPU; checkpoints hold CPU tensors, so any device will do). `path` may name a model of the zoo,
    `zoo:NAME` (`metalab.zoo`): its config then holds the test settings of the model's row."""
    path, row = zoo.lookup(path)
    state = load_checkpoint(path)
    config = checkpoint_config(path, state)
    if row:
        config = config_from_dict(row, config).resolved(saved=True)
    learner = build_learner(config)
    bad = non_finite(state["learner"])
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({bad!r}): its run diverged")
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {state_error(e)}") from None
    if device is not None:
        learner = learner.to(device)
    return learner, config, state


def learner_on_device(path: str | Path, device: str | None = None) -> tuple[MetaLearner, Config, dict]:
    """`learner_from_checkpoint` on `device` (auto | cpu | cuda | cuda:N | mps; default: the
    checkpoint's own `device` key), checked on this machine: a device it lacks is a `ConfigError`.
    The config returned holds the device asked for."""
    learner, config, state = learner_from_checkpoint(path)
    if device is not None:
        config = dataclasses.replace(config, device=check_device_name(device))
    return learner.to(resolve_device(config.device)), config, state


class MetricsLog:
    """Training and validation records: appended to metrics.jsonl and, where the package is
    installed, to TensorBoard event files in the run folder (rank 0 only; others write nothing)."""

    def __init__(self, run: Run, log: Callable[[str], None]) -> None:
        self.path, self.history, self.run = run.run_dir / METRICS, [], run
        self.file = self.writer = None
        self.failed = False
        if not run.main:
            return
        try:
            if run.start_iteration:
                _truncate_metrics(self.path, run.start_iteration)
            self.file = self.path.open("a")
        except OSError as e:
            raise self._error(e) from None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if once_per_machine("tensorboard-missing"):
                log(
                    "tensorboard is not installed: metrics go to metrics.jsonl only (pip install "
                    "'metalab[tracking]'; said once on this machine)"
                )
        else:
            self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            self.failed = True  # a torn last line, which a resumption drops
            raise self._error(e) from None
        self.history.append(record)
        if self.writer is not None:
            for name, value in record.items():
                if name not in ("iteration", "seconds", "cpu_seconds") and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["iteration"])

    def _error(self, e: OSError) -> WriteError:
        """Disk full, quota, I/O error: one line naming the file and what the run keeps."""
        error = e if isinstance(e, WriteError) else write_error(self.path, e)
        return WriteError(f"{error}; {self.run.kept()}", error.errno)

    def close(self) -> None:
        for handle in (self.file, self.writer):
            if handle is not None:
                try:
                    handle.close()
                except OSError:
                    if not self.failed:  # after a failed write, its error is the one reported
                        raise


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop the lines an interrupted run logged after its last checkpoint (they will be redone);
    see `metalab.run.metrics_lines`."""
    if path.exists():
        atomic_write_text(path, "".join(line + "\n" for line in metrics_lines(path, iteration)))


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
    run = Run.start(config, run_dir, resume=resume, log=log)
    c, start = run.config, run.start_iteration
    end = c.iterations if stop_after is None else min(stop_after, c.iterations)
    running, t0, cpu0, saved = None, time.perf_counter(), time.process_time(), start

    def seconds() -> float:
        return run.seconds_before + time.perf_counter() - t0

    def cpu_seconds() -> float:  # CPU time of this process, all its threads, across resumptions
        return run.cpu_seconds_before + time.process_time() - cpu0

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(run.close)
        metrics_log = MetricsLog(run, log)
        cleanup.callback(metrics_log.close)
        result = TrainResult(run.learner, c, run.run_dir, start, 0.0, history=metrics_log.history)
        result.best_iteration, result.best_val = run.best or (None, None)  # keep_best, resumed
        bar = tqdm(
            range(start, end),
            initial=start,
            total=c.iterations,
            disable=not (progress and run.main),
            dynamic_ncols=True,
            desc=f"{c.algorithm} {c.benchmark}",
        )
        run.learner.train()
        for it in bar:
            metrics = run.step(it)
            n = it + 1
            if not math.isfinite(metrics["loss"]):
                _check_finite(run, n, metrics["loss"], saved)
            if on_step is not None:
                on_step(n, run.learner)
            running = metrics["loss"] if running is None else 0.98 * running + 0.02 * metrics["loss"]
            record = (
                {"iteration": n, **metrics, "lr": run.optimizer.param_groups[0]["lr"]}
                if n % c.log_every == 0 or n == end
                else None
            )
            if run.main and c.val_every and (n % c.val_every == 0 or n == c.iterations):
                v = result.last_val = run.validate()
                result.val_iteration = n
                record = {**(record or {"iteration": n}), f"val_{v.metric}": v.mean, "val_ci95": v.ci95}
                if c.keep_best and improves(v, result.best_val):
                    run.save_best(n, v, seconds(), cpu_seconds())
                    result.best_iteration, result.best_val = n, v
                run.keep_top(n, v, seconds(), cpu_seconds())  # a no-op without keep_top
            if record is not None:
                metrics_log.write(
                    {**record, "seconds": round(seconds(), 3), "cpu_seconds": round(cpu_seconds(), 3)}
                )
            bar.set_postfix({"loss": f"{running:.4f}", **_val_postfix(result.last_val)}, refresh=False)
            out_of_time = c.max_minutes is not None and distributed.agree(
                time.perf_counter() - t0 > 60 * c.max_minutes
            )
            if (c.checkpoint_every and n % c.checkpoint_every == 0) or n == end or out_of_time:
                _check_finite(run, n, metrics["loss"], saved)  # a checkpoint only of finite weights
                run.save(n, seconds(), cpu_seconds())
                saved = n
            result.iteration = n
            if out_of_time:
                log(
                    f"stopping at iteration {n} of {c.iterations}: max_minutes={c.max_minutes} reached "
                    "(continue with --resume)"
                )
                break
        bar.close()
    result.seconds, result.cpu_seconds = seconds(), cpu_seconds()
    return result


def final_lines(result: TrainResult) -> str:
    """What a finished run says: its checkpoint and the iteration of its validation figure, which is
    never quoted as the checkpoint's own when it was measured at an earlier iteration."""
    c, n = result.config, result.iteration
    of = "" if n == c.iterations else f" of {c.iterations}"
    text = (
        f"trained {c.algorithm} on {c.benchmark} for {n}{of} iterations in {result.seconds:.0f} s -> "
        f"{result.run_dir / CHECKPOINT} (iteration {n})"
    )
    if result.best_iteration is not None:
        text += f"; {result.run_dir / BEST} keeps iteration {result.best_iteration}, the best validation"
    v = result.last_val
    if v is not None:
        at = result.val_iteration
        text += (
            f"; validation at iteration {at}: {v}"
            if at == n
            else f"; last validation at iteration {at}, before the checkpoint's: {v}"
        )
    return text


def _val_postfix(last: EvalResult | None) -> dict[str, str]:
    return {} if last is None else {f"val_{last.metric}": f"{last.mean:.4f}"}
