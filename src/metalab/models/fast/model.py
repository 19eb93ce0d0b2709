"""`FastConv4`: `Conv4` on fused paths, block by block where they apply, the plain layers elsewhere.

On a channels-last input:

- a one-channel first block (conv -> norm -> pool -> ReLU) runs as `_single_channel_block`: the
  convolution as a product of the nine shifted images, its batch statistics from those nine
  columns, the pool before the norm's affine map; then, outside second-order inner steps, as one
  compiled pass (`_FirstBlockKernel`) or, without the kernels, a chunk of images at a time
  (`_PooledProductBlock`);
- outside second-order inner steps, blocks 2-4's norm -> pool -> ReLU run as compiled kernels
  (`_norm_pool_relu`).

Each path computes the same values and first and second derivatives as the plain layers, running
statistics included (tests/test_functional.py, tests/test_kernels.py); docs/engine.md
("Conv-4's fast path") says what each one gains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conv4 import BatchStatNorm2d, Conv4
from ._kernels import kernels
from .functions import (
    _CHUNK_ROWS,
    _FirstBlockKernel,
    _image_columns,
    _NormPoolReLUKernel,
    _pooled_product_block,
    _PooledProductBlock,
)
from .hints import expects_second_order

__all__ = ["FastConv4"]


class FastConv4(Conv4):
    """`Conv4` (same constructor, parameters, buffers and state_dict) whose forward takes the fused
    paths of `metalab.models.fast` where they apply and the plain layers elsewhere: with
    `channels_last`, on CPU tensors of one dtype, outside torch.func transforms and autocast; the
    compiled kernels only where they could be built (`METALAB_KERNELS=0` switches them off) and not
    inside a second-order inner step (`second_order_forward`), whose double backward goes through
    the plain ops. With `channels_last=False` it runs exactly what `Conv4` runs.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            # The fused paths are tuned for, and the kernels compiled for, the CPU: on a GPU (or any
            # other device) the plain layers run, and the kernels are neither built nor called.
            return super().forward(x)
        # Under torch.func.vmap a tensor cannot be asked for its memory format; the layout is only
        # a speed choice, so vmapped calls keep whatever layout they get (and the plain layers).
        layout = self.channels_last and x.dim() == 4 and not torch._C._functorch.is_batchedtensor(x)
        if layout:
            x = x.contiguous(memory_format=torch.channels_last)
        z, start = x, 0
        if layout and x.shape[1] == 1:
            conv, norm = self.features[0], self.features[1]
            if _stats_first_applies(norm):
                z, start = _single_channel_block(conv, norm, x), 4  # conv, norm, pool and ReLU
            else:
                z, start = _single_channel_conv3x3(conv, x), 1
        layers, i = self.features, start
        fused = layout and _kernels_apply()
        while i < len(layers):
            if fused and i % 4 == 1 and _norm_pool_applies(layers[i], z):
                z, i = _norm_pool_relu(layers[i], z), i + 3  # norm, pool and ReLU in one kernel
            else:
                z, i = layers[i](z), i + 1
        return self.head(z) if self.head is not None else z


# ---- when a fused path applies ------------------------------------------------------------------


def _fused_paths_allowed() -> bool:
    """Whether this forward may take a fused path (chunks or kernels), whose own backward is first
    order: not inside a second-order inner step (which differentiates the plain graph directly),
    and not under autocast (bf16: the plain ops take autocast's casts)."""
    return not expects_second_order() and not torch.is_autocast_enabled("cpu")


def _kernels_apply() -> bool:
    """Whether this forward can use the compiled kernels: a fused path is allowed and they are built."""
    return _fused_paths_allowed() and kernels() is not None


_KERNEL_DTYPES = (torch.float32, torch.float64)


def _same_dtype(*tensors: Tensor, dtypes: tuple[torch.dtype, ...] | None = _KERNEL_DTYPES) -> bool:
    """All on the CPU, of one dtype (one of `dtypes`, those the kernels take, unless None), none a
    torch.func wrapper."""
    dtype = tensors[0].dtype
    return (
        (dtypes is None or dtype in dtypes)
        and all(t.dtype == dtype and t.device.type == "cpu" for t in tensors)
        and not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)
    )


