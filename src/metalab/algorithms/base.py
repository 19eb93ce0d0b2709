"""The small surface every algorithm exposes to the one training loop.

A `MetaLearner` is an `nn.Module` whose parameters are the meta-parameters (what the outer optimizer
updates). It answers two questions:

- `meta_loss(batch)`: a scalar loss over a `TaskBatch`, differentiable w.r.t. the meta-parameters,
  and a dict of float metrics (e.g. query accuracy) for logging;
- `predict(support_x, support_y, query_x)`: adapt to each task's support set, then answer its queries.

The training loop, evaluation, checkpoints and the CLI know nothing else about an algorithm.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..losses import task_loss, task_metric
from ..tasks.episode import TaskBatch

__all__ = ["MetaLearner", "task_loss", "task_metric"]


class MetaLearner(nn.Module):
    """Base class of every algorithm.

    Attributes:
        kind: "classification" (integer labels, logits out, accuracy) or "regression" (MSE).
    """

    kind: str = "classification"
    # True where `meta_loss` is a mean over tasks that writes no state and draws no random numbers,
    # so slices of a meta-batch may run on separate threads (`metalab.parallel.TaskThreads`).
    task_parallel: bool = False

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def set_iteration(self, iteration: int) -> None:
        """Told the 0-based meta-training iteration before each `meta_loss` by the training loop.

        A no-op here; learners with schedules over training (MAML++'s multi-step loss weights and
        derivative-order annealing) override it. Resuming a run calls it again, so no state is saved.
        """

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Adapt to each task's support set and answer its queries.

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support) or (T, n_support, *target_shape).
            query_x: of shape (T, n_query, *input_shape).

        Returns:
            logits of shape (T, n_query, n_classes), or values of shape (T, n_query, *target_shape).
        """
        raise NotImplementedError

    def metric_name(self) -> str:
        return "accuracy" if self.kind == "classification" else "mse"

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch) -> Tensor:
        """Per-task accuracy or MSE on the queries after adapting on the support, of shape (T,)."""
        return task_metric(self.kind, self.predict(batch.support_x, batch.support_y, batch.query_x), batch.query_y)
