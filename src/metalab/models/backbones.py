"""The image backbones by name, as the `backbone:` config key chooses them.

- "conv4": Conv-4 (`Conv4`, or `FastConv4` on the fast path), `filters` per block; 64 in MAML's
  Omniglot and Prototypical Networks' models, 32 in MAML's miniImageNet model and Ravi &
  Larochelle's.
- "resnet12": ResNet-12 (`ResNet12`), widths (f, 2.5f, 5f, 10f) for `filters` f: 64-160-320-640
  at the papers' 64, 640 features.
- "resnet18": ResNet-18 (`ResNet18`), widths (f, 2f, 4f, 8f): 64-128-256-512 at 64, 512 features;
  the ImageNet stem (7x7/2 conv and max-pool) on images larger than 32 px, the CIFAR stem (3x3/1
  conv, no pool) on images of 32 px or less.

`norm` is "batch_stats" (`BatchStatNorm2d`: the batch's own statistics in train and eval mode, as
the MAML family differentiates through it) or "batch" (`nn.BatchNorm2d` with running statistics:
metric learners, transfer baselines). `norm_scale=False` fixes every batch norm's scale at 1 (a
buffer, not a parameter), leaving a learned shift only: the batch norm of the MAML authors'
TensorFlow models (`tf.contrib.layers.batch_norm`, whose `scale` is off by default).
`init="maml"` initialises Conv-4 as the MAML authors' Omniglot model (`maml_init`); "pytorch"
keeps PyTorch's default initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv4 import BatchStatNorm2d
from .fast import conv4
from .resnet import ResNet12, ResNet18

__all__ = [
    "BACKBONES",
    "PAPER_FILTERS",
    "image_backbone",
    "fix_norm_scales",
    "maml_init",
    "INITS",
    "resnet12_widths",
    "resnet18_widths",
    "resnet18_stem",
    "activation_floats",
]

BACKBONES = ("conv4", "resnet12", "resnet18")
INITS = ("pytorch", "maml")
PAPER_FILTERS = 64


def resnet12_widths(filters: int = PAPER_FILTERS) -> tuple[int, int, int, int]:
    """ResNet-12's block widths for a first width of `filters`: (64, 160, 320, 640) at 64."""
    return (filters, round(2.5 * filters), 5 * filters, 10 * filters)


def resnet18_widths(filters: int = PAPER_FILTERS) -> tuple[int, int, int, int]:
    """ResNet-18's stage widths for a first width of `filters`: (64, 128, 256, 512) at 64."""
    return (filters, 2 * filters, 4 * filters, 8 * filters)


def resnet18_stem(image_size: int) -> str:
    """ "cifar" (3x3/1 conv, no pool) for images of 32 px or less, else "imagenet" (7x7/2, pool)."""
    return "cifar" if image_size <= 32 else "imagenet"


def image_backbone(
    name: str,
    *,
    in_channels: int,
    image_size: int,
    norm: str,
    out_features: int | None = None,
    filters: int = PAPER_FILTERS,
    fast: bool = True,
    drop_block: float = 0.0,
    pool: bool = True,
    norm_scale: bool = True,
    downsample: str = "pool",
    init: str = "pytorch",
) -> nn.Module:
    """The backbone `name` (one of `BACKBONES`) for images of shape (in_channels, image_size,
    image_size), with a linear head of `out_features` outputs (None: the features are the output).

    Args:
        filters: Conv-4's filters per block; the ResNets' first width (their others scale with it).
        fast: Conv-4 only: `FastConv4` (the fused paths, `kernels: auto`) rather than `Conv4`.
        drop_block: ResNet-12 only: its DropBlock rate (0: none).
        pool: the ResNets only: False leaves the last block's feature map as the output (no head).
        downsample: Conv-4 only: "pool" or "stride" (`Conv4`).
        norm_scale: False fixes the batch norms' scales at 1 (`fix_norm_scales`).
        init: Conv-4 only: "pytorch" (PyTorch's defaults) or "maml" (`maml_init`).

    Every backbone has `.feature_dim` (its output size without a head) and `.head` (None without
    one), and is `head(features(x))`.
    """
    model = _backbone(
        name,
        in_channels=in_channels,
        image_size=image_size,
        norm=norm,
        out_features=out_features,
        filters=filters,
        fast=fast,
        drop_block=drop_block,
        pool=pool,
        downsample=downsample,
    )
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "maml":
        if name != "conv4":
            raise ValueError(f"init 'maml' applies to conv4, not {name}")
        maml_init(model)
    return model if norm_scale else fix_norm_scales(model)


