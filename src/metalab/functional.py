"""The functional core of the gradient-based family.

Parameters travel as plain dicts `{name: tensor}` and the backbone is run with
`torch.func.functional_call`, so an adapted parameter is just a tensor computed from the
meta-parameters: no module cloning, no in-place patching. Second order falls out of autograd
differentiating through the inner steps; first order detaches the inner gradients.

A meta-batch is processed either

- batched, with `torch.func.vmap` over the task dimension (inner gradients by `torch.func.grad`), or
- by a per-task Python loop (inner gradients by `torch.autograd.grad(create_graph=...)`, which is
  cheaper than a nested `torch.func.grad`).

Both give the same meta-gradient (tests/test_functional.py checks it against a hand-written
reference). "auto" picks vmap for models without convolutions (the sine MLP runs much faster
batched) and the loop for convolutional backbones, where a naive vmap is slower than the loop and
holds every task's activations at once (docs/engine.md gives the measurements).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .losses import task_loss
from .models.fast import second_order_forward

__all__ = [
    "Params",
    "LearningRate",
    "named_params",
    "forward",
    "sgd_step",
    "inner_loop",
    "inner_gradients",
    "inner_step",
    "UpdateRule",
    "SGD",
    "LearnedRates",
    "PerStepRates",
    "resolve_strategy",
    "map_tasks",
    "detached_params",
    "adapted_predictions",
]

Params = dict[str, Tensor]
# One float for every parameter, or a tensor per parameter name (Meta-SGD), broadcast against it.
LearningRate = Union[float, Tensor, Mapping[str, Tensor]]
STRATEGIES = ("auto", "vmap", "loop")


def named_params(module: nn.Module) -> Params:
    """The module's trainable parameters as a dict (the tensors themselves, not copies)."""
    return {k: v for k, v in module.named_parameters() if v.requires_grad}


