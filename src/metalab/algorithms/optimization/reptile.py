"""Reptile, expressed through the common training loop.

References:
    Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms", algorithm 2 (batched):
    theta <- theta + epsilon * mean_i (W_i - theta), where W_i is the result of k SGD steps on task i.
    Here the loop's outer optimizer receives the gradient (theta - mean_i W_i), through the surrogate
    loss sum(theta * stopgrad(theta - mean W)); with outer SGD at lr epsilon this is exactly the
    update above, and with Adam it is the paper's "treat theta - W as a gradient" variant.
    The inner loop runs on the support set (in the paper: the task's training examples).
    The paper's inner optimiser (appendix, and the authors' code) is Adam with beta1 = 0 on shuffled
    mini-batches of 10, its moments never reset between tasks (only the weights are restored after
    each task; evaluation restores the moments too): `inner_optimizer="adam"`, `inner_batch=10`.
    Here the tasks of one meta-batch start from the same moments and the learner keeps their mean
    afterwards, so that the tasks stay independent of each other's order.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from ...functional import (
    Adam,
    AdamMoments,
    UpdateRule,
    detached_params,
    forward,
    inner_loop,
    map_tasks,
    minibatch_order,
    named_params,
)
from ...losses import task_loss, task_metric
from ...tasks.episode import TaskBatch
from ..spec import AlgorithmSpec, BuildContext, Needs, register
from .maml import MAML
from .options import ReptileOptions

__all__ = ["Reptile"]


class Reptile(MAML):
    """Reptile; arguments as `MAML` (always first order), and

    Args:
        transductive: answer a task's test queries as one batch (True, the paper's transductive
            setting, as MAML does) or each beside the support set alone (False, the paper's
            non-transductive setting; `adapted_predictions`).
        inner_optimizer: "sgd" (steps of `inner_lr` times the gradient) or "adam" (`functional.Adam`
            at `inner_lr` with `inner_beta1`, its moments kept in the learner's buffers from one
            meta-batch to the next and saved with it).
        inner_batch: examples per inner step, shuffled mini-batches of the support set
            (`functional.minibatch_order`); None: the whole support set at every step.
        eval_inner_batch: the same at evaluation and prediction (default: `inner_batch`).
    """

    def __init__(
        self,
        model,
        kind,
        *,
        transductive: bool = True,
        inner_optimizer: str = "sgd",
        inner_beta1: float = 0.0,
        inner_batch: int | None = None,
        eval_inner_batch: int | None = None,
        **kwargs,
    ) -> None:
        kwargs["first_order"] = True
        super().__init__(model, kind, **kwargs)
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer must be 'sgd' or 'adam', got {inner_optimizer!r}")
        for name, value in (("inner_batch", inner_batch), ("eval_inner_batch", eval_inner_batch)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.eval_inner_batch = inner_batch if eval_inner_batch is None else eval_inner_batch
        self.transductive = transductive
        self.inner_optimizer, self.inner_beta1, self.inner_batch = inner_optimizer, inner_beta1, inner_batch
        if inner_optimizer == "adam":
            size = sum(p.numel() for p in named_params(model).values())
            self.register_buffer("inner_v", torch.zeros(size))
            self.register_buffer("inner_m", torch.zeros(size if inner_beta1 else 0))
            self.register_buffer("inner_t", torch.zeros((), dtype=torch.long))

    @property
    def task_parallel(self) -> bool:
        return self.inner_optimizer == "sgd" and super().task_parallel  # Adam's moments are state

    def _moments(self) -> AdamMoments:
        """The Adam moments as per-parameter tensors (views of the flat buffers)."""
        params = named_params(self.model)
        sizes = [p.numel() for p in params.values()]

        def split(flat: Tensor) -> dict[str, Tensor]:
            return {k: t.view_as(p) for (k, p), t in zip(params.items(), flat.split(sizes))}

        return AdamMoments(
            split(self.inner_m) if self.inner_beta1 else None, split(self.inner_v), int(self.inner_t)
        )

    def update_rule(self, detach: bool = False) -> UpdateRule:
        if self.inner_optimizer == "adam":
            return Adam(self.inner_lr, beta1=self.inner_beta1, moments=self._moments())
        return super().update_rule(detach)

    def _orders(
        self, n_tasks: int, n: int, steps: int, batch: int | None, generator: torch.Generator | None = None
    ) -> Tensor | None:
        """Each task's mini-batches, of shape (T, steps, batch), drawn here (not on task threads);
        None where every step takes the whole support set."""
        orders = [minibatch_order(n, batch, steps, generator) for _ in range(n_tasks)]
        return None if orders[0] is None else torch.stack(orders)

    def _task(self, params, sx, sy, qx, qy, *order, mode: str):
        rule = self.update_rule()
        adapted, state = inner_loop(
            self.model,
            params,
            sx,
            sy,
            kind=self.kind,
            steps=self.inner_steps,
            rule=rule,
            first_order=True,
            mode=mode,
            batches=order[0] if order else None,
            return_state=True,
        )
        out = forward(self.model, adapted, qx)
        adapted = {k: v.detach() for k, v in adapted.items()}
        moments = state if isinstance(state, AdamMoments) else None
        return (
            adapted,
            task_loss(self.kind, out, qy).detach(),
            task_metric(self.kind, out, qy, batched=False).detach(),
            {} if moments is None else {"v": moments.v, **({"m": moments.m} if moments.m else {})},
        )

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        params = named_params(self.model)
        orders = self._orders(*batch.support_x.shape[:2], self.inner_steps, self.inner_batch)
        adapted, losses, metric, moments = map_tasks(
            self._task,
            detached_params(params, self.strategy),
            (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
            + (() if orders is None else (orders,)),
            self.strategy,
        )
        if moments:  # the tasks' moments, averaged, are where the next meta-batch starts
            with torch.no_grad():
                for name in moments:
                    flat = torch.cat([moments[name][k].mean(0).flatten() for k in params])
                    getattr(self, f"inner_{name}").copy_(flat)
                self.inner_t += self.inner_steps
        surrogate = sum((p * (p - adapted[k].mean(0)).detach()).sum() for k, p in params.items())
        return surrogate, {"loss": losses.mean().item(), self.metric_name(): metric.mean().item()}

    def eval_batches(self, support_x: Tensor, steps: int) -> Tensor | None:
        """Mini-batches of `eval_inner_batch` (MAML.predict answers with the learner's moments,
        which stay as they were), drawn from a generator seeded by the support set's contents: a
        prediction is a function of its episode, whatever the global RNG's state."""
        n_tasks, n = support_x.shape[:2]
        if self.eval_inner_batch is None or n <= self.eval_inner_batch:
            return None
        data = support_x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        generator = torch.Generator().manual_seed(zlib.crc32(data))
        return self._orders(n_tasks, n, steps, self.eval_inner_batch, generator)


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
