"""Data augmentation for colour images, on whole batches of tensors (no torchvision).

`standard_augment(x, generator)` applies, independently to every image of a batch of float images
in [0, 1] of shape (..., C, S, S):

1. a random crop of S x S from the image padded by `crop_padding(S)` zero pixels on every side
   (4 at 32 px as for CIFAR-FS in MetaOptNet; 8 from 64 px on, as for miniImageNet there);
2. a horizontal flip with probability 1/2;
3. colour jitter as in Chen et al. 2019's `ImageJitter`: brightness, then contrast, then
   saturation ("Color"), each scaled by a factor drawn uniformly from [1 - 0.4, 1 + 0.4], with the
   semantics of Pillow's `ImageEnhance` (brightness: x * f; contrast: blend with the image's mean
   grey level; saturation: blend with the image's own greyscale version), clipped to [0, 1] after
   each step. Greyscale images get brightness and contrast only.

Every random number is drawn on the CPU from the given `torch.Generator` (the sampler's own, so a
resumed run draws the same augmentations) and moved to the images' device.

The config key `augment` chooses it: `standard`, `none`, or `auto` (standard for learners that
pre-train on plain mini-batches, Baseline and Baseline++, on the colour benchmarks; none for
episodic meta-training, as the papers train those). Only meta-training data are augmented; validation
and meta-test episodes never are.

References: Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019 (the jitter, 0.4);
Lee et al., "Meta-Learning with Differentiable Convex Optimization", CVPR 2019 (crop padding).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "AUGMENTATIONS",
    "JITTER",
    "colour_jitter",
    "crop_padding",
    "random_crop",
    "random_flip",
    "standard_augment",
]

AUGMENTATIONS = ("auto", "none", "standard")
JITTER = 0.4  # Chen et al.'s brightness / contrast / colour strength
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as Pillow's convert("L")


def crop_padding(size: int) -> int:
    """Zero pixels padded on each side before the random crop: 4 below 64 px, else 8."""
    return 4 if size < 64 else 8


def _grey(x: Tensor) -> Tensor:
    """Greyscale of (N, 3, S, S) images, shape (N, 1, S, S)."""
    w = x.new_tensor(_GREY).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def random_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """(N, C, H, W) -> (N, C, H, W): each image's window at a random offset in its copy padded by
    `pad` zero pixels on every side (offsets uniform in [-pad, pad] on each axis)."""
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (N, W)
    index = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """(N, C, H, W): each image mirrored left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def colour_jitter(x: Tensor, generator: torch.Generator, strength: float = JITTER) -> Tensor:
    """(N, C, H, W) in [0, 1]: brightness, contrast and (C = 3) saturation, each scaled by its own
    factor in [1 - strength, 1 + strength] per image, as Pillow's `ImageEnhance` (see the module)."""
    n, c = x.shape[:2]
    factors = 1.0 + strength * (2.0 * torch.rand(n, 3, generator=generator) - 1.0)
    f = factors.to(x.device, x.dtype)[:, :, None, None, None]  # (N, 3, 1, 1, 1)
    out = (x * f[:, 0]).clamp(0.0, 1.0)
    grey = _grey(out) if c == 3 else out
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    out = (mean + f[:, 1] * (out - mean)).clamp_(0.0, 1.0)
    if c == 3:
        grey = _grey(out)
        out = (grey + f[:, 2] * (out - grey)).clamp_(0.0, 1.0)
    return out


def standard_augment(x: Tensor, generator: torch.Generator, *, jitter: float = JITTER) -> Tensor:
    """Random crop with padding, horizontal flip and colour jitter of every image (see the module).

    Args:
        x: float images in [0, 1], of shape (..., C, S, S), C 1 or 3; any device.
        generator: a CPU `torch.Generator`, the source of every random number.
        jitter: the strength of the colour jitter (0 turns it off).

    Returns:
        The augmented images, of the shape, dtype and device of `x`, in [0, 1].
    """
    shape = x.shape
    if x.numel() == 0:
        return x
    out = random_crop(x.reshape(-1, *shape[-3:]), crop_padding(shape[-1]), generator)
    out = random_flip(out, generator)
    if jitter > 0:
        out = colour_jitter(out, generator, jitter)
    return out.reshape(shape)
