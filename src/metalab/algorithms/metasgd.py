"""Meta-SGD: MAML with a learned learning rate for every parameter coordinate.

References:
    Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", eq. 3:
    theta'_i = theta - alpha o grad L_Ti(theta), with alpha (same shape as theta) meta-learned with
    theta by the outer optimizer; alpha is initialised uniformly in [0.005, 0.1] (section 4).
"""
from __future__ import annotations

import torch
from torch import nn

from .maml import MAML

__all__ = ["MetaSGD"]


class MetaSGD(MAML):
    """MAML whose inner step size is a meta-learned tensor per parameter.

    Args are those of `MAML`, plus:
        lr_init: (low, high) of the uniform initialisation of alpha.
    `inner_lr` is unused for adaptation (kept for configs that set it).
    """

    def __init__(self, model: nn.Module, kind: str, *, lr_init: tuple[float, float] = (0.005, 0.1), **kwargs) -> None:
        super().__init__(model, kind, **kwargs)
        low, high = lr_init
        # ParameterDict keys may not contain '.', so parameter names are stored with '/'.
        self.alpha = nn.ParameterDict(
            {k.replace(".", "/"): nn.Parameter(torch.empty_like(p).uniform_(low, high)) for k, p in model.named_parameters()}
        )

    def inner_rate(self, detach: bool = False):
        return {k.replace("/", "."): (a.detach() if detach else a) for k, a in self.alpha.items()}
