"""MAML for reinforcement learning, with its two baselines: a pretrained and a random policy.

References:
    Finn, Abbeel & Levine 2017, section 5.3 and algorithm 3: for each task T_i of a meta-batch,
    sample K trajectories with f_theta, take the inner policy-gradient step
    theta'_i = theta - alpha grad L_Ti(f_theta) (REINFORCE with a linear feature baseline), sample
    trajectories with f_theta'_i, and update theta on the post-update objective
    sum_i L_Ti(f_theta'_i) with TRPO (KL of the post-update policies, delta = 0.01),
    differentiating through the inner step (second order) unless first_order.
    The "pretrained" baseline trains one policy on all tasks with the same outer step and no inner
    step; "random" is the initial policy. All three are adapted with the same inner steps at test
    time (alpha for the first, later_inner_lr for the rest: the paper halves alpha after the first).

The learner fits the generic loop: the task source gives task parameters (`RLTaskBatch`),
`meta_loss` samples the episodes, takes the inner step(s) through `metalab.functional.inner_step`
and returns the surrogate loss (a gradient equal to the meta policy gradient); with `trpo` the
learner owns the outer update (`owns_outer_step`, `outer_step`), otherwise the loop's optimizer
(Adam at outer_lr) steps on that gradient. Inner steps run on all tasks of a meta-batch at once:
the parameters get a leading task dimension and one backward pass gives each task its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..algorithms.base import MetaLearner
from ..algorithms.optimization.options import MAX_INNER_STEPS
from ..algorithms.spec import AlgorithmSpec, BuildContext, Needs, OptionError, Options, option, register
from ..functional import SGD, Params, inner_step, named_params
from .envs import make_env
from .policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from .returns import Episodes, advantages, mean_return
from .tasks import RLTaskBatch
from .trpo import flat, kl_fisher_product, trpo_step

__all__ = ["MAMLRL", "RLOptions", "MAMLRLOptions"]

MODES = ("maml", "pretrained", "random")


@dataclass
class RLOptions(Options):
    """The keys shared by the RL learners (the environment, the returns, the outer step)."""

    # The default is the other inner-loop learners' (a key shared by several algorithms is dropped
    # at its default when another algorithm runs); configs/rl/*.yaml set the paper's 0.1.
    inner_lr: float = option(
        0.01, "alpha, the step size of the first inner policy-gradient step (paper: 0.1)", allowed="> 0"
    )
    later_inner_lr: Optional[float] = option(
        None,
        "alpha of the second and later inner steps (default: inner_lr / 2, as the paper evaluates)",
        allowed="> 0",
    )
    eval_inner_steps: Optional[int] = option(
        None,
        "inner steps of validation (default: inner_steps, else 1); metalab eval reports eval_steps",
        minimum=0,
        maximum=MAX_INNER_STEPS,
    )
    trpo: bool = option(True, "outer step by TRPO (false: the outer_optimizer at outer_lr)")
    max_kl: float = option(0.01, "TRPO: delta, the bound on the mean KL of an outer step", allowed="> 0")
    cg_iters: int = option(10, "TRPO: conjugate-gradient iterations", minimum=1)
    cg_damping: float = option(1e-5, "TRPO: damping added to the Fisher-vector products", allowed=">= 0")
    fisher: str = option(
        "exact",
        "TRPO's Fisher: exact (the KL's Hessian through the inner step) or post_update (w.r.t. the "
        "post-update parameters, the inner step's Jacobian taken as the identity: much cheaper)",
        choices=("exact", "post_update"),
    )
    fisher_subsample: float = option(
        1.0,
        "TRPO: fraction of the time steps the Fisher-vector products use (rllab's subsample_factor)",
        allowed="in (0, 1]",
    )
    ls_backtracks: int = option(15, "TRPO: line-search steps (each shrinks the step by 0.8)", minimum=0)
    discount: float = option(0.99, "gamma, the discount of the returns", allowed="in (0, 1]")
    gae_lambda: float = option(
        1.0, "lambda of GAE (1: return minus the linear baseline)", allowed="in [0, 1]"
    )
    horizon: Optional[int] = option(
        None, "steps per episode (default: the paper's, 100 navigation, 200 half-cheetah)", minimum=1
    )
    nav_reward: str = option(
        "distance",
        "navigation reward: distance (-|x - goal|, the authors' code) or squared (the paper's text)",
        choices=("distance", "squared"),
    )

    def resolved(self, config) -> RLOptions:
        new = super().resolved(config)
        if new.later_inner_lr is None:
            new.later_inner_lr = new.inner_lr / 2
        if new.eval_inner_steps is None:
            new.eval_inner_steps = getattr(new, "inner_steps", 1) or 1
        return new

    def check(self, config) -> None:
        for name in ("inner_lr", "max_kl"):
            if getattr(self, name) <= 0:
                raise OptionError(f"config key {name!r} must be > 0, got {getattr(self, name)}")
        if self.later_inner_lr is not None and self.later_inner_lr <= 0:
            raise OptionError(f"config key 'later_inner_lr' must be > 0, got {self.later_inner_lr}")
        if not 0 < self.fisher_subsample <= 1:
            raise OptionError(f"config key 'fisher_subsample' must be in (0, 1], got {self.fisher_subsample}")
        if self.cg_damping < 0:
            raise OptionError(f"config key 'cg_damping' must be >= 0, got {self.cg_damping}")
        if not 0 < self.discount <= 1:
            raise OptionError(f"config key 'discount' must be in (0, 1], got {self.discount}")
        if not 0 <= self.gae_lambda <= 1:
            raise OptionError(f"config key 'gae_lambda' must be in [0, 1], got {self.gae_lambda}")
        if self.nav_reward != "distance" and config.benchmark != "navigation":
            raise OptionError("config key 'nav_reward' applies to the navigation benchmark only")

    def eval_steps(self) -> list[int]:
        return [0, 1, 2, 3]  # the paper's figures: returns after 0 to 3 inner steps


@dataclass
class MAMLRLOptions(RLOptions):
    inner_steps: int = option(
        1,
        "inner policy-gradient steps in meta-training, each on fresh trajectories",
        minimum=0,
        maximum=MAX_INNER_STEPS,
    )
    first_order: bool = option(False, "detach the inner gradients (first-order MAML)")


@dataclass
class _Sampled:
    """What `meta_loss` sampled, kept for the outer step: the inner steps' episodes and
    advantages, and the meta-objective's episodes with the sampling policy's distribution."""

    support: list
    obs: Tensor
    actions: Tensor
    mask: Tensor
    adv: Tensor
    old_mean: Tensor
    old_log_std: Tensor
    old_logp: Tensor
    adapted: Params
    fisher_rows: Tensor
    kl: Tensor | None = None


class MAMLRL(MetaLearner):
    """MAML with policy-gradient inner steps (or one of its baselines) on a vectorised environment.

    Args:
        policy: the Gaussian MLP policy whose parameters are meta-learned.
        env: a vectorised environment (`metalab.rl.envs`).
        mode: "maml", "pretrained" (no inner step in training) or "random" (never updated).
        shots: trajectories per task for each inner step in training (fast_batch_size).
        queries: trajectories per task after adaptation, for the meta-objective.
        test_shots: trajectories per task for each step at evaluation (default: shots).
        inner_lr, later_inner_lr: alpha of the first and of later inner steps.
        inner_steps: inner steps in training; eval_inner_steps: in validation.
        first_order: detach the inner gradients.
        trpo: TRPO outer step (the learner owns it); else the loop's optimizer steps.
        max_kl, cg_iters, cg_damping, ls_backtracks: TRPO's settings.
        discount, gae_lambda: the returns and advantages.

    Example:
        >>> from metalab.rl import RLTasks, make_env
        >>> env = make_env("navigation", horizon=20)
        >>> learner = MAMLRL(GaussianMLPPolicy(2, 2, (16,)), env, shots=4, queries=4)
        >>> loss, metrics = learner.meta_loss(RLTasks("navigation", seed=0).sample(3))
        >>> stats = learner.outer_step(loss)
    """

    kind = "rl"
    inner_loop = True

    def __init__(
        self,
        policy: GaussianMLPPolicy,
        env,
        *,
        mode: str = "maml",
        shots: int = 20,
        queries: int = 20,
        test_shots: int | None = None,
        inner_lr: float = 0.1,
        later_inner_lr: float | None = None,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        trpo: bool = True,
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 1e-5,
        fisher: str = "exact",
        fisher_subsample: float = 1.0,
        ls_backtracks: int = 15,
        discount: float = 0.99,
        gae_lambda: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.policy, self.env, self.mode = policy, env, mode
        self.shots, self.queries = shots, queries
        self.test_shots = shots if test_shots is None else test_shots
        self.inner_lr = inner_lr
        self.later_inner_lr = inner_lr / 2 if later_inner_lr is None else later_inner_lr
        self.inner_steps = inner_steps if mode == "maml" else 0
        self.eval_inner_steps = (inner_steps or 1) if eval_inner_steps is None else eval_inner_steps
        self.first_order, self.trpo = first_order, trpo
        self.max_kl, self.cg_iters, self.cg_damping, self.ls_backtracks = (
            max_kl,
            cg_iters,
            cg_damping,
            ls_backtracks,
        )
        self.fisher, self.fisher_subsample = fisher, fisher_subsample
        self.discount, self.gae_lambda = discount, gae_lambda
        self._sampled: _Sampled | None = None

    # --- the contract ------------------------------------------------------------------------------

    @property
    def owns_outer_step(self) -> bool:
        """TRPO (and the random policy, which never changes) update the parameters themselves."""
        return self.trpo or self.mode == "random"

    def metric_name(self) -> str:
        return "return"

    def predict(self, support_x, support_y, query_x, *, steps=None) -> Tensor:
        raise TypeError(
            f"{type(self).__name__} acts in environments and answers no queries: score it by its returns "
            "(metalab eval, evaluate_batch)"
        )

    def meta_loss(self, batch: RLTaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Sample, adapt, sample again; the surrogate loss -mean(ratio * advantage) of the
        post-update episodes (the pre-update ones for the pretrained policy), whose gradient is
        the meta policy gradient, and the mean returns before and after adaptation."""
        generator = torch.Generator().manual_seed(batch.seed)
        tasks = batch.tasks
        params = named_params(self.policy)
        episodes = self.rollout(_detached(params), tasks, self.shots, generator)
        metrics = {"return_pre": mean_return(episodes).mean().item()}
        if self.mode == "random":
            self._sampled = None
            loss = sum((p * 0).sum() for p in params.values())  # a zero with the parameters' graph
            return loss, {"loss": 0.0, "return": metrics["return_pre"], **metrics}
        adapted, support = params, []
        if self.inner_steps:
            adapted = _per_task(params, tasks.shape[0])
            for step in range(self.inner_steps):
                support.append((episodes, self._advantages(episodes)))
                adapted = self._inner_step(adapted, *support[-1], step, self.first_order)
                n = self.queries if step == self.inner_steps - 1 else self.shots
                episodes = self.rollout(_detached(adapted), tasks, n, generator)
        obs, actions, mask = episodes.flat()
        adv = self._advantages(episodes).reshape(mask.shape)
        with torch.no_grad():
            old_mean, old_log_std = self.policy.distribution(_detached(adapted), obs)
            old_logp = gaussian_log_prob(old_mean, old_log_std, actions)
        rows = mask.shape[1]
        fisher_rows = torch.randperm(rows, generator=generator)[: max(1, round(rows * self.fisher_subsample))]
        sampled = _Sampled(
            support, obs, actions, mask, adv, old_mean, old_log_std, old_logp, _detached(adapted), fisher_rows
        )
        loss, _ = self._surrogate(adapted, sampled)
        if self.trpo and (self.fisher == "exact" or not support):
            sampled.kl = self._fisher_kl(adapted, sampled)
        self._sampled = sampled
        metrics["return"] = mean_return(episodes).mean().item()
        return loss, {"loss": loss.item(), **metrics}

    def outer_step(self, loss: Tensor) -> dict[str, float]:
        """TRPO on the meta-objective: the Fisher of the post-update policies' KL, conjugate
        gradient, a line search; the KL reached and the line-search steps taken."""
        sampled, self._sampled = self._sampled, None
        if self.mode == "random" or sampled is None:
            return {}
        params = [p for p in self.policy.parameters() if p.requires_grad]

        def evaluate() -> tuple[Tensor, Tensor]:
            with torch.enable_grad():  # the inner step needs gradients; the values alone are kept
                adapted = self._readapt(sampled, first_order=True)
                new_loss, kl = self._surrogate(adapted, sampled)
            return new_loss.detach(), kl.detach()

        if sampled.kl is not None:
            fisher = kl_fisher_product(params, sampled.kl, self.cg_damping)
        else:
            fisher = self._post_update_fisher(sampled)
        stats = trpo_step(
            params,
            loss,
            fisher,
            evaluate,
            max_kl=self.max_kl,
            cg_iters=self.cg_iters,
            backtracks=self.ls_backtracks,
        )
        return {"kl": stats["kl"], "surrogate_after": stats["loss_after"], "backtracks": stats["backtracks"]}

    def _post_update_fisher(self, sampled: _Sampled):
        """v -> sum_i H_i v + damping v, H_i the Hessian of the KL w.r.t. task i's post-update
        parameters: the Fisher of the post-update policies with the inner step's Jacobian taken
        as the identity."""
        names = list(sampled.adapted)
        leaves = {k: v.detach().requires_grad_() for k, v in sampled.adapted.items()}
        with torch.enable_grad():
            kl = self._fisher_kl(leaves, sampled)
            grads = torch.autograd.grad(kl, [leaves[k] for k in names], create_graph=True)
        shapes = [leaves[k].shape[1:] for k in names]

        def product(v: Tensor) -> Tensor:
            parts, offset = [], 0
            for shape in shapes:
                n = shape.numel()
                parts.append(v[offset : offset + n].view(shape))
                offset += n
            dot = sum((g * p).sum() for g, p in zip(grads, parts))  # each task's gradient times v
            hv = torch.autograd.grad(dot, [leaves[k] for k in names], retain_graph=True)
            return flat([h.sum(0) for h in hv]) + self.cg_damping * v

        return product

    def evaluate_batch(self, batch: RLTaskBatch, *, steps: int | None = None) -> Tensor:
        """Each task's mean return after `steps` inner steps (default `eval_inner_steps`), of shape (T,)."""
        steps = self.eval_inner_steps if steps is None else steps
        return self.adaptation(batch, steps)[0][-1]

    @torch.no_grad()
    def adaptation(self, batch: RLTaskBatch, steps: int) -> tuple[list[Tensor], list[Episodes]]:
        """Adapt to each task of `batch` by `steps` inner steps, each on `test_shots` fresh
        trajectories; the mean returns (T,) and the episodes after 0, 1, ..., `steps` steps."""
        generator = torch.Generator().manual_seed(batch.seed)
        tasks = batch.tasks
        params = _per_task(_detached(named_params(self.policy)), tasks.shape[0])
        returns, sampled = [], []
        for step in range(steps + 1):
            episodes = self.rollout(params, tasks, self.test_shots, generator)
            returns.append(mean_return(episodes))
            sampled.append(episodes)
            if step < steps:
                with torch.enable_grad():
                    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
                    params = _detached(
                        self._inner_step(leaves, episodes, self._advantages(episodes), step, True)
                    )
        return returns, sampled

    # --- sampling and the objectives ----------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, params: Params, tasks: Tensor, n: int, generator: torch.Generator) -> Episodes:
        """n episodes per task with the policy `params` (shared, or with a leading task dimension)."""
        env, t_count = self.env, tasks.shape[0]
        first = next(self.policy.parameters())
        device, dtype = first.device, first.dtype
        obs = env.reset(tasks.repeat_interleave(n, 0), generator)
        alive = torch.ones(t_count * n, dtype=torch.bool)
        steps = []
        for _ in range(env.horizon):
            o = obs.to(device, dtype).view(t_count, n, -1)
            mean, log_std = self.policy.distribution(params, o)
            noise = torch.randn(mean.shape, generator=generator).to(device, dtype)
            action = mean + log_std.exp() * noise
            obs, reward, done = env.step(action.reshape(t_count * n, -1).cpu())
            live = alive.to(device, dtype).view(t_count, n)
            steps.append((o, action, reward.to(device, dtype).view(t_count, n) * live, live))
            alive = alive & ~done
        obs_all, actions, rewards, mask = (torch.stack(x, dim=2) for x in zip(*steps))
        return Episodes(obs_all, actions, rewards, mask)

    def _advantages(self, episodes: Episodes) -> Tensor:
        return advantages(episodes, self.discount, self.gae_lambda)

    def _inner_loss(self, params: Params, episodes: Episodes, adv: Tensor) -> Tensor:
        """The REINFORCE loss -mean_t(log pi(a_t | s_t) A_t) of each task, summed over tasks (so
        that the gradient w.r.t. per-task parameters is each task's own)."""
        obs, actions, mask = episodes.flat()
        mean, log_std = self.policy.distribution(params, obs)
        logp = gaussian_log_prob(mean, log_std, actions)
        per_task = -(logp * adv.reshape(mask.shape) * mask).sum(1) / mask.sum(1).clamp_min(1)
        return per_task.sum()

    def _inner_step(
        self, params: Params, episodes: Episodes, adv: Tensor, step: int, first_order: bool
    ) -> Params:
        rule = SGD(self.inner_lr if step == 0 else self.later_inner_lr)
        new, _ = inner_step(
            lambda p: self._inner_loss(p, episodes, adv),
            params,
            rule,
            first_order=first_order,
            mode="autograd",
        )
        return new

    def _readapt(self, sampled: _Sampled, first_order: bool) -> Params:
        """The adapted parameters as a function of the current ones, on the stored episodes."""
        params = named_params(self.policy)
        if not sampled.support:
            return params
        adapted = _per_task(params, sampled.obs.shape[0])
        for step, (episodes, adv) in enumerate(sampled.support):
            adapted = self._inner_step(adapted, episodes, adv, step, first_order)
        return adapted

    def _fisher_kl(self, adapted: Params, sampled: _Sampled) -> Tensor:
        """The mean KL(pi_old || pi') over the time steps the Fisher-vector products use."""
        rows = sampled.fisher_rows
        mean, log_std = self.policy.distribution(adapted, sampled.obs[:, rows])
        kl = gaussian_kl(sampled.old_mean[:, rows], sampled.old_log_std, mean, log_std)
        mask = sampled.mask[:, rows]
        return (kl * mask).sum() / mask.sum().clamp_min(1)

    def _surrogate(self, adapted: Params, sampled: _Sampled) -> tuple[Tensor, Tensor]:
        """-mean over tasks of mean_t(pi'(a|s) / pi_old(a|s) A_t), and the mean KL(pi_old || pi')."""
        mean, log_std = self.policy.distribution(adapted, sampled.obs)
        logp = gaussian_log_prob(mean, log_std, sampled.actions)
        ratio = torch.exp(logp - sampled.old_logp)
        mask = sampled.mask
        count = mask.sum(1).clamp_min(1)
        loss = -((ratio * sampled.adv * mask).sum(1) / count).mean()
        kl = gaussian_kl(sampled.old_mean, sampled.old_log_std, mean, log_std)
        return loss, (kl * mask).sum() / mask.sum().clamp_min(1)


