"""Conv-4, the backbone of the MAML and Prototypical Networks papers.

Four blocks of [conv 3x3 with 64 filters, batch normalisation, ReLU, 2x2 max-pooling]; a 28x28
Omniglot image comes out as a 64-dimensional feature vector. With `downsample="stride"` the blocks
are [conv 3x3 with stride 2, batch normalisation, ReLU] and the last map is averaged over its
positions: the MAML authors' Omniglot model (28 -> 14 -> 7 -> 4 -> 2, then the mean of the 2x2 map).

This is the reference model: every block runs as the PyTorch layers listed in `Conv4.features`.
`metalab.models.fast.FastConv4` is the same model (same parameters and state_dict) computed on fused
paths, with the same values and derivatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv4", "BatchStatNorm2d", "batch_norm_2d", "DOWNSAMPLING"]

DOWNSAMPLING = ("pool", "stride")


def batch_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Batch norm with the batch's statistics and an affine part (one fused `F.batch_norm`) on an
    (n, c, h, w) tensor, done as an (n*h*w, c) matrix when x is channels-last.

    A channels-last tensor is, in memory, an (n*h*w, c) matrix, and batch norm over (n, h, w) is the
    same thing as batch norm over that matrix's rows. PyTorch's batch-norm backward and double
    backward (which second-order MAML runs through every inner step) reduce over the non-channel
    dimensions, and on a channels-last 4-d tensor those reductions and the copies around them are
    slow; on the matrix view they are plain column sums (docs/engine.md). Same values and
    gradients (tests/test_functional.py). In fp32 PyTorch's channels-last batch norm (this 2-d
    form and the 4-d one alike) is less accurate than its NCHW kernel: it loses digits on a nearly
    constant channel (the first block's map over blank Omniglot background) and sums its columns
    over all n*h*w rows.
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        y = F.batch_norm(rows, None, None, weight, bias, True, 0.0, eps)
        return y.view(n, h, w, c).permute(0, 3, 1, 2)
    return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)


class BatchStatNorm2d(nn.Module):
    """Batch normalisation that always uses the current batch's statistics, as MAML does.

    Outside torch.func transforms one fused `F.batch_norm` call with the affine weight and bias does
    it all (`batch_norm_2d`). Under vmap the affine part is applied afterwards as
    `x * weight + bias`: passing weight and bias into `F.batch_norm` there gives wrong second-order
    gradients on torch 2.13 (see DESIGN.md, pitfalls), while this form matches the per-task loop to
    1e-16. No running statistics are kept, so a model behaves the same in train and eval mode
    (transductive over the batch it is given).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if not torch._C._functorch.is_functorch_wrapped_tensor(x):  # not under vmap / torch.func.grad
            return batch_norm_2d(x, self.weight, self.bias, self.eps)
        x = F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class Conv4(nn.Module):
    """Conv-4 backbone with an optional linear head.

    Args:
        in_channels: 1 for Omniglot.
        hidden: filters per block (64).
        out_features: size of a linear head on the features (N for MAML's N-way classifier);
            None leaves the features as the output (metric-based methods).
        image_size: input height/width, to size the head (28 for Omniglot).
        norm: "batch_stats" (always the batch's statistics, for the gradient-based family) or
            "batch" (a standard BatchNorm2d with running statistics, for metric-based methods).
        downsample: "pool" (2x2 max-pooling after each block) or "stride" (stride-2 convolutions,
            no pooling, the last map averaged over its positions: the MAML authors' Omniglot model;
            the fused paths of `FastConv4` do not apply to it).
        channels_last: keep the weights, and so the convolutions' outputs, in the channels-last
            memory layout: the same results (to float tolerance), faster on CPU
            (docs/engine.md). In fp32 the batch norms then run PyTorch's channels-last kernel,
            less accurate on nearly constant channels (see `batch_norm_2d`); `FastConv4` computes
            the first block's statistics in float64 instead.

    Input of shape (n, in_channels, image_size, image_size) -> (n, out_features) or (n, feature_dim).
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = None,
        image_size: int = 28,
        norm: str = "batch_stats",
        channels_last: bool = True,
        downsample: str = "pool",
    ) -> None:
        super().__init__()
        if norm not in ("batch_stats", "batch"):
            raise ValueError(f"norm must be 'batch_stats' or 'batch', got {norm!r}")
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLING)}, got {downsample!r}")
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            normalise = BatchStatNorm2d(hidden) if norm == "batch_stats" else nn.BatchNorm2d(hidden)
            if downsample == "stride":
                blocks += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1), normalise, nn.ReLU()]
                channels, size = hidden, (size + 1) // 2
                continue
            # Pooling before the ReLU computes the same function and gradients (max-pooling commutes
            # with a monotone ReLU) with the ReLU on a quarter of the values.
            blocks += [nn.Conv2d(channels, hidden, 3, padding=1), normalise, nn.MaxPool2d(2), nn.ReLU()]
            channels, size = hidden, size // 2
        if downsample == "stride":
            blocks.append(nn.AdaptiveAvgPool2d(1))  # the mean over the last map's positions
            size = 1
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.feature_dim = hidden * size * size
        self.head = nn.Linear(self.feature_dim, out_features) if out_features else None
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        # each block: conv -> norm -> 2x2 max-pool -> ReLU, or strided conv -> norm -> ReLU
        z = self.features(x)
        return self.head(z) if self.head is not None else z
