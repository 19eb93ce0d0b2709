"""Per-task loss and figure of merit, shared by every algorithm and the evaluation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["task_loss", "task_metric"]


def task_loss(kind: str, output: Tensor, target: Tensor) -> Tensor:
    """Mean loss of one task: cross-entropy on logits (classification) or MSE (regression)."""
    if kind == "classification":
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


def task_metric(kind: str, output: Tensor, target: Tensor, batched: bool = True) -> Tensor:
    """Figure of merit on the queries: accuracy (classification) or MSE (regression).

    Args:
        output: logits of shape ([T,] n, n_classes), or values of shape ([T,] n, *target_shape).
        target: class ids of shape ([T,] n), or values of shape ([T,] n, *target_shape).
        batched: whether a leading task dimension T is present.

    Returns:
        of shape (T,) if batched, else a scalar.
    """
    if kind == "classification":
        return (output.argmax(-1) == target).float().mean(-1)
    err = (output - target).pow(2)
    return err.flatten(1).mean(1) if batched else err.mean()
