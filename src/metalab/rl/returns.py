"""Episodes, returns, advantages and the linear feature baseline, batched over tasks.

Every quantity has the layout (T, N, H): T tasks, N trajectories per task, H time steps, with a
`mask` of the same shape that is 1 on the steps an episode took (an episode that ends early,
2D navigation near its goal, is 0 after its last step and its rewards there are 0).

References:
    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation", eq. 16: A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t = r_t + gamma V(s_{t+1})
    - V(s_t); lambda = 1 gives the discounted return minus the baseline (the MAML paper's setting).
    Duan et al. 2016 (rllab), LinearFeatureBaseline: V(s_t) linear in (s, s^2, t, t^2, t^3, 1)
    with t / 100 for the time, fitted by ridge regression on the discounted returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Episodes",
    "discounted_returns",
    "baseline_features",
    "fit_linear_baseline",
    "gae",
    "normalize_advantages",
    "advantages",
    "mean_return",
]


@dataclass
class Episodes:
    """N trajectories for each of T tasks.

    Attributes:
        obs: observations before each action, of shape (T, N, H, obs_dim).
        actions: the policy's raw actions, of shape (T, N, H, act_dim).
        rewards: of shape (T, N, H), 0 where `mask` is 0.
        mask: 1.0 on the steps taken, of shape (T, N, H).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    def flat(self) -> tuple[Tensor, Tensor, Tensor]:
        """obs (T, N*H, obs_dim), actions (T, N*H, act_dim), mask (T, N*H)."""
        t = self.obs.shape[0]
        return (
            self.obs.reshape(t, -1, self.obs.shape[-1]),
            self.actions.reshape(t, -1, self.actions.shape[-1]),
            self.mask.reshape(t, -1),
        )

    def to(self, device) -> Episodes:
        return Episodes(*(x.to(device) for x in (self.obs, self.actions, self.rewards, self.mask)))


def mean_return(episodes: Episodes) -> Tensor:
    """The undiscounted return of each trajectory, averaged over each task's N trajectories; (T,)."""
    return episodes.rewards.sum(-1).mean(-1)


def discounted_returns(rewards: Tensor, mask: Tensor, discount: float) -> Tensor:
    """R_t = r_t + discount * R_{t+1} within each episode, of the shape of `rewards` (T, N, H)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + discount * running * mask[..., t]
        out[..., t] = running
    return out * mask


def baseline_features(obs: Tensor, mask: Tensor) -> Tensor:
    """rllab's linear-baseline features (s, s^2, t, t^2, t^3, 1) with s clipped to [-10, 10] and
    t = step / 100; of shape (T, N, H, 2 * obs_dim + 4), zero on masked steps."""
    o = obs.clamp(-10, 10)
    steps = torch.arange(obs.shape[2], device=obs.device, dtype=obs.dtype) / 100.0
    t = steps.view(1, 1, -1, 1).expand(*obs.shape[:3], 1)
    feats = torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit_linear_baseline(obs: Tensor, mask: Tensor, returns: Tensor, reg: float = 1e-5) -> Tensor:
    """Fit V per task by ridge regression on its own trajectories and return its values (T, N, H).

    Solved in float64; where a system is singular the ridge term grows tenfold (up to five times),
    as rllab does."""
    feats = baseline_features(obs, mask).double()
    t, f = feats.shape[0], feats.shape[-1]
    x = feats.reshape(t, -1, f)
    y = (returns * mask).double().reshape(t, -1, 1)
    gram, rhs = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(f, dtype=torch.float64, device=obs.device)
    for _ in range(5):
        weights = torch.linalg.solve(gram + reg * eye, rhs)
        if torch.isfinite(weights).all():
            break
        reg *= 10
    values = (x @ weights).reshape(returns.shape)
    return values.to(returns.dtype) * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, discount: float, lam: float) -> Tensor:
    """Generalised advantage estimates; the value after an episode's last step is 0 (rllab)."""
    next_values = torch.zeros_like(values)
    next_values[..., :-1] = values[..., 1:] * mask[..., 1:]
    deltas = (rewards + discount * next_values - values) * mask
    return discounted_returns(deltas, mask, discount * lam)


def normalize_advantages(adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Each task's advantages shifted and scaled to mean 0 and standard deviation 1 over its steps
    (rllab's `center_adv`)."""
    dims = tuple(range(1, adv.dim()))
    count = mask.sum(dims, keepdim=True).clamp_min(1)
    mean = (adv * mask).sum(dims, keepdim=True) / count
    std = (((adv - mean) ** 2 * mask).sum(dims, keepdim=True) / count).sqrt()
    return (adv - mean) / (std + eps) * mask


def advantages(
    episodes: Episodes, discount: float, gae_lambda: float = 1.0, normalize: bool = True
) -> Tensor:
    """The advantages of `episodes` with a linear feature baseline fitted to each task's own
    trajectories, of shape (T, N, H)."""
    returns = discounted_returns(episodes.rewards, episodes.mask, discount)
    values = fit_linear_baseline(episodes.obs, episodes.mask, returns)
    adv = gae(episodes.rewards, values, episodes.mask, discount, gae_lambda)
    return normalize_advantages(adv, episodes.mask) if normalize else adv
