"""Model-Agnostic Meta-Learning, second and first order.

References:
    Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
    algorithm 2: inner step eq. 1, theta'_i = theta - alpha * grad L_Ti(f_theta) on the support set;
    meta-objective sum_i L_Ti(f_theta'_i) on the query set, differentiated through the inner steps.
    First-order MAML (section 5.2) drops the second derivatives by treating the inner gradients as
    constants.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Sequence

from torch import Tensor, nn

from ...functional import (
    SGD,
    Params,
    UpdateRule,
    adapted_predictions,
    forward,
    inner_loop,
    map_tasks,
    named_params,
    resolve_strategy,
)
from ...losses import task_loss, task_metric
from ...models.conv4 import BatchStatNorm2d
from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, BuildContext, Needs, register
from .options import FirstOrderMAMLOptions, MAMLOptions

__all__ = ["MAML", "MAMLOptions", "NORM_PARAMETERS", "excluded_parameters"]

NORM_PARAMETERS = "norm"  # in `inner_exclude`: every normalisation layer's parameters


def excluded_parameters(model: nn.Module, patterns: Sequence[str]) -> frozenset[str]:
    """The names of `model`'s trainable parameters that `patterns` name: "norm" for those of its
    normalisation layers, else shell-style patterns on the names ("features.1.*")."""
    names = list(named_params(model))
    norms = {
        f"{prefix}.{k}" if prefix else k
        for prefix, m in model.named_modules()
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, BatchStatNorm2d))
        for k, p in m.named_parameters(recurse=False)
        if p.requires_grad
    }
    chosen: set[str] = set()
    for pattern in patterns:
        found = norms if pattern == NORM_PARAMETERS else {k for k in names if fnmatchcase(k, pattern)}
        if not found:
            raise ValueError(
                f"inner_exclude: {pattern!r} names none of the model's trainable parameters "
                f"({', '.join(names[:4])}, ...)"
            )
        chosen |= found
    if chosen and len(chosen) == len(names):
        raise ValueError("inner_exclude names every parameter: the inner loop would adapt nothing")
    return frozenset(chosen)


class MAML(MetaLearner):
    """MAML around any backbone, on the functional core.

    Args:
        model: the backbone f_theta; its parameters are the meta-learned initialisation.
        kind: "classification" or "regression".
        inner_lr: alpha, the inner SGD step size.
        later_inner_lr: the step size of the second and later inner steps (default: `inner_lr`).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps at test time (default: `inner_steps`).
        first_order: detach the inner gradients (first-order MAML).
        first_order_iterations: derivative-order annealing (Antoniou et al. 2019): first-order inner
            gradients for this many meta-training iterations, second order afterwards.
        strategy: "vmap", "loop" or "auto" (see `metalab.functional`).
        inner_checkpoint: recompute each second-order inner step in the outer backward instead of
            keeping its graph (`metalab.functional.inner_step`): memory no longer grows with the
            inner steps' activations; the per-task loop only (not under vmap).
        inner_exclude: parameters the inner loop uses as they are, learned by the outer loop alone
            ("norm": the normalisation layers' parameters; or patterns on parameter names): as the
            MAML authors' batch-norm shifts, which live outside their fast weights.

    Example:
        >>> from metalab.models import MLP
        >>> from metalab.tasks import SineTasks
        >>> maml = MAML(MLP(), "regression", inner_lr=0.01)
        >>> loss, metrics = maml.meta_loss(SineTasks(shots=10).sample(4))
        >>> loss.backward()
    """

    inner_loop = True
    transductive = True  # the test queries answered as one batch (Reptile offers False)

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        inner_lr: float = 0.01,
        later_inner_lr: float | None = None,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        first_order_iterations: int = 0,
        strategy: str = "auto",
        inner_checkpoint: bool = False,
        inner_exclude: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if inner_steps < 0 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise ValueError("inner steps must be >= 0")
        self.model, self.kind = model, kind
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.later_inner_lr = later_inner_lr
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        if first_order_iterations < 0:
            raise ValueError("first_order_iterations must be >= 0")
        self.first_order, self.first_order_iterations = first_order, first_order_iterations
        self.iteration = 0
        self.strategy = resolve_strategy(strategy, model)
        if inner_checkpoint and self.strategy == "vmap":
            raise ValueError(
                "inner_checkpoint works on the per-task loop; use strategy 'loop' (vmap was chosen for "
                "this model)"
            )
        self.inner_checkpoint = inner_checkpoint
        self.inner_exclude = tuple(inner_exclude)
        self.fixed_names = excluded_parameters(model, self.inner_exclude)

    def set_iteration(self, iteration: int) -> None:
        self.iteration = int(iteration)

    def first_order_now(self) -> bool:
        """First order at this iteration: always with `first_order`, else during the first
        `first_order_iterations` (derivative-order annealing)."""
        return self.first_order or self.iteration < self.first_order_iterations

    @property
    def task_parallel(self) -> bool:
        # A mean over tasks with no state written: on the per-task loop, slices may run on threads.
        return self.strategy == "loop"

    def update_rule(self, detach: bool = False) -> UpdateRule:
        """The inner update: SGD with alpha here (`later_inner_lr` after the first step); Meta-SGD and
        MAML++ learn their rates."""
        return SGD(self.inner_lr, self.later_inner_lr)

    def adapt(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        *,
        steps: int,
        first_order: bool,
        mode: str,
        rule: UpdateRule | None = None,
        module: nn.Module | None = None,
    ) -> Params:
        """Inner loop on one task's support set (x, y), of the whole model or of `module` (a part
        of it whose parameters `params` are, e.g. ANIL's head); the parameters in `fixed_names`
        are used as they are."""
        rule = self.update_rule() if rule is None else rule
        return inner_loop(
            self.model if module is None else module,
            params,
            x,
            y,
            kind=self.kind,
            steps=steps,
            rule=rule,
            first_order=first_order,
            mode=mode,
            checkpoint=self.inner_checkpoint,
            fixed_names=self.fixed_names,
        )

    def _task(self, params, sx, sy, qx, qy, *, mode: str):
        adapted = self.adapt(
            params, sx, sy, steps=self.inner_steps, first_order=self.first_order_now(), mode=mode
        )
        out = forward(self.model, adapted, qx)
        return task_loss(self.kind, out, qy), task_metric(self.kind, out, qy, batched=False).detach()

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        losses, metric = map_tasks(
            self._task,
            named_params(self.model),
            (batch.support_x, batch.support_y, batch.query_x, batch.query_y),
            self.strategy,
        )
        loss = losses.mean()
        return loss, {"loss": loss.item(), self.metric_name(): metric.mean().item()}

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Adapt on each support set with `steps` inner steps (default `eval_inner_steps`), then answer
        the queries."""
        steps = self.eval_inner_steps if steps is None else steps
        return adapted_predictions(
            self.model,
            self.update_rule(detach=True),
            support_x,
            support_y,
            query_x,
            kind=self.kind,
            steps=steps,
            strategy=self.strategy,
            transductive=self.transductive,
            batches=self.eval_batches(support_x, steps),
            fixed_names=self.fixed_names,
        )

    def eval_batches(self, support_x: Tensor, steps: int) -> Tensor | None:
        """Each test task's inner mini-batches for `adapted_predictions`, of shape (T, steps, b);
        None, as here: the whole support set at every step (Reptile draws mini-batches)."""
        return None


def _build(ctx: BuildContext, **fixed) -> MAML:
    # The options are the constructor's keyword arguments; first-order MAML fixes its own.
    return MAML(ctx.backbone(), ctx.kind, **ctx.options.to_dict(), **fixed)


register(
    AlgorithmSpec(
        name="maml",
        family="optimization",
        summary=(
            "MAML (Finn et al. 2017): an initialisation adapted by SGD, differentiated through the "
            "inner steps"
        ),
        learner=MAML,
        options=MAMLOptions,
        needs=Needs(fixed_head=True),
        build=_build,
    )
)
register(
    AlgorithmSpec(
        name="fomaml",
        family="optimization",
        summary="first-order MAML (Finn et al. 2017, section 5.2): the inner gradients treated as constants",
        learner=MAML,
        options=FirstOrderMAMLOptions,
        needs=Needs(fixed_head=True),
        build=lambda ctx: _build(ctx, first_order=True),
    )
)
