"""A meta-training run's set-up, its state and its steps, for the loop in `metalab.train`.

`Run.start` resolves the config and its device, joins the process group under torchrun, takes the
run folder's writer lock (rank 0; `metalab.run_folder`), loads the data (kept on the device where it
fits), builds the learner on the CPU from the seed (the same initialisation on every device) and
moves it to the device, then the outer optimizer, its schedule, the training task source and the
task threads, and restores all of it from `checkpoint.pt` when resuming; the class split of your own
data goes to split.json (checked on resumption). `Run.step` is one outer step, `Run.validate` one
validation, `Run.save` one checkpoint: the learner's, optimizer's, schedule's (and fp16's loss
scaler's) states, the RNG states (the torch generator's and every rank's task source's), the
iteration, the training seconds and the resolved config. Checkpoints hold CPU tensors only, so a run
trained on a GPU is evaluated, resumed or served on any device. A write that fails (disk full) says
which checkpoint the run keeps.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from . import distributed, run_folder
from .algorithms.base import MetaLearner
from .builders import bind_dataset, build_learner, build_optimizer, build_schedule, build_source, load_dataset
from .checkpoint import (
    CheckpointError,
    WriteError,
    atomic_write_text,
    device_free,
    load_checkpoint,
    non_finite,
    optimizer_state_mismatch,
    save_checkpoint,
    state_error,
    state_mismatch,
)
from .config import Config, ConfigError, config_from_dict
from .devices import autocast_context, autocast_dtype, check_precision, place_dataset, resolve_device
from .evaluate import EvalResult, evaluate
from .parallel import TaskThreads, available_cores
from .tasks.episode import TaskBatch
from .threads import ThreadGovernor, is_small_model

__all__ = [
    "Run",
    "CHECKPOINT",
    "BEST",
    "TOP",
    "best_note",
    "tested_best",
    "METRICS",
    "improves",
    "RESUMABLE_CHANGES",
    "SCHEDULE_KEYS",
    "resume_conflicts",
    "schedule_rates",
    "task_workers",
    "on_device",
    "metrics_lines",
    "checkpoint_config",
]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # keep_best: the weights of the best validation figure so far
TOP = "top"  # keep_top: a folder of the weights of the best validation figures, top/iteration-N.pt
METRICS = "metrics.jsonl"


def best_note(iteration: int | None) -> str:
    """The suffix an iterations figure gets where its model is best.pt's: " (best.pt: 18,000)"."""
    return "" if iteration is None else f" ({BEST}: {iteration:,})"


def tested_best(keep_best: bool, iteration: int, best_iteration: int | None, planned: int) -> int | None:
    """Which weights a run's meta-test scores: best.pt's (their iteration is returned) where the run
    kept them (`keep_best`, a best validation recorded) and has trained its `planned` iterations;
    None for its latest weights. An unfinished run is tested on the weights its resumable checkpoint
    holds, so that its figure is of the model a resumption (or a zoo copy of it) continues."""
    if not keep_best or best_iteration is None or iteration < planned:
        return None
    return best_iteration


def _best_first(entry: tuple[int, EvalResult]) -> tuple[float, int]:
    """Sort key of (iteration, validation figure) pairs: the best figure first, and among equal
    figures the earlier iteration, which `improves` keeps ahead of a later tie."""
    iteration, v = entry
    return (v.mean if v.metric == "mse" else -v.mean, iteration)


def _weights_figure(path: Path) -> tuple[int, EvalResult]:
    """The iteration and validation figure of a file of weights with their figure (best.pt, a file
    of top/), read where a resumed run continues them; a `CheckpointError` that says to move it
    away where it is damaged or lacks them."""
    try:
        state = load_checkpoint(path)
        return int(state["iteration"]), EvalResult(**state["validation"])
    except CheckpointError as e:
        raise CheckpointError(f"{e}; move it away to resume (the run keeps {CHECKPOINT})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path} lacks its iteration or validation figure ({type(e).__name__}: {e}); move it away "
            f"to resume (the run keeps {CHECKPOINT})"
        ) from None


def improves(new: EvalResult, old: EvalResult | None) -> bool:
    """Whether validation figure `new` beats `old` (none yet: any finite one): a lower MSE, a higher
    accuracy or return."""
    if not math.isfinite(new.mean):
        return False
    if old is None:
        return True
    return new.mean < old.mean if new.metric == "mse" else new.mean > old.mean


