"""The task source of the RL benchmarks: a meta-batch is the tasks' parameters (goals, goal
velocities or directions) and a seed for the episodes sampled on them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .envs import RL_BENCHMARKS, sample_tasks

__all__ = ["RLTaskBatch", "RLTasks"]


@dataclass(frozen=True)
class RLTaskBatch:
    """T tasks of an RL benchmark.

    Attributes:
        tasks: the task parameters, of shape (T, task_dim) (on the CPU, where the environments run).
        seed: seeds the episodes' randomness (initial states, action noise), so that a batch is
            sampled the same way on every device and every time it is evaluated.
    """

    tasks: Tensor
    seed: int

    @property
    def num_tasks(self) -> int:
        return self.tasks.shape[0]

    def to(self, device) -> RLTaskBatch:
        return self  # the environments run on the CPU; the learner moves observations itself


class RLTasks:
    """Draws meta-batches of tasks of `benchmark` from a seeded generator.

    Example:
        >>> batch = RLTasks("navigation", seed=0).sample(20)
        >>> batch.tasks.shape
        torch.Size([20, 2])
    """

    def __init__(self, benchmark: str, seed: int = 0) -> None:
        if benchmark not in RL_BENCHMARKS:
            raise ValueError(f"unknown RL benchmark {benchmark!r}; one of {', '.join(RL_BENCHMARKS)}")
        self.benchmark = benchmark
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, num_tasks: int) -> RLTaskBatch:
        tasks = sample_tasks(self.benchmark, num_tasks, self.generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return RLTaskBatch(tasks, seed)

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)