def maml_init(model: nn.Module) -> nn.Module:
    """Initialise `model` as the MAML authors' Omniglot model (cbfinn/maml, `construct_conv_weights`):
    Xavier-uniform convolution kernels (`xavier_initializer_conv2d`, fans of k*k*in and k*k*out)
    with zero biases, and a linear head drawn from the standard normal (`tf.random_normal`) with a
    zero bias. Returns `model`, changed in place."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
        head = getattr(model, "head", None)
        if head is not None:
            head.weight.normal_()
            head.bias.zero_()
    return model


def fix_norm_scales(model: nn.Module) -> nn.Module:
    """`model` with each batch norm's scale turned from a parameter into a buffer of ones: the
    norms keep a learned shift only. Same state_dict keys; returns `model`, changed in place."""
    for module in model.modules():
        if isinstance(module, (BatchStatNorm2d, nn.modules.batchnorm._BatchNorm)):
            weight = module.weight
            if isinstance(weight, nn.Parameter):
                del module.weight
                module.register_buffer("weight", torch.ones_like(weight.detach()))
    return model


def _backbone(
    name: str,
    *,
    in_channels: int,
    image_size: int,
    norm: str,
    out_features: int | None,
    filters: int,
    fast: bool,
    drop_block: float,
    pool: bool,
    downsample: str,
) -> nn.Module:
    if name == "conv4":
        if not pool:
            raise ValueError("Conv-4's output is its flattened map; pool=False applies to the ResNets")
        if drop_block:
            raise ValueError("drop_block applies to resnet12")
        return conv4(
            fast,
            in_channels=in_channels,
            hidden=filters,
            out_features=out_features,
            image_size=image_size,
            norm=norm,
            downsample=downsample,
        )
    if downsample != "pool":
        raise ValueError(f"downsample applies to conv4, not {name}")
    if name == "resnet12":
        return ResNet12(
            in_channels,
            resnet12_widths(filters),
            out_features,
            norm=norm,
            drop_block=drop_block,
            image_size=image_size,
            pool=pool,
        )
    if name == "resnet18":
        if drop_block:
            raise ValueError("drop_block applies to resnet12")
        return ResNet18(
            in_channels,
            out_features,
            norm=norm,
            stem=resnet18_stem(image_size),
            image_size=image_size,
            widths=resnet18_widths(filters),
            pool=pool,
        )
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")


def activation_floats(name: str, image_size: int, filters: int = PAPER_FILTERS) -> int:
    """About how many activation values one image's forward pass keeps for the backward (every
    conv, norm, activation and pool output), from the architecture: the basis of a memory estimate."""
    s, f = image_size, filters
    if name == "conv4":
        total = 0
        for _ in range(4):  # conv and norm at full size, pool and ReLU at a quarter
            total += int(2.5 * f * s * s)
            s //= 2
        return total
    if name == "resnet12":
        total = 0
        for width in resnet12_widths(f):
            # conv, norm (x3), two activations, the shortcut's conv and norm, the sum and its
            # activation at full size, the pool at a quarter
            total += int(12.25 * width * s * s)
            s //= 2
        return total
    if name == "resnet18":
        widths = resnet18_widths(f)
        if resnet18_stem(s) == "imagenet":
            s = (s + 1) // 2
            total = 3 * widths[0] * s * s  # conv, norm, ReLU at half size
            s = (s + 1) // 2
            total += widths[0] * s * s  # the max-pool
        else:
            total = 3 * widths[0] * s * s
        for i, width in enumerate(widths):
            if i:
                s = (s + 1) // 2
            # two blocks of conv, norm, ReLU, conv, norm, sum, ReLU; the first with a shortcut's
            # conv and norm where the shape changes
            total += (14 + (2 if i else 0)) * width * s * s
        return total
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
