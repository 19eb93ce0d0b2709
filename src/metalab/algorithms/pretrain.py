"""The "pretrained on all tasks" baseline of Finn et al. 2017 (section 5.1, figure 2).

One network trained by plain regression on samples pooled from all tasks (no inner loop), then, at
test time, fine-tuned on a task's support set by the same gradient steps MAML takes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..functional import forward, named_params
from ..tasks.episode import TaskBatch
from ..losses import task_loss, task_metric
from .maml import MAML

__all__ = ["Pretrained"]


class Pretrained(MAML):
    """Joint training on pooled task data, fine-tuning at test time; arguments as `MAML`.

    Only meaningful for regression: episodic class labels are relabelled per task, so pooling them
    trains nothing (the classification baseline pre-trains on the global classes instead).
    """

    def __init__(self, model, kind, **kwargs) -> None:
        if kind != "regression":
            raise ValueError("the pretrained baseline pools task data and is defined for regression only")
        super().__init__(model, kind, **kwargs)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        out = forward(self.model, named_params(self.model), x.flatten(0, 1)).unflatten(0, x.shape[:2])
        loss = task_loss(self.kind, out, y)
        return loss, {"loss": loss.item(), "mse": task_metric(self.kind, out, y).mean().item()}

