"""Helpers shared by the metric-based learners (and the transfer baselines): N from the labels,
one-hot support labels, embedding the examples of every task with one encoder, and the embedding a
spec builds for them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spec import BuildContext, OptionError

__all__ = ["EVAL_CHUNK", "num_ways", "one_hot_support", "embed_tasks", "check_embedding"]

# In eval mode BatchNorm uses its running statistics, so every image is embedded on its own and the
# images can go through the encoder in chunks: a Conv-4 forward costs more per image once the batch
# outgrows the cache (docs/engine.md, known pitfalls), and 25 tasks of 20-way 15-query are 8,000 images.
EVAL_CHUNK = 256


def num_ways(support_y: Tensor) -> int:
    """N, the number of classes in the tasks: labels are relabelled 0..N-1 in every task."""
    return int(support_y.max()) + 1


def one_hot_support(support_y: Tensor, ways: int) -> Tensor:
    """One-hot support labels as floats, of shape (T, n_support, N), from labels of shape (T, n_support)."""
    return F.one_hot(support_y, ways).to(torch.get_default_dtype())


def embed_tasks(encoder: nn.Module, *xs: Tensor, chunk: int | None = None) -> list[Tensor]:
    """Embed the examples of every task with one shared encoder.

    All inputs go through the encoder together (one batch, so that a training-mode BatchNorm
    normalises the support and the queries of the episode with the same statistics); with `chunk`,
    in pieces of at most `chunk` images, which is exact only when the encoder treats every image on
    its own (BatchNorm in eval mode).

    Args:
        xs: tensors of shape (T, n_i, *input_shape).

    Returns:
        one embedding tensor per input, of shape (T, n_i, *feature_shape).
    """
    t = xs[0].shape[0]
    sizes = [x.shape[1] for x in xs]
    flat = (
        torch.cat([x.reshape(t * x.shape[1], *x.shape[2:]) for x in xs])
        if len(xs) > 1
        else xs[0].flatten(0, 1)
    )
    if chunk is None or flat.shape[0] <= chunk:
        z = encoder(flat)
    else:
        z = torch.cat([encoder(part) for part in flat.split(chunk)])
    out, start = [], 0
    for n in sizes:
        out.append(z[start : start + t * n].reshape(t, n, *z.shape[1:]))
        start += t * n
    return out


def check_embedding(ctx: BuildContext) -> tuple[nn.Module, int]:
    """The context's embedding network and its output size; on vectors (a CSV's features) the
    config's `hidden` widths must name at least one layer, the last being the embedding size."""
    if not ctx.images and not ctx.config.hidden:
        raise OptionError(
            "config key 'hidden' must name at least one layer: its last width is the embedding size"
        )
    return ctx.embedding()