def forward(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Run `model` on `x` with `params` in place of its own parameters (buffers are the module's)."""
    return functional_call(model, dict(params), (x,))


def sgd_step(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: LearningRate) -> Params:
    """One out-of-place SGD step: theta' = theta - lr * grad (lr per parameter for Meta-SGD)."""
    if isinstance(lr, Mapping):
        return {k: p - lr[k] * grads[k] for k, p in params.items()}
    names = list(params)
    values, steps = [params[k] for k in names], [grads[k] for k in names]
    if isinstance(lr, (int, float)) and not any(
        torch._C._functorch.is_functorch_wrapped_tensor(v) for v in values + steps
    ):
        # One foreach op (and one backward node) for all parameters instead of a mul and a sub each.
        return dict(zip(names, torch._foreach_add(values, steps, alpha=-lr)))
    return {k: p - lr * grads[k] for k, p in params.items()}


def inner_gradients(
    loss_of: Callable[[Params], Tensor], params: Params, first_order: bool, mode: str
) -> Params:
    """Gradients of `loss_of(params)` w.r.t. each parameter, for one inner step.

    mode "func" uses `torch.func.grad` (inside vmap), "autograd" uses `torch.autograd.grad` with
    `create_graph` for second order; first order detaches the result.
    """
    if mode == "func":
        grads = torch.func.grad(loss_of)(params)
    else:
        names = list(params)
        with second_order_forward(not first_order):
            loss = loss_of(params)
        values = torch.autograd.grad(loss, [params[k] for k in names], create_graph=not first_order)
        grads = dict(zip(names, values))
    return {k: g.detach() for k, g in grads.items()} if first_order else grads


# --- inner-loop update rules ---------------------------------------------------------------------
# An update rule is a pair of pure functions in the spirit of optax: `init(params) -> state` and
# `update(params, grads, state, step) -> (new params, new state)`, out of place, so a second-order
# inner loop differentiates through it. What gets meta-learned (Meta-SGD's rates, MAML++'s per-step
# rates) is held by the learner and handed to the rule, never kept in a closure.


class UpdateRule(Protocol):
    def init(self, params: Params) -> Any: ...

    def update(self, params: Params, grads: Params, state: Any, step: int) -> tuple[Params, Any]: ...


@dataclass(frozen=True)
class SGD:
    """theta' = theta - lr * grad, one learning rate for every parameter (MAML, eq. 1).

    Attributes:
        lr: the step size of the first step.
        later_lr: the step size of the second and later steps (default: `lr`).
    """

    lr: float
    later_lr: float | None = None

    def init(self, params: Params) -> None:
        return None

    def update(self, params: Params, grads: Params, state: None, step: int) -> tuple[Params, None]:
        lr = self.lr if step == 0 or self.later_lr is None else self.later_lr
        return sgd_step(params, grads, lr), state


@dataclass(frozen=True)
class LearnedRates:
    """theta' = theta - alpha o grad with a rate per parameter coordinate (Meta-SGD, eq. 3).

    Attributes:
        rates: parameter name -> alpha, broadcastable against the parameter.
    """

    rates: Mapping[str, Tensor]

    def init(self, params: Params) -> None:
        return None

    def update(self, params: Params, grads: Params, state: None, step: int) -> tuple[Params, None]:
        return sgd_step(params, grads, self.rates), state


@dataclass(frozen=True)
class PerStepRates:
    """theta' = theta - alpha[k][s] * grad at inner step s, a rate per parameter tensor and step
    (MAML++'s LSLR); steps past the last rate reuse it.

    Attributes:
        rates: parameter name -> rates of shape (steps,).
    """

    rates: Mapping[str, Tensor]

    def init(self, params: Params) -> None:
        return None

    def rate(self, step: int) -> dict[str, Tensor]:
        return {k: r[min(step, r.shape[0] - 1)] for k, r in self.rates.items()}

    def update(self, params: Params, grads: Params, state: None, step: int) -> tuple[Params, None]:
        return sgd_step(params, grads, self.rate(step)), state


def inner_step(
    loss_of: Callable[[Params], Tensor],
    params: Params,
    rule: UpdateRule,
    state: Any = None,
    step: int = 0,
    *,
    first_order: bool,
    mode: str,
    checkpoint: bool = False,
) -> tuple[Params, Any]:
    """One inner step of `rule` on the gradient of `loss_of` at `params`; the new params and state.

    `checkpoint` (second order, "autograd" mode only; ignored otherwise) keeps none of the step's
    forward and gradient graph: `torch.utils.checkpoint` (non-reentrant, which differentiates
    through the `autograd.grad(create_graph=True)` inside) recomputes it in the outer backward.
    The meta-gradient is unchanged (tests/test_inner_checkpoint.py); what a second-order task holds then
    grows by one parameter set per inner step instead of one step's activations and double-backward
    graph, for about one more inner step of compute. Only for rules without state (the SGD family).
    """

    def apply(p: Params) -> tuple[Params, Any]:
        return rule.update(p, inner_gradients(loss_of, p, first_order, mode), state, step)

    if not checkpoint or first_order or mode != "autograd" or not torch.is_grad_enabled():
        return apply(params)
    if state is not None:
        raise ValueError("inner_checkpoint needs an update rule without state")
    names = list(params)

    def flat(*values: Tensor) -> tuple[Tensor, ...]:
        new, _ = apply(dict(zip(names, values)))
        return tuple(new[k] for k in names)

    values = torch.utils.checkpoint.checkpoint(flat, *(params[k] for k in names), use_reentrant=False)
    return dict(zip(names, values)), state


def inner_loop(
    model: nn.Module,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    kind: str,
    steps: int,
    rule: UpdateRule,
    first_order: bool,
    mode: str = "autograd",
    checkpoint: bool = False,
) -> Params:
    """Adapt `params` to one task by `steps` steps of `rule` on the loss of `model` on (x, y).

    With `SGD(alpha)` this is the inner update of Finn et al. 2017, eq. 1:
    theta' = theta - alpha * grad L(theta).

    Args:
        x: of shape (n, *input_shape) (one task; under `vmap` the task dim is hidden).
        y: of shape (n,) class ids or (n, *target_shape) values.
        rule: the update rule (`SGD`, `LearnedRates`, `PerStepRates`, ...).
        first_order: detach the inner gradients (first-order MAML, Reptile).
        mode: "autograd" (outside vmap) or "func" (inside vmap).
        checkpoint: recompute each inner step in the outer backward instead of keeping its graph
            (see `inner_step`).

    Returns:
        the adapted parameters, differentiable w.r.t. `params` unless they were detached.
    """

    def loss_of(p: Params) -> Tensor:
        return task_loss(kind, forward(model, p, x), y)

    state = rule.init(params)
    for step in range(steps):
        params, state = inner_step(
            loss_of, params, rule, state, step, first_order=first_order, mode=mode, checkpoint=checkpoint
        )
    return params


def adapted_predictions(
    model: nn.Module,
    rule: UpdateRule,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    *,
    kind: str,
    steps: int,
    strategy: str,
    transductive: bool = True,
) -> Tensor:
    """Fine-tune `model`'s parameters on each task's support set with `steps` steps of `rule`
    (no meta-gradient), then answer the task's queries; of shape (T, n_query, ...).

    `transductive`: the queries go through the model as one batch, so a backbone that normalises
    with its batch's statistics sees all of them together. False: each query is answered in a batch
    of the support set and itself alone, its output taken from the last row (Nichol et al. 2018's
    non-transductive evaluation), so no query's answer depends on the others."""

    def task(p, sx, sy, qx, *, mode):
        adapted = inner_loop(model, p, sx, sy, kind=kind, steps=steps, rule=rule, first_order=True, mode=mode)
        if transductive:
            return forward(model, adapted, qx).detach()
        alone = [forward(model, adapted, torch.cat([sx, qx[i : i + 1]]))[-1:] for i in range(qx.shape[0])]
        return torch.cat(alone).detach()

    with torch.enable_grad():
        params = detached_params(named_params(model), strategy)
        return map_tasks(task, params, (support_x, support_y, query_x), strategy)


def resolve_strategy(strategy: str, model: nn.Module) -> str:
    """ "auto" -> "loop" for convolutional backbones, "vmap" otherwise (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "loop" if has_conv else "vmap"


def map_tasks(fn: Callable, params: Params, tensors: tuple[Tensor, ...], strategy: str):
    """Apply `fn(params, *per_task_tensors, mode=...)` to every task of a meta-batch.

    Args:
        fn: a per-task function returning a tensor or a tuple/dict of tensors.
        params: shared across tasks.
        tensors: each of shape (T, ...).
        strategy: "vmap" or "loop".

    Returns:
        `fn`'s outputs stacked along a new leading task dimension.
    """
    if strategy == "vmap":
        return torch.func.vmap(lambda p, *t: fn(p, *t, mode="func"), in_dims=(None,) + (0,) * len(tensors))(
            params, *tensors
        )
    outs = [fn(params, *(t[i] for t in tensors), mode="autograd") for i in range(tensors[0].shape[0])]
    return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)


def detached_params(params: Mapping[str, Tensor], strategy: str) -> Params:
    """Copies cut from the meta-parameters' graph, for adaptation that needs no meta-gradient
    (evaluation, Reptile). The loop computes inner gradients with `torch.autograd.grad`, so its
    copies must require grad; `torch.func.grad` under vmap needs no flag."""
    return {k: v.detach().requires_grad_(strategy == "loop") for k, v in params.items()}
