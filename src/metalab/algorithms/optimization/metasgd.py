"""Meta-SGD: MAML with a learned learning rate for every parameter coordinate.

References:
    Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", eq. 3:
    theta'_i = theta - alpha o grad L_Ti(theta), with alpha (same shape as theta) meta-learned with
    theta by the outer optimizer; alpha is initialised uniformly in [0.005, 0.1] (section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...functional import LearnedRates, UpdateRule
from ..spec import AlgorithmSpec, BuildContext, Needs, OptionError, option, register
from .maml import MAML
from .options import InnerLoop, SecondOrder, TaskMapping

__all__ = ["MetaSGD", "MetaSGDOptions"]


@dataclass
class MetaSGDOptions(SecondOrder, TaskMapping, InnerLoop):
    """Meta-SGD's keys: MAML's without inner_lr (the rates are learned), and their initial range."""

    rate_init: list[float] = option(
        [0.005, 0.1],
        "low and high of the uniform initialisation of the learned rates alpha",
        allowed="0 <= low <= high",
    )

    def check(self, config) -> None:
        super().check(config)
        if len(self.rate_init) != 2 or not 0 <= self.rate_init[0] <= self.rate_init[1]:
            raise OptionError(
                f"config key 'rate_init' must be [low, high] with 0 <= low <= high, got {self.rate_init}"
            )


class MetaSGD(MAML):
    """MAML whose inner step size is a meta-learned tensor per parameter.

    Args are those of `MAML`, plus:
        lr_init: (low, high) of the uniform initialisation of alpha.
    `inner_lr` is unused: the inner update is `LearnedRates(alpha)`.
    """

    def __init__(
        self, model: nn.Module, kind: str, *, lr_init: tuple[float, float] = (0.005, 0.1), **kwargs
    ) -> None:
        super().__init__(model, kind, **kwargs)
        low, high = lr_init
        # ParameterDict keys may not contain '.', so parameter names are stored with '/'.
        self.alpha = nn.ParameterDict(
            {
                k.replace(".", "/"): nn.Parameter(torch.empty_like(p).uniform_(low, high))
                for k, p in model.named_parameters()
            }
        )

    def update_rule(self, detach: bool = False) -> UpdateRule:
        return LearnedRates(
            {k.replace("/", "."): (a.detach() if detach else a) for k, a in self.alpha.items()}
        )


def _build(ctx: BuildContext) -> MetaSGD:
    options = ctx.options.to_dict()
    return MetaSGD(ctx.backbone(), ctx.kind, lr_init=tuple(options.pop("rate_init")), **options)


register(
    AlgorithmSpec(
        name="metasgd",
        family="optimization",
        summary="Meta-SGD (Li et al. 2017): MAML with a meta-learned rate for every parameter coordinate",
        learner=MetaSGD,
        options=MetaSGDOptions,
        needs=Needs(fixed_head=True),
        build=_build,
    )
)