def _detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def _per_task(params: Params, tasks: int) -> Params:
    """The parameters with a leading task dimension (views: every task starts from the same ones)."""
    return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}


def _build(ctx: BuildContext, mode: str) -> MAMLRL:
    c, options = ctx.config, ctx.options.to_dict()
    env = make_env(c.benchmark, horizon=options.pop("horizon"), reward=options.pop("nav_reward"))
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, c.hidden)
    return MAMLRL(
        policy, env, mode=mode, shots=c.shots, queries=c.queries, test_shots=c.test_shots, **options
    )


_NEEDS = Needs(kinds=("rl",))
register(
    AlgorithmSpec(
        name="maml_rl",
        family="optimization",
        summary=(
            "MAML for RL (Finn et al. 2017, section 5.3): policy-gradient inner steps, TRPO on the "
            "post-update returns"
        ),
        learner=MAMLRL,
        options=MAMLRLOptions,
        needs=_NEEDS,
        build=lambda ctx: _build(ctx, "maml"),
    )
)
register(
    AlgorithmSpec(
        name="pretrained_rl",
        family="transfer",
        summary="one policy trained on all RL tasks with the same outer step, adapted at test time",
        learner=MAMLRL,
        options=RLOptions,
        needs=_NEEDS,
        build=lambda ctx: _build(ctx, "pretrained"),
    )
)
register(
    AlgorithmSpec(
        name="random_rl",
        family="transfer",
        summary="the randomly initialised policy, never trained, adapted at test time (baseline)",
        learner=MAMLRL,
        options=RLOptions,
        needs=_NEEDS,
        build=lambda ctx: _build(ctx, "random"),
    )
)
