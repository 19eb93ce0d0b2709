"""Conv-4's fast path: `FastConv4`, the same model as the reference `metalab.models.Conv4` (same
parameters, state_dict, values and first and second derivatives) on fused paths and compiled CPU
kernels; `conv4` to choose between the two; and the second-order hint that a training loop gives
the fused paths (`second_order_forward`).

The kernels (`_conv4_kernels.cpp`) are compiled on first use (`_kernels.py`); without a C++
compiler, or with `METALAB_KERNELS=0` in the environment, `FastConv4` runs their Python fallbacks,
with the same results.
"""

from __future__ import annotations

from ..conv4 import Conv4
from .hints import expects_second_order, second_order_forward
from .model import FastConv4

__all__ = ["FastConv4", "conv4", "second_order_forward", "expects_second_order"]


def conv4(fast: bool = True, **kwargs) -> Conv4:
    """A Conv-4 built with `Conv4`'s arguments: `FastConv4` when `fast`, else the plain `Conv4`
    (always for strided blocks, which the fused paths do not cover)."""
    fast = fast and kwargs.get("downsample", "pool") == "pool"
    return (FastConv4 if fast else Conv4)(**kwargs)
