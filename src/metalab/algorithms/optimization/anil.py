"""ANIL (Almost No Inner Loop): MAML whose inner loop adapts only the classifier head.

References:
    Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature Reuse? Towards Understanding the
    Effectiveness of MAML" (ICLR), section 4: the network body theta_body is meta-learned by the outer
    loop only; for every task the inner loop runs MAML's eq. 1 on the head alone,
    theta'_head = theta_head - alpha * grad_head L_Ti(head(body(x_support))),
    and the meta-objective is sum_i L_Ti(head'_i(body(x_query))), differentiated through the head's
    inner steps (second order) or with the inner gradients treated as constants (first order).

Because the body is not adapted, its features are computed once per task (support and query) and
the inner loop only touches the tiny linear head: on a Conv-4 this removes the inner backward passes
through the convolutions, which is ANIL's whole point.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...functional import Params, detached_params, forward, map_tasks, named_params
from ...losses import task_loss, task_metric
from ..spec import AlgorithmSpec, BuildContext, Needs, register
from .maml import MAML
from .options import ANILOptions

__all__ = ["ANIL"]


class ANIL(MAML):
    """MAML with only the head adapted in the inner loop.

    Args are those of `MAML`, plus:
        head: the name of the backbone's submodule that is adapted (default "head", as in `Conv4`);
            every other submodule that runs before it must be in `body` (default "features").
        body: the name of the feature extractor; `model(x)` must equal `head(body(x))`.

    Example:
        >>> from metalab.models import Conv4
        >>> anil = ANIL(Conv4(out_features=5), "classification", inner_lr=0.4)
    """

    def __init__(
        self, model: nn.Module, kind: str, *, head: str = "head", body: str = "features", **kwargs
    ) -> None:
        for name in (head, body):
            if not isinstance(getattr(model, name, None), nn.Module):
                raise ValueError(
                    f"ANIL needs a backbone with a {name!r} submodule (model(x) == {head}({body}(x))); "
                    f"{type(model).__name__} has none (e.g. build Conv4 with out_features=N)"
                )
        super().__init__(model, kind, **kwargs)
        self.head_name, self.body_name = head, body
        self._head_prefix, self._body_prefix = head + ".", body + "."
        other = [
            k for k, _ in model.named_parameters() if not k.startswith((self._head_prefix, self._body_prefix))
        ]
        if other:
            raise ValueError(f"ANIL: parameters outside {body!r} and {head!r} would be ignored: {other}")

    def split(self, params: Params) -> tuple[Params, Params]:
        """(body, head) parameter dicts, with the submodule prefixes removed."""
        body = {k[len(self._body_prefix) :]: v for k, v in params.items() if k.startswith(self._body_prefix)}
        head = {k[len(self._head_prefix) :]: v for k, v in params.items() if k.startswith(self._head_prefix)}
        return body, head

    def features(self, body: Params, x: Tensor) -> Tensor:
        """body(x) with the given body parameters, of shape (n, feature_dim)."""
        return forward(getattr(self.model, self.body_name), body, x)

    def adapt_head(self, head: Params, z: Tensor, y: Tensor, **kwargs) -> Params:
        """MAML's inner loop on the head alone, on support features z of shape (n, feature_dim)."""
        return self.adapt(head, z, y, module=getattr(self.model, self.head_name), **kwargs)

    def _task(self, params, sx, sy, qx, qy, *, mode: str):
        body, head = self.split(params)
        # The body runs once per task on each set; its parameters get outer-loop gradients only,
        # through the query features and (second order) through the head's inner gradients.
        zs, zq = self.features(body, sx), self.features(body, qx)
        adapted = self.adapt_head(
            head, zs, sy, steps=self.inner_steps, first_order=self.first_order_now(), mode=mode
        )
        out = forward(getattr(self.model, self.head_name), adapted, zq)
        return task_loss(self.kind, out, qy), task_metric(self.kind, out, qy, batched=False).detach()

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Adapt the head on each support set with `steps` inner steps (default `eval_inner_steps`)."""
        steps = self.eval_inner_steps if steps is None else steps
        rule = self.update_rule(detach=True)
        head_module = getattr(self.model, self.head_name)

        def task(p, sx, sy, qx, *, mode):
            body, head = self.split(p)
            with torch.no_grad():  # the features need no graph: nothing is differentiated through the body
                zs, zq = self.features(body, sx), self.features(body, qx)
            adapted = self.adapt_head(head, zs, sy, steps=steps, first_order=True, mode=mode, rule=rule)
            return forward(head_module, adapted, zq).detach()

        with torch.enable_grad():
            params = detached_params(named_params(self.model), self.strategy)
            return map_tasks(task, params, (support_x, support_y, query_x), self.strategy)


def _build(ctx: BuildContext) -> ANIL:
    return ANIL(ctx.backbone(), ctx.kind, **ctx.options.to_dict())


register(
    AlgorithmSpec(
        name="anil",
        family="optimization",
        summary="ANIL (Raghu et al. 2020): MAML adapting only the classifier head in the inner loop",
        learner=ANIL,
        options=ANILOptions,
        needs=Needs(fixed_head=True),
        build=_build,
    )
)
