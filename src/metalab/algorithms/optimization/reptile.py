"""Reptile, expressed through the common training loop.

References:
    Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms", algorithm 2 (batched):
    theta <- theta + epsilon * mean_i (W_i - theta), where W_i is the result of k SGD steps on task i.
    Here the loop's outer optimizer receives the gradient (theta - mean_i W_i), through the surrogate
    loss sum(theta * stopgrad(theta - mean W)); with outer SGD at lr epsilon this is exactly the
    update above, and with Adam it is the paper's "treat theta - W as a gradient" variant.
    The inner loop runs on the support set (in the paper: the task's training examples).
"""

from __future__ import annotations

from torch import Tensor

from ...functional import detached_params, forward, map_tasks, named_params
from ...losses import task_loss, task_metric
from ...tasks.episode import TaskBatch
from ..spec import AlgorithmSpec, BuildContext, Needs, register
from .maml import MAML
from .options import ReptileOptions

__all__ = ["Reptile"]


class Reptile(MAML):
    """Reptile; arguments as `MAML` (always first order), and `transductive`: answer a task's test
    queries as one batch (True, the paper's transductive setting, as MAML does) or each beside the
    support set alone (False, the paper's non-transductive setting; `adapted_predictions`)."""

    def __init__(self, model, kind, *, transductive: bool = True, **kwargs) -> None:
        kwargs["first_order"] = True
        super().__init__(model, kind, **kwargs)
        self.transductive = transductive

    def _task(self, params, sx, sy, qx, qy, *, mode: str):
        adapted = self.adapt(params, sx, sy, steps=self.inner_steps, first_order=True, mode=mode)
        out = forward(self.model, adapted, qx)
        adapted = {k: v.detach() for k, v in adapted.items()}
        return (
            adapted,
            task_loss(self.kind, out, qy).detach(),
            task_metric(self.kind, out, qy, batched=False).detach(),
        )

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        params = named_params(self.model)
        adapted, losses, metric = map_tasks(
            self._task,
            detached_params(params, self.strategy),
            (batch.support_x, batch.support_y, batch.query_x, batch.query_y),
            self.strategy,
        )
        surrogate = sum((p * (p - adapted[k].mean(0)).detach()).sum() for k, p in params.items())
        return surrogate, {"loss": losses.mean().item(), self.metric_name(): metric.mean().item()}


def _build(ctx: BuildContext) -> Reptile:
    return Reptile(ctx.backbone(), ctx.kind, **ctx.options.to_dict())


register(
    AlgorithmSpec(
        name="reptile",
        family="optimization",
        summary="Reptile (Nichol et al. 2018): move the initialisation toward each task's adapted weights",
        learner=Reptile,
        options=ReptileOptions,
        needs=Needs(fixed_head=True),
        build=_build,
    )
)