def _stats_first_applies(norm: nn.Module) -> bool:
    """Whether `_single_channel_block` can stand in for [conv, `norm`, 2x2 max-pool, ReLU]."""
    if isinstance(norm, BatchStatNorm2d):
        weight = norm.weight
    elif type(norm) is nn.BatchNorm2d and norm.affine and (norm.training or norm.track_running_stats):
        weight = norm.weight
    else:
        return False
    # With a zero scale the pool's choice inside a window of equal outputs is arbitrary, and the
    # scale's gradient depends on it: the plain path answers that case.
    return not bool((weight == 0).any())


def _fused_applies(cols: Tensor, weight_t: Tensor, scale: Tensor, shift: Tensor) -> bool:
    """Whether `_PooledProductBlock` pays: a fused path is allowed, and the batch is large enough
    for the chunks to outweigh their Python overhead."""
    return (
        _fused_paths_allowed()
        and cols.shape[0] >= 4 * _CHUNK_ROWS
        and _same_dtype(cols, weight_t, scale, shift, dtypes=None)
    )


def _norm_pool_applies(norm: nn.Module, z: Tensor) -> bool:
    """Whether `_norm_pool_relu` can stand in for [`norm`, 2x2 max-pool, ReLU] on `z`."""
    return (
        _stats_first_applies(norm)  # batch statistics or running ones, no zero scale
        and z.dim() == 4
        and z.is_contiguous(memory_format=torch.channels_last)
        and _same_dtype(z, norm.weight, norm.bias)
    )


# ---- the fused blocks ---------------------------------------------------------------------------


