"""Trust-region policy optimisation's step, for any differentiable loss and KL.

References:
    Schulman et al. 2015, "Trust Region Policy Optimization", appendix C: the search direction
    s = F^-1 g by conjugate gradient on Fisher-vector products (the Hessian of the mean KL times a
    vector), the step sqrt(2 delta / s^T F s) s, then a backtracking line search that accepts the
    first step that lowers the surrogate loss and keeps the mean KL within delta. The MAML paper
    (section 5.3) takes this step on the meta-objective, with the KL of the post-update policies.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["conjugate_gradient", "kl_fisher_product", "trpo_step", "flat"]


def flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_gradient(
    product: Callable[[Tensor], Tensor], b: Tensor, iterations: int = 10, tolerance: float = 1e-10
) -> Tensor:
    """An approximate solution x of A x = b for a symmetric positive-definite A given as
    `product(v) = A v`."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iterations):
        ap = product(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        if rr_new < tolerance:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def kl_fisher_product(params: list[Tensor], kl: Tensor, damping: float = 0.0) -> Callable[[Tensor], Tensor]:
    """v -> (H + damping I) v, H the Hessian of `kl` w.r.t. `params` (the Fisher information where
    `kl` is the mean KL from the sampling policy, whose gradient is 0 there)."""
    kl_grads = torch.autograd.grad(kl, params, create_graph=True, allow_unused=True)
    kl_grad = flat([torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, kl_grads)])

    def product(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(kl_grad @ v, params, retain_graph=True, allow_unused=True)
        return flat([torch.zeros_like(p) if h is None else h for p, h in zip(params, hv)]) + damping * v

    return product


def trpo_step(
    params: list[Tensor],
    loss: Tensor,
    fisher: Callable[[Tensor], Tensor],
    evaluate: Callable[[], tuple[Tensor, Tensor]],
    *,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    backtracks: int = 15,
    ratio: float = 0.8,
) -> dict[str, float]:
    """One TRPO update of `params` in place.

    Args:
        params: the parameters (leaf tensors) to update.
        loss: the surrogate loss at `params`, with its graph.
        fisher: v -> F v, the Fisher-vector product (damped), e.g. `kl_fisher_product`.
        evaluate: `() -> (loss, kl)` at the current values of `params` (used in the line search).
        max_kl: delta, the trust region's size.
        cg_iters, backtracks, ratio: conjugate-gradient iterations; line-search steps and their
            shrink factor.

    Returns:
        the loss before and after, the KL after, and the line-search steps taken
        (`backtracks` + 1 where no step was accepted and the parameters were restored).
    """
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    g = flat([torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)])
    before = loss.item()
    stats = {"loss_before": before, "loss_after": before, "kl": 0.0, "backtracks": float(backtracks + 1)}
    if not torch.isfinite(g).all() or g.abs().max() == 0:
        return stats
    direction = conjugate_gradient(fisher, -g, cg_iters)
    curvature = direction @ fisher(direction)
    if not curvature > 0:
        return stats
    full_step = torch.sqrt(2 * max_kl / curvature) * direction
    start = flat([p.detach() for p in params])
    for k in range(backtracks + 1):
        _assign(params, start + ratio**k * full_step)
        new_loss, new_kl = evaluate()
        if new_loss.item() < before and new_kl.item() <= max_kl:
            stats.update(loss_after=new_loss.item(), kl=new_kl.item(), backtracks=float(k))
            return stats
    _assign(params, start)
    return stats


@torch.no_grad()
def _assign(params: list[Tensor], vector: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(vector[offset : offset + n].view_as(p))
        offset += n
