"""The learner contract: the small surface every algorithm exposes to the one training loop.

A `MetaLearner` is an `nn.Module` whose parameters are the meta-parameters (what the outer optimizer
updates). The training loop, evaluation, checkpoints and the CLI use exactly this surface, nothing
found by probing:

- `meta_loss(batch)`: a scalar loss over what the training source gives (a `TaskBatch` of
  episodes, or of plain mini-batches where `training_source` is "batches"), differentiable w.r.t.
  the meta-parameters, and a dict of float metrics ("loss" and the task metric) for logging;
- `predict(support_x, support_y, query_x, steps=None)`: adapt to each task's support set, then
  answer its queries; `steps` is the number of inner steps for learners with an inner loop;
- `set_iteration(iteration)`: told the meta-training iteration before every `meta_loss`, for
  learners with schedules over training;
- the class attributes `kind`, `inner_loop` and `training_source`, and `task_parallel`;
- `owns_outer_step` and `outer_step(loss)`, for learners that update their parameters themselves
  (TRPO in `metalab.rl`): the loop then calls `meta_loss` and `outer_step` instead of its
  optimizer's backward pass and step.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from ..losses import task_loss, task_metric
from ..tasks.episode import TaskBatch

__all__ = ["MetaLearner", "task_loss", "task_metric"]


class MetaLearner(nn.Module, abc.ABC):
    """Base class of every algorithm.

    Attributes:
        kind: "classification" (integer labels, logits out, accuracy), "regression" (MSE) or "rl"
            (tasks are environments, scored by `evaluate_batch(batch, steps=...)`: mean returns).
        inner_loop: `predict(..., steps=k)` adapts with k inner steps (evaluation reports figures
            per step count); without an inner loop `steps` is ignored.
        training_source: "episodes" (N-way K-shot tasks) or "batches" (plain mini-batches of the
            meta-train classes with their global labels, for pre-training a classifier).
    """

    kind: str = "classification"
    inner_loop: bool = False
    training_source: str = "episodes"
    owns_outer_step: bool = False

    @property
    def task_parallel(self) -> bool:
        """True where `meta_loss` is a mean over tasks computed task by task, writing no state and
        drawing no random numbers, so that slices of a meta-batch may run on separate threads
        (`metalab.parallel.TaskThreads`)."""
        return False

    @abc.abstractmethod
    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """The meta-objective of one meta-batch and its metrics ({"loss": ..., metric_name(): ...})."""

    @abc.abstractmethod
    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Adapt to each task's support set and answer its queries.

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support) or (T, n_support, *target_shape).
            query_x: of shape (T, n_query, *input_shape).
            steps: inner steps (learners with an inner loop; default: their evaluation setting).

        Returns:
            logits of shape (T, n_query, n_classes), or values of shape (T, n_query, *target_shape).
        """

    def outer_step(self, loss: Tensor) -> dict[str, float]:
        """Update the parameters from `loss`, the `meta_loss` just computed, and return metrics to
        log; called by the training loop instead of its optimizer where `owns_outer_step` is true."""
        raise NotImplementedError(f"{type(self).__name__} leaves its outer step to the training loop")

    def set_iteration(self, iteration: int) -> None:
        """Told the 0-based meta-training iteration before each `meta_loss` by the training loop.

        A no-op here; learners with schedules over training (MAML++'s multi-step loss weights and
        derivative-order annealing) override it. Resuming a run calls it again, so no state is saved.
        """

    def metric_name(self) -> str:
        return "accuracy" if self.kind == "classification" else "mse"

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch) -> Tensor:
        """Per-task accuracy or MSE on the queries after adapting on the support, of shape (T,)."""
        return task_metric(
            self.kind, self.predict(batch.support_x, batch.support_y, batch.query_x), batch.query_y
        )
