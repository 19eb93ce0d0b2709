"""Plain `nn.Module` backbones (Conv-4, ResNet-12, ResNet-18, an MLP), `FastConv4`, Conv-4 on
fused paths (`metalab.models.fast`), and `image_backbone`, an image backbone by name."""

from .backbones import BACKBONES, image_backbone
from .conv4 import BatchStatNorm2d, Conv4
from .fast import FastConv4
from .mlp import MLP
from .resnet import DropBlock, ResNet12, ResNet18

__all__ = [
    "MLP",
    "Conv4",
    "FastConv4",
    "BatchStatNorm2d",
    "ResNet12",
    "ResNet18",
    "DropBlock",
    "BACKBONES",
    "image_backbone",
]
