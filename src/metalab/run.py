"""A meta-training run's set-up, its state and its steps, for the loop in `metalab.train`.

`Run.start` resolves the config and its device, joins the process group under torchrun, loads the
data (kept on the device where it fits), builds the learner on the CPU from the seed (the same
initialisation on every device) and moves it to the device, then the outer optimizer, its schedule,
the training task source and the task threads, and restores all of it from `checkpoint.pt` when
resuming. `Run.step` is one outer step, `Run.validate` one validation, `Run.save` one checkpoint:
the learner's, optimizer's, schedule's (and fp16's loss scaler's) states, the RNG states (the torch
generator's and every rank's task source's), the iteration, the training seconds and the resolved
config. Checkpoints hold CPU tensors only, so a run trained on a GPU is evaluated, resumed or
served on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from . import distributed
from .algorithms.base import MetaLearner
from .builders import bind_dataset, build_learner, build_optimizer, build_schedule, build_source, load_dataset
from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    device_free,
    load_checkpoint,
    save_checkpoint,
    state_error,
)
from .config import Config, ConfigError, config_from_dict
from .devices import autocast_context, autocast_dtype, check_precision, place_dataset, resolve_device
from .evaluate import EvalResult, evaluate
from .parallel import TaskThreads, available_cores
from .tasks.episode import TaskBatch

__all__ = ["Run", "CHECKPOINT", "METRICS", "task_workers", "on_device"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# Keys that may change between an interrupted run and its resumption without changing its result.
_RESUMABLE_CHANGES = {
    "iterations",
    "max_minutes",
    "val_every",
    "checkpoint_every",
    "log_every",
    "test_tasks",
    "eval_steps",
    "threads",
    "task_threads",
    "data_dir",
    "device",
}


def task_workers(
    c: Config,
    learner: MetaLearner,
    world: int = 1,
    local_batch: int | None = None,
    device: torch.device | None = None,
) -> int:
    """How many task-parallel worker threads a run uses (1: none); see `Config.task_threads`.

    On the CPU the default is one per core; on a GPU the default is none (the threads would share
    one device, and nothing has measured them there), unless `task_threads` asks for them.
    """
    if not learner.task_parallel:
        return 1
    if device is not None and device.type != "cpu" and not c.task_threads:
        return 1
    workers = c.task_threads or c.threads or max(1, available_cores() // world)
    return max(1, min(workers, local_batch or c.meta_batch))


def on_device(batch: TaskBatch, device: torch.device) -> TaskBatch:
    """`batch` on `device` (as it is, where its source already delivers there, or where it is not a
    `TaskBatch`: RL task parameters stay with the environments, on the CPU)."""
    if not isinstance(batch, TaskBatch) or batch.support_x.device == device:
        return batch
    return batch.to(device)


@dataclass
class Run:
    """Everything one process of a run holds; `Run.start` makes it."""

    config: Config
    run_dir: Path
    learner: MetaLearner
    optimizer: torch.optim.Optimizer
    schedule: Any
    source: Any
    dataset: Any
    rank: int = 0
    world: int = 1
    start_iteration: int = 0
    seconds_before: float = 0.0
    engine: TaskThreads | None = None
    device: torch.device = torch.device("cpu")
    low_precision: torch.dtype | None = None
    scaler: Any = None
    _threads_before: int = field(default=0, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def local_batch(self) -> int:
        return self.config.meta_batch // self.world

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @classmethod
    def start(cls, config: Config, run_dir: str | Path, *, resume: bool, log: Callable[[str], None]) -> Run:
        c = config.resolved()
        run_dir = Path(run_dir)
        if c.threads:
            torch.set_num_threads(c.threads)
        device = resolve_device(c.device, local_rank=distributed.local_rank())
        check_precision(c.precision, device)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # one GPU per process under torchrun
        distributed.setup(c.dist_timeout, device)
        rank, world = distributed.rank(), distributed.world_size()
        if c.meta_batch % world:
            raise ConfigError(
                f"config key 'meta_batch' ({c.meta_batch}) must be divisible by the number of processes "
                f"({world})"
            )
        # The data first: some config keys come from it (a CSV's feature columns size the model).
        dataset = load_dataset(c)
        c = bind_dataset(c, dataset)
        dataset = place_dataset(dataset, device)
        torch.manual_seed(c.seed)
        learner = build_learner(c).to(device)  # initialised on the CPU: the same weights everywhere
        if learner.owns_outer_step and (world > 1 or c.precision != "fp32"):
            raise ConfigError(
                f"{c.algorithm} takes its own outer step (TRPO, or none for random_rl): it runs in one "
                "process in fp32 (maml_rl and pretrained_rl with trpo false use the outer_optimizer)"
            )
        optimizer = build_optimizer(c, learner)
        run = cls(
            c,
            run_dir,
            learner,
            optimizer,
            build_schedule(c, optimizer),
            build_source(c, "train", dataset, rank=rank, device=device),
            dataset,
            rank,
            world,
            device=device,
            # fp16 gradients underflow without loss scaling; the scaler skips steps with inf/nan.
            scaler=torch.amp.GradScaler(device.type) if c.precision == "fp16" else None,
        )
        if resume:
            run.restore(log)
        elif run.checkpoint_path.exists():
            raise CheckpointError(
                f"{run.checkpoint_path} exists: pass --resume to continue that run, or choose another run "
                "folder"
            )
        if run.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(c.to_dict(), sort_keys=False))
        run._start_threads()
        return run

    def _start_threads(self) -> None:
        self.low_precision = autocast_dtype(self.config.precision)
        workers = task_workers(self.config, self.learner, self.world, self.local_batch, self.device)
        self._threads_before = torch.get_num_threads()
        if workers > 1:
            torch.set_num_threads(1)  # one intra-op thread per worker (see metalab.parallel)
            self.engine = TaskThreads(
                self.learner, workers, autocast=self.low_precision, device_type=self.device.type
            )

    def restore(self, log: Callable[[str], None]) -> None:
        """Continue from the run folder's checkpoint (its config must match but for the budget keys)."""
        path, c = self.checkpoint_path, self.config
        state = load_checkpoint(path, resuming=True)
        saved = config_from_dict(state["config"]).resolved(saved=True).to_dict()
        now = c.to_dict()
        changed = [k for k in {*saved, *now} - _RESUMABLE_CHANGES if saved.get(k) != now.get(k)]
        if changed:
            raise CheckpointError(f"cannot resume {path}: config differs in {', '.join(sorted(changed))}")
        try:
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            task_states = state["rng"].get("rank_tasks", [state["rng"]["tasks"]])
            if len(task_states) != self.world:
                raise CheckpointError(
                    f"cannot resume {path}: it was written by {len(task_states)} process(es), this run has "
                    f"{self.world}"
                )
            self.source.set_state(task_states[self.rank])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(
                f"cannot resume {path}: its saved state does not fit this run ({state_error(e)})"
            ) from None
        self.start_iteration = state["iteration"]
        self.seconds_before = state.get("seconds", 0.0)
        if self.main:
            log(f"resuming {self.run_dir} at iteration {self.start_iteration}")

    def step(self, iteration: int) -> dict[str, float]:
        """One outer step on a fresh meta-batch (gradients averaged across processes); its metrics."""
        batch = on_device(self.source.sample(self.local_batch), self.device)
        self.learner.set_iteration(iteration)
        self.optimizer.zero_grad(set_to_none=True)
        if self.learner.owns_outer_step:  # e.g. TRPO: the learner updates its parameters itself
            loss, metrics = self.learner.meta_loss(batch)
            return {**metrics, **self.learner.outer_step(loss)}
        scaler = self.scaler
        if self.engine is None:
            with autocast_context(self.device.type, self.low_precision):
                loss, metrics = self.learner.meta_loss(batch)
            # fp16: the meta-loss is scaled before the backward pass, through the inner steps'
            # second-order terms too (each is linear in the gradient flowing back).
            (loss if scaler is None else scaler.scale(loss)).backward()
        else:
            self.engine.set_iteration(iteration)
            if scaler is not None:
                scaler.scale(torch.zeros((), device=self.device))  # sets the scale up before the threads
            loss, metrics = self.engine.meta_backward(batch, scale=None if scaler is None else scaler.scale)
        distributed.average_gradients(self.learner.parameters())
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)  # unscales, and skips the step if a gradient is inf or nan
            scaler.update()
        self.schedule.step()
        return metrics

    def validate(self) -> EvalResult:
        source = build_source(self.config, "val", self.dataset, device=self.device)
        result = evaluate(self.learner, source, self.config.val_tasks)
        self.learner.train()
        return result

    def save(self, iteration: int, seconds: float) -> None:
        """Write the checkpoint (rank 0; every rank takes part in gathering the task sources' states)."""
        task_states = distributed.gather_objects(self.source.get_state())
        if not self.main:
            return
        save_checkpoint(
            self.checkpoint_path,
            device_free(
                {
                    "learner": self.learner.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "tasks": task_states[0],
                        "rank_tasks": task_states,
                    },
                    "iteration": iteration,
                    "seconds": seconds,
                    "config": self.config.to_dict(),
                }
            ),
        )

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            torch.set_num_threads(self._threads_before)