# Keys that may change between an interrupted run and its resumption without changing its result
# (`Run.restore`; `zoo.seed_run_folder` applies the same rule to a zoo model).
RESUMABLE_CHANGES = {
    "iterations",
    "max_minutes",
    "val_every",
    "checkpoint_every",
    "log_every",
    "keep_best",
    "keep_top",
    "test_tasks",
    "eval_steps",
    "threads",
    "task_threads",
    "data_dir",
    "device",
}
# The outer learning-rate schedule's keys: a resumption may change them where the new schedule gives
# the learning rate the run had at every iteration already trained (a constant rate continued as a
# step schedule whose first drop comes at or after the checkpoint's iteration), so that the config
# still describes the whole run (`resume_conflicts`).
SCHEDULE_KEYS = {"lr_schedule", "lr_decay_every", "lr_decay_factor"}


def schedule_rates(config: Config, iterations: int) -> list[float]:
    """The outer learning rate of iterations 0 .. iterations - 1 under `config`'s schedule."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.outer_lr)
    schedule = build_schedule(config, optimizer)
    rates = []
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no step is taken
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(iterations):
            rates.append(optimizer.param_groups[0]["lr"])
            schedule.step()
    return rates


def resume_conflicts(
    saved: Config, now: Config, iteration: int, *, unset_from_data: bool = False
) -> list[str]:
    """Why a checkpoint written with `saved` at `iteration` cannot be resumed with `now` (empty: it
    can): the keys that differ but for `RESUMABLE_CHANGES` and a schedule change that agrees with the
    iterations already trained. `unset_from_data`: a key unset in `now` that `saved` holds is one
    the data fill in (`Options.bind`) and does not count."""
    old, new = saved.to_dict(), now.to_dict()
    changed = sorted(
        k
        for k in {*old, *new} - RESUMABLE_CHANGES
        if old.get(k) != new.get(k) and not (unset_from_data and new.get(k) is None and k in old)
    )
    schedule = [k for k in changed if k in SCHEDULE_KEYS]
    if schedule:
        before, after = schedule_rates(saved, iteration), schedule_rates(now, iteration)
        apart = next(
            (i for i, (a, b) in enumerate(zip(before, after)) if not math.isclose(a, b, rel_tol=1e-9)), None
        )
        changed = [k for k in changed if k not in SCHEDULE_KEYS]
        if apart is not None:
            changed.append(
                f"{', '.join(schedule)} (the new schedule's learning rate at iteration {apart}, "
                f"{after[apart]:.6g}, is not the {before[apart]:.6g} the run trained with; a schedule "
                f"may change on resuming only from iteration {iteration} on)"
            )
    return changed


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


def checkpoint_config(path: Path, state: dict) -> Config:
    """The resolved config a checkpoint holds; one this version cannot run is a `CheckpointError`
    naming the checkpoint."""
    try:
        return config_from_dict(state["config"]).resolved(saved=True)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds a config this metalab cannot run: {e}") from None


def metrics_lines(path: Path, iteration: int) -> list[str]:
    """The lines of a run's metrics.jsonl up to `iteration`, where a resumed run continues it.

    A torn last line (a process killed while writing it) is dropped; any other line that is not a
    metrics record stops the resumption with its line number (a `CheckpointError`), so that
    nothing is deleted unread.
    """
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            at = record["iteration"] if isinstance(record, dict) else None
        except (ValueError, KeyError):
            at = None
        if not isinstance(at, int) or isinstance(at, bool):
            if number == len(lines):
                break  # torn by an interrupted write
            raise CheckpointError(
                f"{path}, line {number} is not a metrics record ({line[:60]!r}): fix or remove it to resume"
            )
        if at <= iteration:
            kept.append(line)
    return kept


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
    cpu_seconds_before: float = 0.0
    engine: TaskThreads | None = None
    governor: ThreadGovernor | None = None
    device: torch.device = torch.device("cpu")
    low_precision: torch.dtype | None = None
    scaler: Any = None
    lock: Any = None  # the run folder's writer lock (rank 0), released by close()
    saved_iteration: int = 0  # the iteration of the checkpoint on disk (0: none yet)
    best: tuple[int, EvalResult] | None = None  # keep_best: best.pt's iteration and validation figure
    top: list[tuple[int, EvalResult]] = field(default_factory=list)  # keep_top: top/'s, best first
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
        threads_before = torch.get_num_threads()
        if c.threads:
            torch.set_num_threads(c.threads)
        device = resolve_device(c.device, local_rank=distributed.local_rank())
        check_precision(c.precision, device)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # one GPU per process under torchrun
        distributed.setup(c.dist_timeout, device)
        rank, world = distributed.rank(), distributed.world_size()
        # One writer per run folder (metalab.run_folder): the rank that writes locks it first.
        lock = _on_main(rank == 0, lambda: run_folder.acquire(run_dir))
        try:
            return cls._start(
                c, run_dir, device, rank, world, lock, resume=resume, log=log, threads_before=threads_before
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def _start(cls, c, run_dir, device, rank, world, lock, *, resume, log, threads_before) -> Run:
        if lock is not None and lock.removed:
            log(f"removed {len(lock.removed)} temporary file(s) that an interrupted write left in {run_dir}")
            lock.removed = []
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
            if c.keep_best:  # a resumption continues the run's best.pt (read before anything is written)
                run.best = _on_main(run.main, run.best_so_far)
            if c.keep_top:  # and its top/
                run.top = _on_main(run.main, run.top_so_far) or []
        elif run.checkpoint_path.exists():
            raise CheckpointError(
                f"{run.checkpoint_path} exists: pass --resume to continue that run, or choose another run "
                "folder"
            )
        elif c.keep_top and any(run.top_dir.glob("iteration-*.pt")):
            raise CheckpointError(
                f"{run.top_dir} holds another run's weights: move them away, or choose another run folder"
            )

        def write_run_files() -> None:
            run_folder.record_split(run_dir, c, dataset, resume=resume)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(c.to_dict(), sort_keys=False))

        try:
            _on_main(run.main, write_run_files)
        except WriteError as e:
            raise WriteError(f"{e}; {run.kept()}", e.errno) from None
        run.lock = lock
        run._threads_before = threads_before
        run._start_threads()
        return run

    def _start_threads(self) -> None:
        """Task threads where they apply, and torch's intra-op threads (`metalab.threads`): unless
        `threads` is set, one per task-thread worker, one for a small model, else (on the CPU) the
        cores that other processes leave free, followed during the run."""
        c = self.config
        self.low_precision = autocast_dtype(c.precision)
        workers = task_workers(c, self.learner, self.world, self.local_batch, self.device)
        if workers > 1:
            torch.set_num_threads(1)  # one intra-op thread per worker (see metalab.parallel)
            self.engine = TaskThreads(
                self.learner, workers, autocast=self.low_precision, device_type=self.device.type
            )
        elif not c.threads and is_small_model(self.learner):
            torch.set_num_threads(1)
        elif not c.threads and self.device.type == "cpu":
            cores = available_cores()
            self.governor = ThreadGovernor(max(1, cores // self.world), cores)

    def restore(self, log: Callable[[str], None]) -> None:
        """Continue from the run folder's checkpoint (its config must match but for the budget keys and
        a schedule that agrees with the iterations already trained: `resume_conflicts`)."""
        path, c = self.checkpoint_path, self.config
        state = load_checkpoint(path, resuming=True)
        saved = checkpoint_config(path, state)
        changed = resume_conflicts(saved, c, state["iteration"])
        if changed:
            raise CheckpointError(f"cannot resume {path}: config differs in {', '.join(changed)}")
        new_schedule = any(saved.to_dict().get(k) != c.to_dict().get(k) for k in SCHEDULE_KEYS)
        bad = non_finite(state["learner"])
        if bad is not None:
            raise CheckpointError(f"cannot resume {path}: it holds non-finite weights ({bad!r})")
        try:
            problem = (
                state_mismatch(
                    self.optimizer.state_dict()["param_groups"],
                    state["optimizer"].get("param_groups"),
                    "optimizer",
                )
                or optimizer_state_mismatch(self.optimizer, state["optimizer"])
                or (
                    None
                    if new_schedule
                    else state_mismatch(self.schedule.state_dict(), state["schedule"], "schedule")
                )
            )
            if problem:  # load_state_dict would take these, and the first step would fail inside torch
                raise ValueError(problem)
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
            if new_schedule:
                self.schedule_at(state["iteration"])
            else:
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
        self.start_iteration = self.saved_iteration = state["iteration"]
        self.seconds_before = state.get("seconds", 0.0)
        self.cpu_seconds_before = state.get("cpu_seconds", 0.0)
        metrics_lines(self.run_dir / METRICS, self.start_iteration)  # its lines checked before any write
        if self.main:
            log(f"resuming {self.run_dir} at iteration {self.start_iteration}")

    def schedule_at(self, iteration: int) -> None:
        """This config's schedule from its initial rates, advanced to `iteration` (as if trained there)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.schedule = build_schedule(self.config, self.optimizer)
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no step is taken
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(iteration):
                self.schedule.step()

    def step(self, iteration: int) -> dict[str, float]:
        """One outer step on a fresh meta-batch (gradients averaged across processes); its metrics."""
        batch = on_device(self.source.sample(self.local_batch), self.device)
        self.learner.set_iteration(iteration)
        self.optimizer.zero_grad(set_to_none=True)
        if self.governor is not None:
            self.governor.follow()
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

    def save(self, iteration: int, seconds: float, cpu_seconds: float = 0.0) -> None:
        """Write the checkpoint (rank 0; every rank takes part in gathering the task sources' states)."""
        task_states = distributed.gather_objects(self.source.get_state())
        if not self.main:
            return
        try:
            self._save(iteration, seconds, task_states, cpu_seconds)
        except WriteError as e:  # disk full, quota, I/O error: the previous checkpoint is intact
            raise WriteError(f"{e}; {self.kept()}", e.errno) from None
        self.saved_iteration = iteration

    def _save(self, iteration: int, seconds: float, task_states: list, cpu_seconds: float = 0.0) -> None:
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
                    "cpu_seconds": cpu_seconds,
                    "config": self.config.to_dict(),
                }
            ),
        )

    def _weights_state(
        self, iteration: int, validation: EvalResult, seconds: float, cpu_seconds: float
    ) -> dict:
        """The learner's weights now with the validation figure they scored (best.pt, top/)."""
        return {
            "learner": self.learner.state_dict(),
            "iteration": iteration,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "config": self.config.to_dict(),
            "validation": validation.to_dict(),
        }

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST

    def save_best(self, iteration: int, validation: EvalResult, seconds: float, cpu_seconds: float) -> None:
        """Write best.pt (rank 0, which validates): the learner's weights now, with the validation
        figure they scored; a checkpoint for `eval` and `predict`, not for resuming."""
        state = self._weights_state(iteration, validation, seconds, cpu_seconds)
        try:
            save_checkpoint(self.best_path, device_free(state))
        except WriteError as e:  # written atomically: a best.pt already there is untouched
            before = f"the previous {BEST} is intact; " if self.best_path.exists() else ""
            raise WriteError(f"{e}; {before}{self.kept()}", e.errno) from None

    @property
    def top_dir(self) -> Path:
        return self.run_dir / TOP

    def top_path(self, iteration: int) -> Path:
        return self.top_dir / f"iteration-{iteration:08d}.pt"

    def keep_top(self, iteration: int, validation: EvalResult, seconds: float, cpu_seconds: float) -> None:
        """Keep the weights now in top/ (rank 0) where `validation` is among the config's `keep_top`
        best figures so far, removing the file that falls out (nothing where `keep_top` is 0). Each
        file is a checkpoint for `eval` and `predict` with its validation figure, as best.pt is."""
        keep = self.config.keep_top
        if keep < 1 or not math.isfinite(validation.mean):
            return
        if len(self.top) >= keep and not improves(validation, self.top[-1][1]):
            return
        state = self._weights_state(iteration, validation, seconds, cpu_seconds)
        try:
            self.top_dir.mkdir(exist_ok=True)
            save_checkpoint(self.top_path(iteration), device_free(state))
        except (WriteError, OSError) as e:
            raise WriteError(
                f"{e}; the files already in {self.top_dir} are intact; {self.kept()}", e.errno
            ) from None
        self.top = [t for t in self.top if t[0] != iteration] + [(iteration, validation)]
        self.top.sort(key=_best_first)
        for dropped, _ in self.top[keep:]:
            self.top_path(dropped).unlink(missing_ok=True)
        del self.top[keep:]

    def top_so_far(self) -> list[tuple[int, EvalResult]]:
        """The iterations and validation figures of the files in top/, best first, where a resumed
        run continues them."""
        paths = sorted(self.top_dir.glob("iteration-*.pt")) if self.top_dir.is_dir() else []
        return sorted(map(_weights_figure, paths), key=_best_first)

    def best_so_far(self) -> tuple[int, EvalResult] | None:
        """The iteration and validation figure of the run folder's best.pt, where a resumed run
        continues it; none before the run's first validation."""
        return _weights_figure(self.best_path) if self.best_path.exists() else None

    def kept(self) -> str:
        """What a run that stops now keeps: "the previous checkpoint (iteration N) is intact"."""
        if not self.saved_iteration:
            return "no checkpoint was written"
        return f"the previous checkpoint (iteration {self.saved_iteration}) is intact"

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        torch.set_num_threads(self._threads_before)
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _on_main(main: bool, fn: Callable[[], Any]) -> Any:
    """`fn()` on the main rank; a refusal it raises is raised on every rank (the others would
    otherwise wait for the main rank at their next collective until `dist_timeout`)."""
    result = error = None
    if main:
        try:
            result = fn()
        except (ConfigError, CheckpointError) as e:
            error = e
    error = distributed.broadcast_object(error)
    if error is not None:
        raise error
    return result
