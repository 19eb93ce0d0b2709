"""Multi-layer perceptron: the 1-40-40-1 ReLU regressor of the MAML sine-wave benchmark."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected ReLU network.

    Args:
        in_features: input size (1 for sine waves).
        hidden: widths of the hidden layers ((40, 40) in Finn et al. 2017, section 5.1).
        out_features: output size.

    Input of shape (n, in_features) -> output of shape (n, out_features).
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
