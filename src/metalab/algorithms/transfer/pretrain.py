"""The "pretrained on all tasks" baseline of Finn et al. 2017 (section 5.1, figure 2).

One network trained by plain regression on samples pooled from all tasks (no inner loop), then, at
test time, fine-tuned on a task's support set by the same gradient steps MAML takes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...functional import SGD, adapted_predictions, forward, named_params, resolve_strategy
from ...losses import task_loss, task_metric
from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..optimization.options import SGDInnerLoop
from ..spec import AlgorithmSpec, BuildContext, Needs, register

__all__ = ["Pretrained"]


class Pretrained(MetaLearner):
    """Joint training on pooled task data, fine-tuning by SGD at test time.

    Only meaningful for regression: episodic class labels are relabelled per task, so pooling them
    trains nothing (the classification baseline pre-trains on the global classes instead).

    Args:
        model: the network trained on the pooled data.
        kind: "regression".
        inner_lr: the fine-tuning SGD step size.
        inner_steps: fine-tuning steps at test time (also the default of `eval_inner_steps`).
        eval_inner_steps: fine-tuning steps of `predict` (default `inner_steps`).
        strategy: "vmap", "loop" or "auto" (see `metalab.functional`), for the fine-tuning.
    """

    inner_loop = True

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        if kind != "regression":
            raise ValueError("the pretrained baseline pools task data and is defined for regression only")
        self.model, self.kind, self.inner_lr = model, kind, inner_lr
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.strategy = resolve_strategy(strategy, model)

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Fine-tune on each support set with `steps` SGD steps (default `eval_inner_steps`), then
        answer the queries."""
        steps = self.eval_inner_steps if steps is None else steps
        return adapted_predictions(
            self.model,
            SGD(self.inner_lr),
            support_x,
            support_y,
            query_x,
            kind=self.kind,
            steps=steps,
            strategy=self.strategy,
        )

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        out = forward(self.model, named_params(self.model), x.flatten(0, 1)).unflatten(0, x.shape[:2])
        loss = task_loss(self.kind, out, y)
        return loss, {"loss": loss.item(), "mse": task_metric(self.kind, out, y).mean().item()}


def _build(ctx: BuildContext) -> Pretrained:
    return Pretrained(ctx.backbone(), ctx.kind, **ctx.options.to_dict())


register(
    AlgorithmSpec(
        name="pretrain",
        family="transfer",
        summary="the pretrained baseline of Finn et al. 2017: pooled regression, fine-tuned at test time",
        learner=Pretrained,
        options=SGDInnerLoop,
        needs=Needs(kinds=("regression",)),
        build=_build,
    )
)
