"""Plain `nn.Module` backbones, and `FastConv4`, Conv-4 on fused paths (`metalab.models.fast`)."""

from .conv4 import BatchStatNorm2d, Conv4
from .fast import FastConv4
from .mlp import MLP

__all__ = ["MLP", "Conv4", "FastConv4", "BatchStatNorm2d"]
