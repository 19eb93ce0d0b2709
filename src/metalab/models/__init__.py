"""Plain `nn.Module` backbones."""
from .conv4 import BatchStatNorm2d, Conv4
from .mlp import MLP

__all__ = ["MLP", "Conv4", "BatchStatNorm2d"]
