"""Conv-4, the backbone of the MAML and Prototypical Networks papers.

Four blocks of [conv 3x3 with 64 filters, batch normalisation, ReLU, 2x2 max-pooling]; a 28x28
Omniglot image comes out as a 64-dimensional feature vector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast import expects_second_order
from .fast._kernels import kernels

__all__ = ["Conv4", "BatchStatNorm2d", "batch_norm_2d"]


def batch_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Batch norm with the batch's statistics and an affine part (fused `F.batch_norm`) on an
    (n, c, h, w) tensor, done as an (n*h*w, c) matrix when x is channels-last.

    A channels-last tensor is, in memory, an (n*h*w, c) matrix, and batch norm over (n, h, w) is the
    same thing as batch norm over that matrix's rows. PyTorch's batch-norm backward and its
    double backward (which second-order MAML runs through every inner step) reduce over the non-channel
    dimensions, and on a channels-last 4-d tensor those reductions and the copies around them were
    slow: a 20-way 5-step second-order MAML task spent half its time in them. On the matrix view they
    are plain column sums: 1.3x faster per 20-way 5-step task, 1.1x per 5-way 1-step task here
    (docs/performance.md). Without a double backward (the metric-based learners' plain
    `nn.BatchNorm2d`) the 4-d form was as fast or slightly faster, so only `BatchStatNorm2d` uses it.
    Same values and gradients (tests/test_functional.py). In fp32 it is less accurate than the
    NCHW kernel: PyTorch's channels-last batch norm (this 2-d form and the 4-d one alike) loses
    digits on a nearly constant channel (3e-3 on the first block's map over blank Omniglot
    background, now computed by `_single_channel_block` instead) and sums its columns over all
    n*h*w rows (~1e-4 relative on the later blocks' gradients, against ~1e-7 in NCHW).
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        y = F.batch_norm(x.permute(0, 2, 3, 1).reshape(n * h * w, c), None, None, weight, bias, True, 0.0, eps)
        return y.view(n, h, w, c).permute(0, 3, 1, 2)
    return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)


class BatchStatNorm2d(nn.Module):
    """Batch normalisation that always uses the current batch's statistics, as MAML does.

    Outside torch.func transforms one fused `F.batch_norm` call with the affine weight and bias does it
    all (about 10% faster per Conv-4 meta-iteration here, second-order gradients checked against a
    hand-written reference in tests/test_functional.py), on the (n*h*w, c) matrix view of a
    channels-last input (`batch_norm_2d`). Under vmap the affine part is applied
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
        channels_last: keep weights and activations in the channels-last memory layout; the
            results are the same (to float tolerance) and a Conv-4 forward+backward ran 1.4-1.5x
            faster on this project's 2-core CPU (docs/performance.md). On a one-channel input
            the first block then runs as `_single_channel_block` (statistics from the image
            columns, pooling before the normalisation's affine map), and outside second-order
            inner steps the blocks run as compiled kernels where a C++ compiler is
            (`_FirstBlockKernel`, `_NormPoolReLUKernel`; `metalab.models._kernels`).

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


def _single_channel_conv3x3(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """`conv(x)` for a one-channel input, 3x3 kernel, padding 1, answered channels-last.

    With one input channel PyTorch cannot tell the layouts apart and the convolution answers in
    NCHW; converting its output (and, in the backward, its gradient) to channels-last cost ~8% of a
    20-way MAML task. As a matrix product of the nine shifted copies of the image, (n*h*w, 9) x
    (9, out), the output is channels-last as it is computed: same values (the same nine products
    per output), 1.16-1.17x per second-order MAML task here (docs/performance.md).
    """
    n, _, h, w = x.shape
    out = F.linear(_image_columns(x), conv.weight.reshape(conv.out_channels, 9), conv.bias)
    return out.view(n, h, w, conv.out_channels).permute(0, 3, 1, 2)


def _image_columns(x: Tensor) -> Tensor:
    """The nine zero-padded 3x3 shifts of a one-channel (n, 1, h, w) batch as an (n*h*w, 9) matrix,
    rows in channels-last order, columns in the order of a flattened 3x3 kernel."""
    n, _, h, w = x.shape
    padded = F.pad(x[:, 0], (1, 1, 1, 1))
    return torch.stack([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], dim=-1).reshape(n * h * w, 9)


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

    The map at full resolution (the batch's images times 28x28x64 for Omniglot) is then written
    once (the product) and read once (the pool) forward, and written once (the pool's gradient)
    and read once (the weight gradient) backward, instead of going through batch norm's forward,
    backward and, for second-order MAML, double backward: 1.19x per 5-way and 1.38x per 20-way
    5-step second-order MAML task, 1.12x per first-order task, 1.10x per ProtoNet episode on two
    threads here (docs/performance.md). Outside a second-order inner step the product, pool,
    affine map and ReLU then run as one compiled pass over the images (`_FirstBlockKernel`), or,
    where the kernels cannot be compiled, a chunk of images at a time (`_PooledProductBlock`):
    either way the map is never written to memory at all (the chunks: 1.06x per second-order and
    1.10x per first-order 5-way meta-batch on task threads; the kernels with blocks 2-4's
    `_NormPoolReLUKernel`: 1.19x and 1.26x over the chunks). The columns' statistics are summed
    in float64 (a 9x9 product; the kernels form the same sums from the image): in fp32 the block is as accurate as the plain NCHW order, where the batch norm on
    the matrix view (`batch_norm_2d`) it replaces lost digits on nearly constant channels (3e-3
    on real Omniglot, enough to turn a 20-way 5-step meta-gradient to cosine 0.46-0.91 from its
    float64 value). Same values and first and second derivatives in float64
    (tests/test_functional.py), running statistics included (`nn.BatchNorm2d` in training mode
    updates them as it would).
    """
    n, _, h, w = x.shape
    c = conv.out_channels
    weight = conv.weight.reshape(c, 9)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(c)
    gamma, beta = norm.weight, norm.bias
    batch_stats = isinstance(norm, BatchStatNorm2d) or norm.training
    compiled = kernels() is not None and _same_dtype(x, weight, gamma, beta)
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
        scale = gamma * sign * inv_std  # |gamma| * inv_std, without abs (whose double backward costs ~0.5 ms)
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


def _pooled_product_block(cols: Tensor, weight_t: Tensor, scale: Tensor, shift: Tensor, n: int, h: int, w: int) -> Tensor:
    """relu(maxpool2(cols @ weight_t) * scale + shift), channels-last (n, c, h/2, w/2): the end of
    `_single_channel_block` as plain differentiable ops."""
    c = weight_t.shape[1]
    pooled = F.max_pool2d((cols @ weight_t).view(n, h, w, c).permute(0, 3, 1, 2), 2)
    return F.relu(torch.addcmul(shift[:, None, None], pooled, scale[:, None, None]))


# Images per chunk of `_PooledProductBlock`: 8 Omniglot images' 28x28x64 product is 1.6 MB, which
# stays in this CPU's 2 MB per-core L2 cache between the product, the pool and (backward) the
# weight gradient.
_CHUNK_ROWS = 8 * 28 * 28


def _fused_applies(cols: Tensor, weight_t: Tensor, scale: Tensor, shift: Tensor) -> bool:
    return (
        _fused_paths_allowed()
        and cols.shape[0] >= 4 * _CHUNK_ROWS  # below ~32 Omniglot images its Python overhead loses
        and _same_dtype(cols, weight_t, scale, shift, dtypes=None)
    )


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
    """`_pooled_product_block`, computed a chunk of images at a time.

    The full-resolution product (n*h*w, c) is never materialised: each chunk's product goes into
    one L2-sized buffer, is pooled from there, and the affine map and ReLU run on the pooled chunk;
    the backward pools' gradient of a chunk goes into the same kind of buffer and straight into the
    weight gradient (`addmm_`). PyTorch's own order wrote and read the 28x28x64 map (15 MB for 75
    Omniglot queries) from memory several times each way and spent three full passes on the
    affine map's gradient alone. Same values and gradients as `_pooled_product_block`
    (tests/test_functional.py).

    Its fast backward is not differentiable; when the backward runs with `create_graph=True` (a
    second-order inner step that did not say so through `second_order_forward`), it rebuilds
    `_pooled_product_block`'s graph on the saved inputs and differentiates that, so any order of
    derivative is still right.
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
                _as_image(product, k, h, w), [2, 2], [2, 2], [0, 0], [1, 1], False,
                out=_as_image(pooled[rows], k, h2, w2), indices=_as_image(index[rows], k, h2, w2),
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
                lambda *p: _pooled_product_block(cols, *p, n, h, w), (weight_t, scale, shift), ctx.needs_input_grad[1:4], grad
            )
            return (None, *grads, None, None, None)
        c, hw, h2, w2 = weight_t.shape[1], h * w, h // 2, w // 2
        per = max(1, min(n, _CHUNK_ROWS // hw))
        grad = grad.permute(0, 2, 3, 1).reshape(n * h2 * w2, c)  # a view when channels-last
        grad_weight, grad_scale, grad_shift = torch.zeros_like(weight_t), torch.zeros_like(scale), torch.zeros_like(shift)
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
                _as_image(through, k, h2, w2), unpooled, [2, 2], [2, 2], [0, 0], [1, 1], False,
                _as_image(index[rows], k, h2, w2), grad_input=unpooled,
            )
            grad_weight.addmm_(cols[i0 * hw : (i0 + k) * hw].t(), buffer[: k * hw])
        return None, grad_weight, grad_scale, grad_shift, None, None, None


def _as_image(matrix: Tensor, n: int, h: int, w: int) -> Tensor:
    """An (n*h*w, c) matrix seen as the channels-last (n, c, h, w) image batch it stores."""
    return matrix.view(n, h, w, matrix.shape[1]).permute(0, 3, 1, 2)


def _update_running_stats(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What `nn.BatchNorm2d.forward` in training mode does to its buffers (unbiased variance)."""
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        norm.running_var.mul_(1 - momentum).add_(var.detach() * (count / max(count - 1, 1)), alpha=momentum)


# ---- the compiled kernels (_conv4_kernels.cpp via ._kernels), with the plain ops as fallback ----


def _fused_paths_allowed() -> bool:
    """Whether this forward may take a fused path (chunks or kernels), whose own backward is first
    order: not inside a second-order inner step (which differentiates the plain graph directly),
    and not under autocast (bf16: the plain ops take autocast's casts)."""
    return not expects_second_order() and not torch.is_autocast_enabled("cpu")


def _kernels_apply() -> bool:
    """Whether this forward can use the compiled kernels: a fused path is allowed and they are built."""
    return _fused_paths_allowed() and kernels() is not None


def _same_dtype(*tensors: Tensor, dtypes: tuple[torch.dtype, ...] | None = (torch.float32, torch.float64)) -> bool:
    """All on the CPU, of one dtype (one of `dtypes`, those the kernels take, unless None), none a
    torch.func wrapper."""
    dtype = tensors[0].dtype
    return (
        (dtypes is None or dtype in dtypes)
        and all(t.dtype == dtype and t.device.type == "cpu" for t in tensors)
        and not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)
    )


class _FirstBlockKernel(torch.autograd.Function):
    """The end of `_single_channel_block` (product of the centred columns, pool, affine map, ReLU)
    as one compiled pass over the images: the 3x3 products of each pooling window are formed in
    registers from the image itself, so neither the column matrix nor the 28x28x64 map is written;
    the backward forms them again and adds each window's gradient into the weight gradient.
    Same values and derivatives as `_pooled_product_block` (tests/test_kernels.py); a backward with
    create_graph differentiates the plain ops instead."""

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
                lambda *p: _pooled_product_block(centred, *p, n, h, w), (weight_t, scale, shift), (wanted[1], wanted[3], wanted[4]), grad
            )
            return None, grad_weight, None, grad_scale, grad_shift
        rows = grad.permute(0, 2, 3, 1).contiguous()
        grad_weight, grad_scale, grad_shift = kernels().first_block_backward(rows, image, weight_t.contiguous(), mu, scale, out, pooled, which)
        return None, grad_weight, None, grad_scale, grad_shift


def _norm_pool_applies(norm: nn.Module, z: Tensor) -> bool:
    """Whether `_norm_pool_relu` can stand in for [`norm`, 2x2 max-pool, ReLU] on `z`."""
    return (
        _stats_first_applies(norm)  # batch statistics or running ones, no zero scale
        and z.dim() == 4
        and z.is_contiguous(memory_format=torch.channels_last)
        and _same_dtype(z, norm.weight, norm.bias)
    )


def _norm_pool_relu(norm: nn.Module, y: Tensor) -> Tensor:
    """relu(maxpool2(norm(y))) in two compiled passes over y forward (statistics; pool with the
    affine map and ReLU on the pooled values) and two backward (the sums on the pooled
    gradient; y's gradient, the statistics' dense part a + b * y plus each window's pooled
    gradient, written once). PyTorch's batch norm, pool and ReLU took about seven passes over the
    map. Statistics are accumulated in float64 (batch norm's channels-last kernel sums in fp32)."""
    batch_stats = isinstance(norm, BatchStatNorm2d) or norm.training
    if batch_stats:
        mean64, var64 = kernels().channel_stats(y.permute(0, 2, 3, 1))
        mean, var = mean64.to(y.dtype), var64
        if isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
            _update_running_stats(norm, mean, var.to(y.dtype), y.numel() // y.shape[1])
    else:
        mean, var = norm.running_mean, norm.running_var
    return _NormPoolReLUKernel.apply(y, norm.weight, norm.bias, mean, var, norm.eps, batch_stats)


class _NormPoolReLUKernel(torch.autograd.Function):
    """`_norm_pool_relu`'s compiled forward and first-order backward; `mean` and `var` are y's batch
    statistics when `batch_stats` (their dependence on y is in the backward), else constants. A
    backward with create_graph differentiates the plain batch norm -> pool -> ReLU."""

    @staticmethod
    def forward(ctx, y, gamma, beta, mean, var, eps, batch_stats):  # noqa: D102
        invstd = torch.rsqrt(var.double() + eps).to(y.dtype)
        sign = torch.where(gamma >= 0, 1.0, -1.0).to(y.dtype)
        out, chosen = kernels().norm_pool_relu_forward(y.permute(0, 2, 3, 1), mean, gamma * invstd, beta, sign)
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

            return (*_plain_gradients(plain, (y, gamma, beta), ctx.needs_input_grad[:3], grad), None, None, None, None)
        rows = grad.permute(0, 2, 3, 1).contiguous()
        grad_y, grad_gamma, grad_beta = kernels().norm_pool_relu_backward(
            rows, y.permute(0, 2, 3, 1), out, chosen, mean, invstd, gamma, sign, ctx.batch_stats
        )
        return grad_y.permute(0, 3, 1, 2), grad_gamma, grad_beta, None, None, None, None

