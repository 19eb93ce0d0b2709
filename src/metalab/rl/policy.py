"""The Gaussian MLP policy of the MAML RL experiments, as a function of a parameter dict.

References:
    Finn, Abbeel & Levine 2017, section 5.3: a neural network policy with two hidden layers of
    size 100 and ReLU nonlinearities; rllab's GaussianMLPPolicy: a mean network and a
    state-independent log standard deviation (initialised to log 1), Glorot-uniform weights.

The parameters travel as a dict like every inner loop in `metalab.functional`; each tensor either
is shared by all tasks (`weight` of shape (out, in)) or has a leading task dimension
(`(T, out, in)`, the adapted policies of T tasks), and the same code runs both: observations of
shape (T, M, obs_dim) go through batched matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["GaussianMLPPolicy", "gaussian_log_prob", "gaussian_kl"]

LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """pi(a | s) = N(mean(s), diag(exp(log_std))^2), mean an MLP with ReLU hidden layers.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        hidden: hidden widths (paper: 100, 100).
        init_std: the initial standard deviation.

    Example:
        >>> policy = GaussianMLPPolicy(2, 2)
        >>> mean, log_std = policy.distribution(dict(policy.named_parameters()), torch.zeros(4, 10, 2))
        >>> mean.shape, log_std.shape
        (torch.Size([4, 10, 2]), torch.Size([1, 2]))
    """

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100), init_std: float = 1.0
    ) -> None:
        super().__init__()
        widths = [obs_dim, *hidden, act_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def distribution(self, params: Mapping[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean of shape (T, M, act_dim) and log std broadcastable against it, for observations of
        shape (T, M, obs_dim) (or (M, obs_dim) with shared parameters)."""
        h = obs
        last = len(self.layers) - 1
        for i in range(len(self.layers)):
            weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            h = torch.matmul(h, weight.transpose(-1, -2)) + bias.unsqueeze(-2)
            if i < last:
                h = torch.relu(h)
        return h, params["log_std"].unsqueeze(-2)

    def forward(self, obs: Tensor) -> Tensor:
        """The mean action of the module's own parameters."""
        return self.distribution(dict(self.named_parameters()), obs)[0]


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, exp(log_std)^2), summed over the last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """KL(N0 || N1) of diagonal Gaussians, summed over the last dimension."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5).sum(-1)
