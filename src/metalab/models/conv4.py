"""Conv-4, the backbone of the MAML and Prototypical Networks papers.

Four blocks of [conv 3x3 with 64 filters, batch normalisation, ReLU, 2x2 max-pooling]; a 28x28
Omniglot image comes out as a 64-dimensional feature vector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv4", "BatchStatNorm2d"]


class BatchStatNorm2d(nn.Module):
    """Batch normalisation that always uses the current batch's statistics, as MAML does.

    Outside torch.func transforms one fused `F.batch_norm` call with the affine weight and bias does it
    all (about 10% faster per Conv-4 meta-iteration here, second-order gradients checked against a
    hand-written reference in tests/test_functional.py). Under vmap the affine part is applied
    afterwards as `x * weight + bias`: passing weight and bias into `F.batch_norm` there gives wrong
    second-order gradients on torch 2.13 (see DESIGN.md, pitfalls), while this form matches the
    per-task loop to 1e-16. No running statistics are kept, so a model behaves the same in train and
    eval mode (transductive over the batch it is given).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if not torch._C._functorch.is_functorch_wrapped_tensor(x):  # not under vmap / torch.func.grad
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
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
        channels_last: keep weights and activations in the channels-last memory layout; the
            results are the same (to float tolerance) and a Conv-4 forward+backward ran 1.4-1.5x
            faster on this project's 2-core CPU (docs/performance.md).

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
    ) -> None:
        super().__init__()
        if norm not in ("batch_stats", "batch"):
            raise ValueError(f"norm must be 'batch_stats' or 'batch', got {norm!r}")
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            # Pooling before the ReLU computes the same function and gradients (max-pooling commutes
            # with a monotone ReLU) with the ReLU on a quarter of the values: ~10% faster here.
            blocks += [
                nn.Conv2d(channels, hidden, 3, padding=1),
                BatchStatNorm2d(hidden) if norm == "batch_stats" else nn.BatchNorm2d(hidden),
                nn.MaxPool2d(2),
                nn.ReLU(),
            ]
            channels, size = hidden, size // 2
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.feature_dim = hidden * size * size
        self.head = nn.Linear(self.feature_dim, out_features) if out_features else None
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        # Under torch.func.vmap a tensor cannot be asked for its memory format; the layout is only
        # a speed choice, so vmapped calls keep whatever layout they get.
        layout = self.channels_last and x.dim() == 4 and not torch._C._functorch.is_batchedtensor(x)
        if layout:
            x = x.contiguous(memory_format=torch.channels_last)
        z = x
        for i, layer in enumerate(self.features):
            z = layer(z)
            if i == 0 and layout:
                # With one input channel the first convolution cannot tell the layouts apart and
                # answers in NCHW; its batch norm, pooling and ReLU then run 2-5x slower. Asking for
                # channels-last here made a MAML meta-iteration ~1.2x faster.
                z = z.contiguous(memory_format=torch.channels_last)
        return self.head(z) if self.head is not None else z
