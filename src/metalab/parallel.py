"""Task-parallel meta-gradients: the meta-batch split across worker threads, one CPU core each.

Two cores can share a meta-batch's work in two ways: every operation split in halves (torch's
intra-op threads), or every *task* on one core. Conv-4's small convolutions and the many
element-wise ops of a second-order pass split poorly, so the second wins: each worker thread takes
a contiguous slice of the tasks, runs the learner's own `meta_loss` on it with one intra-op thread,
and computes that slice's meta-gradient with `torch.autograd.grad`; the main thread sums the
slices' gradients in a fixed order. Within its slice a worker differentiates one task at a time,
so it holds one task's graph at a time: memory grows with the number of workers, not with the
meta-batch (the per-task loop keeps every task's graph until its single backward pass). PyTorch
operators release the GIL, so the workers run truly in parallel. docs/engine.md gives their
speed against the loop, docs/performance.md against the peers (`python benchmarks/perf.py`).

Each worker owns a replica of the learner (`copy.deepcopy`), refreshed from the learner's parameters
and buffers before every step: `torch.func.functional_call` swaps a module's parameters while it
runs, so two threads must never share a module. The result is the loop's meta-gradient up to
floating-point summation order (tests/test_parallel.py checks it in float64).

It applies to learners whose meta-loss is a mean over tasks with no state written during the
forward pass and no random numbers drawn in it (`MetaLearner.task_parallel`): MAML, first-order
MAML, Meta-SGD, ANIL, MAML++ and Reptile. The replicas live on the learner's device and the forward
passes run under that device's autocast; with fp16's loss scaling each slice's gradient is that of
the scaled loss, as a plain backward pass of the scaled meta-loss would give.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor

from .algorithms.base import MetaLearner
from .devices import autocast_context
from .tasks.episode import TaskBatch

__all__ = ["TaskThreads", "available_cores"]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TaskThreads:
    """Computes a learner's meta-gradient with `workers` threads, each on a slice of the tasks.

    Args:
        learner: a `MetaLearner` with `task_parallel = True`.
        workers: number of threads (at most one per task is used).
        autocast: run the forward passes under autocast to this dtype (torch.bfloat16, torch.float16),
            or None.
        device_type: autocast's device type, that of the learner's parameters ("cpu", "cuda", "mps").

    Example:
        >>> engine = TaskThreads(maml, workers=2)
        >>> optimizer.zero_grad()
        >>> loss, metrics = engine.meta_backward(batch)  # fills p.grad like meta_loss(batch)[0].backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        learner: MetaLearner,
        workers: int,
        autocast: torch.dtype | None = None,
        device_type: str = "cpu",
    ) -> None:
        if not learner.task_parallel:
            raise ValueError(
                f"{type(learner).__name__} does not support task-parallel threads (its meta-loss is not a "
                "plain mean over tasks)"
            )
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.learner, self.workers, self.autocast, self.device_type = learner, workers, autocast, device_type
        self._replicas = [copy.deepcopy(learner) for _ in range(workers)]
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="metalab-task")
        self._iteration = 0

    def set_iteration(self, iteration: int) -> None:
        """Forwarded to the replicas before their `meta_loss` (MAML++'s schedules)."""
        self._iteration = iteration

    def _refresh(self, replica: MetaLearner) -> None:
        with torch.no_grad():
            for mine, theirs in zip(replica.parameters(), self.learner.parameters()):
                mine.copy_(theirs)
            for mine, theirs in zip(replica.buffers(), self.learner.buffers()):
                mine.copy_(theirs)
        replica.train(self.learner.training)
        replica.set_iteration(self._iteration)

    def _slice_gradients(self, index: int, batch: TaskBatch, lo: int, hi: int, scale):
        """Task by task, so a worker holds one task's graph at a time (memory independent of T)."""
        replica = self._replicas[index]
        self._refresh(replica)
        params = [p for p in replica.parameters() if p.requires_grad]
        grads, loss_sum, metric_sums = [None] * len(params), 0.0, {}
        for t in range(lo, hi):
            with autocast_context(self.device_type, self.autocast):  # autocast state is per thread
                loss, metrics = replica.meta_loss(batch[t : t + 1])
            # This task's share of the mean over all tasks (of the scaled loss under fp16).
            share = loss / batch.num_tasks
            share = share if scale is None else scale(share)
            for j, g in enumerate(torch.autograd.grad(share, params, allow_unused=True)):
                if g is not None:
                    grads[j] = g if grads[j] is None else grads[j] + g
            loss_sum += loss.detach()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + v
        return loss_sum, metric_sums, grads

    def meta_backward(
        self, batch: TaskBatch, scale: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Accumulate the meta-gradient of `batch` into the learner's `.grad` fields.

        Args:
            scale: multiplies each loss before its backward pass (fp16: `GradScaler.scale`, already
                set up on the learner's device), or None.

        Returns:
            the meta-loss (detached) and the metrics, both averaged over all tasks.
        """
        tasks = batch.num_tasks
        n = min(self.workers, tasks)
        bounds = [round(i * tasks / n) for i in range(n + 1)]
        results = list(
            self._pool.map(
                lambda i: self._slice_gradients(i, batch, bounds[i], bounds[i + 1], scale), range(n)
            )
        )
        params = [p for p in self.learner.parameters() if p.requires_grad]
        for j, p in enumerate(params):
            parts = [r[2][j] for r in results if r[2][j] is not None]
            if not parts:
                continue
            total = parts[0].clone()
            for g in parts[1:]:
                total += g
            p.grad = total if p.grad is None else p.grad + total
        loss = sum(r[0] for r in results) / tasks
        metrics = {k: sum(r[1][k] for r in results) / tasks for k in results[0][1]}
        return loss, metrics

    def close(self) -> None:
        self._pool.shutdown(wait=True)
