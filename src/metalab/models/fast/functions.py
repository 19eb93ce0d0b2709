"""The fused autograd Functions of Conv-4's fast path, each beside the plain differentiable ops it
stands for.

Each Function's own backward is first order. When a backward runs with `create_graph=True` (a
second-order inner step that did not say so through `second_order_forward`), it differentiates the
plain ops on the saved inputs instead (`_plain_gradients`), so any order of derivative is right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..conv4 import batch_norm_2d
from ._kernels import kernels

# Images per chunk of `_PooledProductBlock`: the product of 8 Omniglot images (28x28x64, 1.6 MB)
# stays in a 2 MB per-core L2 cache between the product, the pool and (backward) the weight gradient.
_CHUNK_ROWS = 8 * 28 * 28


def _image_columns(x: Tensor) -> Tensor:
    """The nine zero-padded 3x3 shifts of a one-channel (n, 1, h, w) batch as an (n*h*w, 9) matrix,
    rows in channels-last order, columns in the order of a flattened 3x3 kernel."""
    n, _, h, w = x.shape
    padded = F.pad(x[:, 0], (1, 1, 1, 1))
    shifts = [padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]
    return torch.stack(shifts, dim=-1).reshape(n * h * w, 9)


def _as_image(matrix: Tensor, n: int, h: int, w: int) -> Tensor:
    """An (n*h*w, c) matrix seen as the channels-last (n, c, h, w) image batch it stores."""
    return matrix.view(n, h, w, matrix.shape[1]).permute(0, 3, 1, 2)


def _pooled_product_block(
    cols: Tensor, weight_t: Tensor, scale: Tensor, shift: Tensor, n: int, h: int, w: int
) -> Tensor:
    """relu(maxpool2(cols @ weight_t) * scale + shift), channels-last (n, c, h/2, w/2): the end of
    the fast first block (`_single_channel_block`) as plain differentiable ops."""
    pooled = F.max_pool2d(_as_image(cols @ weight_t, n, h, w), 2)
    return F.relu(torch.addcmul(shift[:, None, None], pooled, scale[:, None, None]))


def _plain_gradients(build, inputs: tuple[Tensor, ...], wanted, grad: Tensor) -> list[Tensor | None]:
    """The backward of a fused Function run with create_graph=True: differentiate `build(*inputs)`,
    the same computation as plain differentiable ops, w.r.t. the inputs that need a gradient (None
    for the others), so any order of derivative is still right."""
    needed = [t for t, need in zip(inputs, wanted) if need]
    with torch.enable_grad():
        y = build(*inputs)
    found = iter(torch.autograd.grad(y, needed, grad, create_graph=True))
    return [next(found) if need else None for need in wanted]


class _PooledProductBlock(torch.autograd.Function):
    """`_pooled_product_block`, computed a chunk of images at a time (the fallback where the
    compiled kernels cannot be had).

    The full-resolution product (n*h*w, c) is never materialised: each chunk's product goes into
    one L2-sized buffer, is pooled from there, and the affine map and ReLU run on the pooled chunk;
    the backward pools' gradient of a chunk goes into the same kind of buffer and straight into the
    weight gradient (`addmm_`). PyTorch's own order writes and reads the full map (15 MB for 75
    Omniglot queries) several times each way and spends three full passes on the affine map's
    gradient alone. Same values and gradients as `_pooled_product_block` (tests/test_functional.py).
    """

    @staticmethod
    def forward(ctx, cols, weight_t, scale, shift, n, h, w):  # noqa: D102
        c, hw, h2, w2 = weight_t.shape[1], h * w, h // 2, w // 2
        per = max(1, min(n, _CHUNK_ROWS // hw))
        out = cols.new_empty((n * h2 * w2, c))
        pooled = torch.empty_like(out)
        index = torch.empty(out.shape, dtype=torch.int64)
        buffer = cols.new_empty((per * hw, c))
        for i0 in range(0, n, per):
            k = min(per, n - i0)
            rows = slice(i0 * h2 * w2, (i0 + k) * h2 * w2)
            product = torch.mm(cols[i0 * hw : (i0 + k) * hw], weight_t, out=buffer[: k * hw])
            torch.ops.aten.max_pool2d_with_indices.out(
                _as_image(product, k, h, w),
                [2, 2],
                [2, 2],
                [0, 0],
                [1, 1],
                False,
                out=_as_image(pooled[rows], k, h2, w2),
                indices=_as_image(index[rows], k, h2, w2),
            )
            torch.addcmul(shift, pooled[rows], scale, out=out[rows]).clamp_(min=0)
        ctx.save_for_backward(cols, weight_t, scale, shift, pooled, index, out)
        ctx.size = (n, h, w)
        return _as_image(out, n, h2, w2)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        cols, weight_t, scale, shift, pooled, index, out = ctx.saved_tensors
        n, h, w = ctx.size
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain graph
            grads = _plain_gradients(
                lambda *p: _pooled_product_block(cols, *p, n, h, w),
                (weight_t, scale, shift),
                ctx.needs_input_grad[1:4],
                grad,
            )
            return (None, *grads, None, None, None)
        c, hw, h2, w2 = weight_t.shape[1], h * w, h // 2, w // 2
        per = max(1, min(n, _CHUNK_ROWS // hw))
        grad = grad.permute(0, 2, 3, 1).reshape(n * h2 * w2, c)  # a view when channels-last
        grad_weight = torch.zeros_like(weight_t)
        grad_scale, grad_shift = torch.zeros_like(scale), torch.zeros_like(shift)
        buffer = cols.new_empty((per * hw, c))
        for i0 in range(0, n, per):
            k = min(per, n - i0)
            rows = slice(i0 * h2 * w2, (i0 + k) * h2 * w2)
            through = torch.ops.aten.threshold_backward(grad[rows], out[rows], 0)  # the ReLU's gradient
            grad_shift += through.sum(0)
            grad_scale += (through * pooled[rows]).sum(0)
            through.mul_(scale)
            unpooled = _as_image(buffer[: k * hw], k, h, w)
            torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
                _as_image(through, k, h2, w2),
                unpooled,
                [2, 2],
                [2, 2],
                [0, 0],
                [1, 1],
                False,
                _as_image(index[rows], k, h2, w2),
                grad_input=unpooled,
            )
            grad_weight.addmm_(cols[i0 * hw : (i0 + k) * hw].t(), buffer[: k * hw])
        return None, grad_weight, grad_scale, grad_shift, None, None, None


class _FirstBlockKernel(torch.autograd.Function):
    """The end of the fast first block (product of the centred columns, pool, affine map, ReLU) as
    one compiled pass over the images: the 3x3 products of each pooling window are formed in
    registers from the image itself, so neither the column matrix nor the full map is written; the
    backward adds each window's gradient into the weight gradient, reusing the window choice the
    forward stored. Same values and derivatives as `_pooled_product_block` (tests/test_kernels.py)."""

    @staticmethod
    def forward(ctx, image, weight_t, mu, scale, shift):  # noqa: D102
        out, pooled, which = kernels().first_block_forward(image, weight_t.contiguous(), mu, scale, shift)
        ctx.save_for_backward(image, weight_t, mu, scale, shift, out, pooled, which)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        image, weight_t, mu, scale, shift, out, pooled, which = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain ops
            n, h, w = image.shape
            wanted = ctx.needs_input_grad
            centred = _image_columns(image[:, None]) - mu
            grad_weight, grad_scale, grad_shift = _plain_gradients(
                lambda *p: _pooled_product_block(centred, *p, n, h, w),
                (weight_t, scale, shift),
                (wanted[1], wanted[3], wanted[4]),
                grad,
            )
            return None, grad_weight, None, grad_scale, grad_shift
        rows = grad.permute(0, 2, 3, 1).contiguous()
        grad_weight, grad_scale, grad_shift = kernels().first_block_backward(
            rows, image, weight_t.contiguous(), mu, scale, out, pooled, which
        )
        return None, grad_weight, None, grad_scale, grad_shift


class _NormPoolReLUKernel(torch.autograd.Function):
    """relu(maxpool2(norm(y))) for Conv-4 blocks 2-4, compiled: two passes over y forward (the
    statistics, taken by the caller; the pool with the affine map and ReLU on the pooled values)
    and two backward (the sums on the pooled gradient; y's gradient, the statistics' dense part
    a + b * y plus each window's pooled gradient, written once), where PyTorch's batch norm, pool
    and ReLU take about seven. `mean` and `var` are y's batch statistics when `batch_stats` (their
    dependence on y is in the backward), else constants (running statistics)."""

    @staticmethod
    def forward(ctx, y, gamma, beta, mean, var, eps, batch_stats):  # noqa: D102
        invstd = torch.rsqrt(var.double() + eps).to(y.dtype)
        sign = torch.where(gamma >= 0, 1.0, -1.0).to(y.dtype)
        rows = y.permute(0, 2, 3, 1)
        out, chosen = kernels().norm_pool_relu_forward(rows, mean, gamma * invstd, beta, sign)
        ctx.save_for_backward(y, gamma, beta, mean, var, invstd, sign, out, chosen)
        ctx.eps, ctx.batch_stats = eps, batch_stats
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        y, gamma, beta, mean, var, invstd, sign, out, chosen = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain ops

            def plain(y, gamma, beta):
                if ctx.batch_stats:
                    normed = batch_norm_2d(y, gamma, beta, ctx.eps)
                else:
                    normed = F.batch_norm(y, mean, var.to(y.dtype), gamma, beta, False, 0.0, ctx.eps)
                return F.relu(F.max_pool2d(normed, 2))

            grads = _plain_gradients(plain, (y, gamma, beta), ctx.needs_input_grad[:3], grad)
            return (*grads, None, None, None, None)
        rows = grad.permute(0, 2, 3, 1).contiguous()
        grad_y, grad_gamma, grad_beta = kernels().norm_pool_relu_backward(
            rows, y.permute(0, 2, 3, 1), out, chosen, mean, invstd, gamma, sign, ctx.batch_stats
        )
        return grad_y.permute(0, 3, 1, 2), grad_gamma, grad_beta, None, None, None, None