def _single_channel_conv3x3(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """`conv(x)` for a one-channel input, 3x3 kernel, padding 1, answered channels-last.

    As a matrix product of the nine shifted copies of the image, (n*h*w, 9) x (9, out), the output
    is channels-last as it is computed, with the same values (the same nine products per output)
    and none of the layout copies measured around PyTorch's one-channel convolution
    (docs/engine.md).
    """
    n, _, h, w = x.shape
    out = F.linear(_image_columns(x), conv.weight.reshape(conv.out_channels, 9), conv.bias)
    return out.view(n, h, w, conv.out_channels).permute(0, 3, 1, 2)


def _single_channel_block(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """The first Conv-4 block on a one-channel input: relu(maxpool2(norm(conv(x)))), channels-last.

    Same function, computed in another order. The convolution is the (n*h*w, 9) x (9, c) product of
    the nine shifted images (see `_single_channel_conv3x3`); then

    - the batch statistics of its output come from those nine columns alone: channel k's output is
      cols @ w_k + b_k, so its mean is mean(cols) @ w_k + b_k and its variance w_k^T Cov(cols) w_k,
      with the 9x9 covariance of the columns. No pass over the 64-channel map, and its gradient is a
      9x9 affair. The product is taken on the centred columns, whose outputs already have mean 0;
    - normalisation is a per-channel affine map with scale gamma_k / sqrt(var_k + eps), monotone,
      so it commutes with the 2x2 max-pool: the pool runs on the raw product, and the affine map
      on the pooled quarter. A negative gamma_k turns the window's max into its min: the rows of
      the weight are multiplied by sign(gamma) before the product, the pool takes the max of the
      flipped channel and the affine map flips it back (|gamma| in the scale). The pool picks the
      same element of each window as the plain order does, ties included (equal raw values stay
      equal after a monotone map; the first one wins in both), except where fp32 rounding makes
      two different values equal in one order and not in the other.

    The map at full resolution is then written once (the product) and read once (the pool) forward,
    and written once (the pool's gradient) and read once (the weight gradient) backward, instead of
    going through batch norm's forward, backward and, for second-order MAML, double backward.
    Outside a second-order inner step the product, pool, affine map and ReLU run as one compiled
    pass over the images (`_FirstBlockKernel`), or, where the kernels cannot be compiled, a chunk
    of images at a time (`_PooledProductBlock`): either way the map is never written to memory.

    The columns' statistics are summed in float64 (a 9x9 product; the kernels form the same sums
    from the image), so in fp32 the block is as accurate as the plain NCHW order, where PyTorch's
    channels-last batch norm loses digits on nearly constant channels (the first block's map over
    blank Omniglot background). Same values and first and second derivatives in float64
    (tests/test_functional.py), running statistics included (`nn.BatchNorm2d` in training mode
    updates them as it would).
    """
    n, _, h, w = x.shape
    c = conv.out_channels
    weight = conv.weight.reshape(c, 9)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(c)
    gamma, beta = norm.weight, norm.bias
    batch_stats = isinstance(norm, BatchStatNorm2d) or norm.training
    compiled = _same_dtype(x, weight, gamma, beta) and kernels() is not None  # CPU tensors first
    cols, rows = None, n * h * w
    with torch.no_grad():  # the columns' statistics depend on the data alone; summed in float64
        if compiled:  # the same sums, from the image itself
            sums, gram = kernels().first_block_stats(x.reshape(n, h, w).contiguous())
        else:
            cols = _image_columns(x)
            exact = cols.double()
            sums, gram = exact.t().mv(exact.new_ones(rows)), exact.t() @ exact
        cov = ((gram - torch.outer(sums, sums) / rows) / rows).to(weight.dtype)
        mu = (sums / rows).to(x.dtype)
    with torch.autocast("cpu", enabled=False):  # the statistics stay in the weights' precision
        offset = weight @ mu + bias  # the output's mean over the batch
        if batch_stats:
            mean, var = offset, ((weight @ cov) * weight).sum(1)
            if isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                _update_running_stats(norm, mean, var, rows)
        else:
            mean, var = norm.running_mean, norm.running_var
        inv_std = torch.rsqrt(var + norm.eps)
        sign = torch.where(gamma >= 0, 1.0, -1.0).to(gamma.dtype)
        scale = gamma * sign * inv_std  # |gamma| * inv_std without abs, whose double backward is slow
        # (offset - mean) is exactly 0 with batch statistics; it keeps the conv bias in the graph,
        # with its true gradient, 0 (autograd.grad over all parameters needs every one used).
        shift = beta + (offset - mean) * gamma * inv_std
    flipped_t = (weight * sign[:, None]).t()  # (9, c)
    if compiled and _kernels_apply():
        return _FirstBlockKernel.apply(x.reshape(n, h, w).contiguous(), flipped_t, mu, scale, shift)
    cols = _image_columns(x) if cols is None else cols
    centred = cols - mu  # the product of centred columns has the batch mean 0: no cancellation later
    if _fused_applies(centred, flipped_t, scale, shift):
        return _PooledProductBlock.apply(centred, flipped_t, scale, shift, n, h, w)
    return _pooled_product_block(centred, flipped_t, scale, shift, n, h, w)


def _norm_pool_relu(norm: nn.Module, y: Tensor) -> Tensor:
    """relu(maxpool2(norm(y))) on the compiled kernels (`_NormPoolReLUKernel`). Batch statistics
    are accumulated in float64 (PyTorch's channels-last batch norm sums in the input's dtype)."""
    batch_stats = isinstance(norm, BatchStatNorm2d) or norm.training
    if batch_stats:
        mean64, var64 = kernels().channel_stats(y.permute(0, 2, 3, 1))
        mean, var = mean64.to(y.dtype), var64
        if isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
            _update_running_stats(norm, mean, var.to(y.dtype), y.numel() // y.shape[1])
    else:
        mean, var = norm.running_mean, norm.running_var
    return _NormPoolReLUKernel.apply(y, norm.weight, norm.bias, mean, var, norm.eps, batch_stats)


def _update_running_stats(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What `nn.BatchNorm2d.forward` in training mode does to its buffers (unbiased variance)."""
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        norm.running_var.mul_(1 - momentum).add_(var.detach() * (count / max(count - 1, 1)), alpha=momentum)
