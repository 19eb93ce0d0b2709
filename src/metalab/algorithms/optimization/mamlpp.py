"""MAML++: the training recipe of "How to train your MAML", as options on MAML's functional core.

References:
    Antoniou, Edwards & Storkey 2019, "How to train your MAML" (ICLR), section 4, with the schedules
    of the authors' code (github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch):

    - LSLR, learned per-layer per-step learning rates: step s updates parameter tensor k with its
      own meta-learned rate alpha[k][s], initialised to `inner_lr` (0.1 on Omniglot).
    - MSL, multi-step loss: the meta-objective is sum_s v_s(t) L_query(theta_s), the query loss after
      every inner step s weighted by importance weights v(t) that start uniform (1/S each) and are
      annealed linearly in the iteration t: the non-final weights fall by t / (S * T_msl) down to a
      floor of 0.03 / S, the final weight grows by (S - 1) t / (S * T_msl) up to
      1 - (S - 1) * 0.03 / S, so they always sum to 1; from t = T_msl on only the final step's loss
      is used (weight 1). The paper anneals over "the first epochs"; the released Omniglot configs
      use 10 epochs of 500 iterations, i.e. T_msl = 5,000 (`msl_iterations`). The authors step the
      weights once per epoch; here they move every iteration.
    - DA, derivative-order annealing: first-order inner gradients for the first
      `first_order_iterations` (the paper: 50 epochs = 25,000 iterations), second order afterwards.
    - BNWB, per-step batch-norm weights and biases: every normalisation layer gets its own affine
      (gamma_s, beta_s) for every inner step s, meta-learned by the outer loop and not adapted in the
      inner loop (as in the authors' code, where batch-norm parameters are excluded from the inner
      loop). The paper pairs them with per-step running statistics (BNRS). Our gradient-based backbone
      normalises with the current batch's statistics, transductively, as MAML does (`BatchStatNorm2d`),
      so there are no running statistics to keep per step: we implement BNWB only. The statistics
      are still "per step" in effect, since they are recomputed from each step's activations, and
      this keeps train and test behaviour identical and avoids the running-statistics bookkeeping
      (backup/restore at evaluation) that BNRS needs.
    - CA, cosine annealing of the outer learning rate: the training loop's `lr_schedule: cosine`.

The learner needs the training iteration for MSL and DA: the loop calls `set_iteration(t)` before
every `meta_loss`; without it the iteration stays 0 (uniform MSL weights, first order if DA is on).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...functional import (
    Params,
    PerStepRates,
    UpdateRule,
    detached_params,
    forward,
    inner_step,
    map_tasks,
    named_params,
)
from ...losses import task_loss, task_metric
from ...models.conv4 import BatchStatNorm2d
from ..spec import AlgorithmSpec, BuildContext, Needs, OptionError, option, register
from .maml import MAML
from .options import DerivativeAnnealing, InnerLoop, InnerRate, SecondOrder, TaskMapping

__all__ = ["MAMLpp", "MAMLppOptions", "msl_weights"]


@dataclass
class MAMLppOptions(DerivativeAnnealing, SecondOrder, InnerRate, TaskMapping, InnerLoop):
    """MAML++'s keys: MAML's, with inner_lr the initial value of every learned per-step rate, and
    the two schedules over training."""

    inner_lr: float = option(
        0.01, "the initial value of every learned per-layer, per-step rate (LSLR)", allowed="> 0"
    )
    msl_iterations: int = option(
        0,
        "iterations over which the multi-step loss weights anneal to the last step (0: last step only)",
        minimum=0,
    )

    def check(self, config) -> None:
        super().check(config)
        if self.inner_steps < 1:
            raise OptionError("MAML++ needs config key 'inner_steps' >= 1")


# The layers whose affine parameters become per-step (BNWB).
_NORMS = (BatchStatNorm2d, nn.modules.batchnorm._NormBase)


def msl_weights(steps: int, iteration: int, anneal_iterations: int, floor: float = 0.03) -> Tensor:
    """Importance weights of the multi-step loss at `iteration`, of shape (steps,), summing to 1.

    Uniform at iteration 0, annealed linearly toward the final step over `anneal_iterations`
    (non-final weights floored at floor / steps), then exactly (0, ..., 0, 1) from
    `anneal_iterations` on (and always, if `anneal_iterations` is 0). See the module docstring.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if anneal_iterations <= 0 or iteration >= anneal_iterations:
        w = torch.zeros(steps, dtype=torch.float64)
        w[-1] = 1.0
        return w
    decay = iteration / (steps * anneal_iterations)
    w = torch.full((steps,), max(1.0 / steps - decay, floor / steps), dtype=torch.float64)
    w[-1] = min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor / steps)
    return w


