"""The config keys of the inner-loop learners, as small option dataclasses each algorithm combines.

An algorithm's options class lists the mixins it takes, so each key exists exactly where it means
something: `inner_checkpoint` only for second-order inner loops, `strategy` only for learners that
map a per-task function over the meta-batch, `inner_lr` with the meaning its algorithm gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..spec import OptionError, Options, option

__all__ = [
    "InnerLoop",
    "TaskMapping",
    "SecondOrder",
    "InnerRate",
    "DerivativeAnnealing",
    "LaterRate",
    "InnerExclude",
    "SGDInnerLoop",
    "SecondOrderSGD",
    "MAMLOptions",
    "ANILOptions",
    "FirstOrderMAMLOptions",
    "ReptileOptions",
]


# Inner steps beyond this are refused: each is a forward and backward pass per task, so more is
# a typo rather than a plan.
MAX_INNER_STEPS = 10_000


@dataclass
class InnerLoop(Options):
    inner_steps: int = option(
        1, "inner steps on the support set in meta-training", minimum=0, maximum=MAX_INNER_STEPS
    )
    eval_inner_steps: Optional[int] = option(
        None,
        "inner steps at evaluation and prediction (default: inner_steps)",
        minimum=0,
        maximum=MAX_INNER_STEPS,
    )

    def resolved(self, config) -> InnerLoop:
        new = super().resolved(config)
        if new.eval_inner_steps is None:
            new.eval_inner_steps = new.inner_steps
        return new

    def eval_steps(self) -> list[int]:
        return [self.eval_inner_steps]


@dataclass
class TaskMapping(Options):
    strategy: str = option(
        "auto",
        "meta-batch processing: vmap (batched over tasks), loop (task by task), auto (vmap for "
        "models without convolutions)",
        choices=("auto", "vmap", "loop"),
    )


@dataclass
class InnerRate(Options):
    inner_lr: float = option(0.01, "alpha, the inner SGD step size", allowed="> 0")

    def check(self, config) -> None:
        super().check(config)
        if self.inner_lr <= 0:
            raise OptionError(f"config key 'inner_lr' must be > 0, got {self.inner_lr}")


@dataclass
class LaterRate(Options):
    later_inner_lr: Optional[float] = option(
        None,
        "step size of the second and later inner steps, in meta-training and at test (default: "
        "inner_lr); a one-step initialisation can sit where further steps at inner_lr oscillate "
        "(docs/sine.md)",
        allowed="> 0",
    )

    def check(self, config) -> None:
        super().check(config)
        if self.later_inner_lr is not None and self.later_inner_lr <= 0:
            raise OptionError(f"config key 'later_inner_lr' must be > 0, got {self.later_inner_lr}")


@dataclass
class InnerExclude(Options):
    inner_exclude: list[str] = option(
        [],
        "parameters the inner loop keeps as they are (the outer loop still learns them): norm (every "
        "batch norm's parameters, as the MAML authors' batch-norm shifts) or parameter-name patterns "
        "such as 'features.1.*'",
        allowed="norm or name patterns",
    )


@dataclass
class SecondOrder(TaskMapping):
    first_order: bool = option(False, "detach the inner gradients (first-order approximation)")
    inner_checkpoint: bool = option(
        False,
        "second order: recompute each inner step in the outer backward instead of keeping its graph "
        "(memory stops growing with the inner steps; docs/scaling.md)",
    )

    def check(self, config) -> None:
        super().check(config)
        if self.inner_checkpoint and self.first_order:
            raise OptionError(
                "config key 'inner_checkpoint' applies to second-order inner loops, not with first_order"
            )
        if self.inner_checkpoint and self.strategy == "vmap":
            raise OptionError(
                "config key 'inner_checkpoint' works on the per-task loop: set 'strategy' to loop or auto, "
                "not vmap"
            )


@dataclass
class SGDInnerLoop(InnerRate, TaskMapping, InnerLoop):
    """An SGD inner loop mapped over the tasks (first-order MAML, Reptile, the pretrained baseline)."""


@dataclass
class ReptileOptions(SGDInnerLoop):
    """Reptile's keys: an SGD inner loop, and whether its test queries are answered together."""

    transductive: bool = option(
        True,
        "answer a test task's queries as one batch (batch statistics over them: Nichol et al. 2018's "
        "transductive setting); false: each query beside the support set alone (non-transductive)",
    )
    inner_optimizer: str = option(
        "sgd",
        "the inner loop's optimiser: sgd (step inner_lr * gradient) or adam (Adam at inner_lr, its "
        "moments carried from task to task: Nichol et al. 2018's inner loop with inner_beta1 0)",
        choices=("sgd", "adam"),
    )
    inner_beta1: float = option(
        0.0,
        "adam inner loop: the first-moment decay (0: no momentum, as Nichol et al. 2018)",
        allowed="[0, 1)",
    )
    inner_batch: Optional[int] = option(
        None,
        "examples per inner step: shuffled mini-batches of the support set (Nichol et al. 2018: 10); "
        "default: the whole support set at every step",
        minimum=1,
    )
    eval_inner_batch: Optional[int] = option(
        None,
        "examples per inner step at evaluation and prediction (Nichol et al. 2018: 5 for 5-way, 10 "
        "for 20-way); default: inner_batch",
        minimum=1,
    )

    def resolved(self, config) -> ReptileOptions:
        new = super().resolved(config)
        if new.eval_inner_batch is None:
            new.eval_inner_batch = new.inner_batch
        return new

    def check(self, config) -> None:
        super().check(config)
        if not 0 <= self.inner_beta1 < 1:
            raise OptionError(f"config key 'inner_beta1' must be in [0, 1), got {self.inner_beta1}")
        if self.inner_beta1 and self.inner_optimizer != "adam":
            raise OptionError("config key 'inner_beta1' applies to inner_optimizer: adam")


@dataclass
class DerivativeAnnealing(Options):
    first_order_iterations: int = option(
        0,
        "derivative-order annealing (MAML++): first-order inner gradients for this many iterations, "
        "then second order",
        minimum=0,
    )


@dataclass
class SecondOrderSGD(DerivativeAnnealing, LaterRate, SecondOrder, InnerRate, TaskMapping, InnerLoop):
    """An SGD inner loop, second order unless first_order (or, with first_order_iterations, first
    order early and second order after)."""


@dataclass
class MAMLOptions(InnerExclude, SecondOrderSGD):
    """MAML's keys: a second-order SGD inner loop over the whole model, less what inner_exclude
    keeps out of it."""


@dataclass
class ANILOptions(SecondOrderSGD):
    """ANIL's keys: a second-order SGD inner loop (over the head alone)."""


@dataclass
class FirstOrderMAMLOptions(InnerExclude, LaterRate, SGDInnerLoop):
    """First-order MAML's keys: an SGD inner loop and the step size of its later steps."""
