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
from typing import Any, Callable, Collection, Mapping, NamedTuple, Optional, Protocol, Union

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
    "AdamMoments",
    "Adam",
    "minibatch_order",
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


class AdamMoments(NamedTuple):
    """The state of the `Adam` rule: first moments (None without momentum), second moments, and
    the number of steps taken (for the bias corrections)."""

    m: Optional[Params]
    v: Params
    t: int


@dataclass(frozen=True)
class Adam:
    """Adam as an inner-loop rule, out of place: m <- beta1 m + (1 - beta1) g,
    v <- beta2 v + (1 - beta2) g^2, theta' = theta - lr * m_hat / (sqrt(v_hat) + eps), with the
    bias-corrected m_hat = m / (1 - beta1^t) and v_hat = v / (1 - beta2^t) (Kingma & Ba 2015,
    algorithm 1). `beta1 = 0` (the default) steps along the gradient divided by its running RMS:
    Nichol et al. 2018's inner optimiser for Reptile.

    Attributes:
        lr: the step size.
        moments: the state to start from (zeros at t = 0 when None); Reptile carries its moments
            from one task to the next, as its authors' code does.
    """

    lr: float
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8
    moments: Optional[AdamMoments] = None

    def init(self, params: Params) -> AdamMoments:
        if self.moments is not None:
            return self.moments

        def zeros() -> Params:
            return {k: torch.zeros_like(p) for k, p in params.items()}

        return AdamMoments(zeros() if self.beta1 else None, zeros(), 0)

    def update(
        self, params: Params, grads: Params, state: AdamMoments, step: int
    ) -> tuple[Params, AdamMoments]:
        t = state.t + 1
        v = {k: self.beta2 * state.v[k] + (1 - self.beta2) * g * g for k, g in grads.items()}
        m = (
            {k: self.beta1 * state.m[k] + (1 - self.beta1) * g for k, g in grads.items()}
            if self.beta1
            else None
        )
        m_hat = grads if m is None else {k: mk / (1 - self.beta1**t) for k, mk in m.items()}
        v_scale = 1 - self.beta2**t
        new = {k: p - self.lr * m_hat[k] / ((v[k] / v_scale).sqrt() + self.eps) for k, p in params.items()}
        return new, AdamMoments(m, v, t)


def minibatch_order(n: int, batch: Optional[int], steps: int, generator=None) -> Optional[Tensor]:
    """Which of a task's `n` support examples each of `steps` inner steps trains on: of shape
    (steps, batch), shuffled passes over the examples cut into mini-batches of `batch` (a pass
    reshuffled once it is used up, as Nichol et al. 2018's inner loop draws them). None, the whole
    set at every step, where `batch` is None or n <= batch (a batch of repeats of n examples has
    the full set's mean gradient)."""
    if batch is None or n <= batch or steps == 0:
        return None
    passes = -(-steps * batch // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])
    return order[: steps * batch].view(steps, batch)


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
    batches: Optional[Tensor] = None,
    return_state: bool = False,
    fixed_names: Collection[str] = (),
) -> Params | tuple[Params, Any]:
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
        batches: of shape (steps, b), the indices of the examples of each step's mini-batch
            (`minibatch_order`); None: every step on all of (x, y).
        return_state: also return the rule's final state.
        fixed_names: parameters of `params` that the loss uses as they are, not adapted (and
            returned as they came).

    Returns:
        the adapted parameters, differentiable w.r.t. `params` unless they were detached (and the
        rule's final state, with `return_state`).
    """
    fixed = {k: v for k, v in params.items() if k in fixed_names}
    params = {k: v for k, v in params.items() if k not in fixed_names}

    def loss_on(bx: Tensor, by: Tensor) -> Callable[[Params], Tensor]:
        return lambda p: task_loss(kind, forward(model, {**p, **fixed}, bx), by)

    state = rule.init(params)
    for step in range(steps):
        loss_of = loss_on(x, y) if batches is None else loss_on(x[batches[step]], y[batches[step]])
        params, state = inner_step(
            loss_of, params, rule, state, step, first_order=first_order, mode=mode, checkpoint=checkpoint
        )
    params = {**params, **fixed}
    return (params, state) if return_state else params


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
    batches: Optional[Tensor] = None,
    fixed_names: Collection[str] = (),
) -> Tensor:
    """Fine-tune `model`'s parameters on each task's support set with `steps` steps of `rule`
    (no meta-gradient), then answer the task's queries; of shape (T, n_query, ...).

    `transductive`: the queries go through the model as one batch, so a backbone that normalises
    with its batch's statistics sees all of them together. False: each query is answered in a batch
    of the support set and itself alone, its output taken from the last row (Nichol et al. 2018's
    non-transductive evaluation), so no query's answer depends on the others. `batches`: of shape
    (T, steps, b), each task's mini-batches (`inner_loop`); None: the whole support set per step.
    `fixed_names`: parameters kept as they are (`inner_loop`)."""

    def task(p, sx, sy, qx, *order, mode):
        adapted = inner_loop(
            model,
            p,
            sx,
            sy,
            kind=kind,
            steps=steps,
            rule=rule,
            first_order=True,
            mode=mode,
            batches=order[0] if order else None,
            fixed_names=fixed_names,
        )
        if transductive:
            return forward(model, adapted, qx).detach()
        alone = [forward(model, adapted, torch.cat([sx, qx[i : i + 1]]))[-1:] for i in range(qx.shape[0])]
        return torch.cat(alone).detach()

    with torch.enable_grad():
        params = detached_params(named_params(model), strategy)
        tensors = (support_x, support_y, query_x) + (() if batches is None else (batches,))
        return map_tasks(task, params, tensors, strategy)


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