class MAMLpp(MAML):
    """MAML++ (LSLR, MSL, derivative-order annealing, per-step batch-norm affine) around a backbone.

    Args are those of `MAML`, plus:
        lslr: learn a rate per parameter tensor and per inner step (initialised to `inner_lr`).
        msl_iterations: T_msl, the iterations over which the multi-step loss anneals (0: no MSL,
            the final step's query loss only, as MAML).
        first_order_iterations: iterations with first-order inner gradients before switching to
            second order (0: second order from the start; `first_order=True` keeps first order).
        per_step_bn: a (weight, bias) of every normalisation layer per inner step, outer-loop only.

    With more evaluation steps than training steps, the extra steps reuse the last step's rates
    and normalisation parameters. With `per_step_bn`, the backbone's own normalisation parameters
    are frozen (requires_grad False) and replaced in every forward by the per-step copies in `bn`.

    Example:
        >>> from metalab.models import Conv4
        >>> learner = MAMLpp(Conv4(out_features=5), "classification", inner_lr=0.1, inner_steps=5,
        ...                  msl_iterations=5000, first_order_iterations=25000)
        >>> learner.set_iteration(0)  # the training loop does this before every meta_loss
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        lslr: bool = True,
        msl_iterations: int = 0,
        per_step_bn: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(model, kind, **kwargs)
        if self.inner_steps < 1:
            raise ValueError("MAML++ needs inner_steps >= 1")
        if msl_iterations < 0:
            raise ValueError("msl_iterations must be >= 0")
        self.msl_iterations = msl_iterations
        steps = self.inner_steps
        norm_names = {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules()
            if isinstance(module, _NORMS)
            for name, _ in module.named_parameters(recurse=False)
        }
        self.per_step_bn = per_step_bn and bool(norm_names)
        # ParameterDict keys may not contain '.', so parameter names are stored with '/'.
        self.bn = nn.ParameterDict()
        if self.per_step_bn:
            for name, p in model.named_parameters():
                if name in norm_names:
                    self.bn[name.replace(".", "/")] = nn.Parameter(
                        p.detach().clone().unsqueeze(0).repeat(steps, *([1] * p.dim()))
                    )
                    # The backbone's own copy is replaced by the per-step ones in every forward.
                    p.requires_grad_(False)
        self.lslr = lslr
        self.rates = nn.ParameterDict()
        if lslr:
            for name, p in named_params(model).items():
                self.rates[name.replace(".", "/")] = nn.Parameter(
                    torch.full((steps,), float(self.inner_lr), dtype=p.dtype)
                )

    # --- the schedules ---------------------------------------------------------------------------
    def loss_weights(self) -> Tensor:
        """The MSL importance weights at the current iteration, of shape (inner_steps,)."""
        return msl_weights(self.inner_steps, self.iteration, self.msl_iterations)

    # --- per-step pieces -------------------------------------------------------------------------
    def step_bn(self, step: int, detach: bool = False) -> Params:
        s = min(step, self.inner_steps - 1)
        return {k.replace("/", "."): (p.detach() if detach else p)[s] for k, p in self.bn.items()}

    def update_rule(self, detach: bool = False) -> UpdateRule:
        """LSLR: `PerStepRates` of the learned rates (plain SGD at inner_lr without `lslr`)."""
        if not self.lslr:
            return super().update_rule(detach)
        return PerStepRates(
            {k.replace("/", "."): (r.detach() if detach else r) for k, r in self.rates.items()}
        )

    # --- the task ----------------------------------------------------------------------------------
    def _run(
        self,
        params: Params,
        sx,
        sy,
        qx,
        *,
        steps: int,
        first_order: bool,
        mode: str,
        detach: bool,
        query_after,
    ):
        """`steps` inner steps on (sx, sy); after step s, `query_after(s)` says whether to answer qx.

        Returns the list of (step, query output) and the final adapted parameters.
        """
        outs = []
        rule = self.update_rule(detach)
        state = rule.init(params)
        for s in range(steps):
            bn = self.step_bn(s, detach)

            def loss_of(p: Params, bn=bn) -> Tensor:
                return task_loss(self.kind, forward(self.model, {**p, **bn}, sx), sy)

            params, state = inner_step(
                loss_of,
                params,
                rule,
                state,
                s,
                first_order=first_order,
                mode=mode,
                checkpoint=self.inner_checkpoint,
            )
            if query_after(s):
                outs.append((s, forward(self.model, {**params, **bn}, qx)))
        return outs, params

    def _task(self, params, sx, sy, qx, qy, *, mode: str):
        weights = self.loss_weights().tolist()
        outs, _ = self._run(
            params,
            sx,
            sy,
            qx,
            steps=self.inner_steps,
            first_order=self.first_order_now(),
            mode=mode,
            detach=False,
            query_after=lambda s: weights[s] > 0,
        )
        loss = sum(weights[s] * task_loss(self.kind, out, qy) for s, out in outs)
        return loss, task_metric(self.kind, outs[-1][1], qy, batched=False).detach()

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        steps = self.eval_inner_steps if steps is None else steps

        def task(p, sx, sy, qx, *, mode):
            if steps == 0:
                return forward(self.model, {**p, **self.step_bn(0, True)}, qx).detach()
            outs, _ = self._run(
                p,
                sx,
                sy,
                qx,
                steps=steps,
                first_order=True,
                mode=mode,
                detach=True,
                query_after=lambda s: s == steps - 1,
            )
            return outs[-1][1].detach()

        with torch.enable_grad():
            params = detached_params(named_params(self.model), self.strategy)
            return map_tasks(task, params, (support_x, support_y, query_x), self.strategy)


def _build(ctx: BuildContext) -> MAMLpp:
    return MAMLpp(ctx.backbone(), ctx.kind, **ctx.options.to_dict())


register(
    AlgorithmSpec(
        name="mamlpp",
        family="optimization",
        summary=(
            "MAML++ (Antoniou et al. 2019): per-step rates and batch-norm affine, multi-step loss, annealing"
        ),
        learner=MAMLpp,
        options=MAMLppOptions,
        needs=Needs(fixed_head=True),
        build=_build,
    )
)
