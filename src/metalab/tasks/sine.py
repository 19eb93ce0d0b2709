"""The sine-wave regression task family of Finn et al. 2017, section 5.1.

Each task regresses y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0] and phase phi ~ U[0, pi];
inputs x ~ U[-5, 5]; K support points and a query set per task; the loss is the mean squared error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .episode import TaskBatch

__all__ = ["SineTasks"]


class SineTasks:
    """An endless source of sine-wave regression tasks.

    Args:
        shots: K, support points per task.
        queries: query points per task.
        amplitude: range of A.
        phase: range of phi.
        x_range: range of the inputs.
        seed: seeds the source's own generator (ignored if `generator` is given).
        device: where the tasks are delivered; they are drawn on the CPU with the CPU generator, so
            one seed gives the same tasks on every device.

    `sample(T)` returns a `TaskBatch` with x and y of shape (T, n, 1).

    Example:
        >>> batch = SineTasks(shots=5, queries=10, seed=0).sample(3)
        >>> tuple(batch.support_x.shape), tuple(batch.query_y.shape)
        ((3, 5, 1), (3, 10, 1))
    """

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        *,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        seed: int = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value, least in (("shots", shots, 1), ("queries", queries, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.generator = generator if generator is not None else torch.Generator("cpu").manual_seed(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def _uniform(self, shape: tuple[int, ...], low_high: tuple[float, float]) -> Tensor:
        low, high = low_high
        return torch.rand(shape, generator=self.generator, device="cpu") * (high - low) + low

    def sample_functions(self, num_tasks: int) -> tuple[Tensor, Tensor]:
        """Amplitudes and phases of `num_tasks` new tasks, each of shape (T, 1, 1)."""
        return self._uniform((num_tasks, 1, 1), self.amplitude), self._uniform((num_tasks, 1, 1), self.phase)

    @staticmethod
    def evaluate(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        return amplitude * torch.sin(x - phase)

    def sample(self, num_tasks: int) -> TaskBatch:
        amplitude, phase = self.sample_functions(num_tasks)
        x = self._uniform((num_tasks, self.shots + self.queries, 1), self.x_range)
        y = self.evaluate(amplitude, phase, x)
        k = self.shots
        x, y = x.to(self.device), y.to(self.device)
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)
