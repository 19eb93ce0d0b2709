"""N-way K-shot Q-query episodes drawn from any labelled data by index arithmetic on tensors.

The sampler is separate from the data: it receives the examples `x` (any leading size M), their class
ids `y` of shape (M,), and the classes it may draw from (one side of a meta-train/val/test split).
Its constructor checks that the data can supply the requested episodes and names the class and the
counts where it cannot. Sampling is seeded by an explicit `torch.Generator`, never by global state.

The examples may live on any device (a GPU holds Omniglot's 25 MB of uint8 images once): the draws
and the index arithmetic run on the CPU with the sampler's CPU generator, and only the chosen
positions travel to the examples' device, where the episode is gathered. So one seed gives the same
tasks on every device.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .episode import TaskBatch

__all__ = ["EpisodeSampler", "class_index"]


def class_index(y: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Index the examples of each class.

    Args:
        y: class id of every example, of shape (M,).
        classes: the class ids to index, of shape (C,).

    Returns:
        `(table, counts)`: `table[c, j]` is the position in `y` of the j-th example of `classes[c]`
        (padded with -1), of shape (C, max_count); `counts[c]` its number of examples, of shape (C,).
    """
    y = torch.as_tensor(y, dtype=torch.long).to("cpu")
    classes = torch.as_tensor(classes, dtype=torch.long).to("cpu")
    order = torch.argsort(y, stable=True)
    sorted_y = y[order]
    start = torch.searchsorted(sorted_y, classes, right=False)
    end = torch.searchsorted(sorted_y, classes, right=True)
    counts = end - start
    width = int(counts.max()) if counts.numel() else 0
    j = torch.arange(width, device="cpu")
    pos = start[:, None] + j[None, :]
    valid = j[None, :] < counts[:, None]
    table = torch.where(valid, order[pos.clamp(max=max(len(order) - 1, 0))], torch.full_like(pos, -1))
    return table, counts


class EpisodeSampler:
    """Draws classification episodes: N classes, K support and Q query examples of each.

    Labels are relabelled 0..N-1 in the order the classes were drawn, so a label says nothing about
    the class's identity across episodes. Support examples come class by class
    (`support_y = [0]*K + [1]*K + ...`), and so do the queries.

    Args:
        x: the examples, of shape (M, *example_shape); any dtype (e.g. uint8 images).
        y: their class ids, of shape (M,).
        classes: the class ids this sampler may draw (e.g. the meta-train split); all if None.
        ways: N, classes per episode.
        shots: K, support examples per class.
        queries: Q, query examples per class.
        seed: seeds the sampler's own generator (ignored if `generator` is given).
        generator: an explicit `torch.Generator` to draw from.
        transform: applied to the gathered examples, e.g. uint8 -> float in [0, 1].
        class_names: names used in error messages, indexed by class id.
        augment: `augment(x, generator)` applied after `transform` to the support and query
            examples of every episode, drawing from the sampler's generator (e.g.
            `metalab.data.augment.standard_augment`); None for none.

    Example:
        >>> x, y = torch.randn(100, 3), torch.arange(10).repeat_interleave(10)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=3, seed=0).sample(4)
        >>> tuple(batch.support_x.shape), tuple(batch.query_y.shape)
        ((4, 5, 3), (4, 15))
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        ways: int,
        shots: int,
        queries: int,
        classes: Tensor | Sequence[int] | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        class_names: Sequence[str] | None = None,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        for name, value, least in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        y = torch.as_tensor(y, dtype=torch.long).to("cpu")  # the index arithmetic runs on the CPU
        if y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"y must have shape (M,) matching x's first dimension: x {tuple(x.shape)}, y {tuple(y.shape)}"
            )
        classes = torch.unique(y) if classes is None else torch.as_tensor(classes, dtype=torch.long).to("cpu")
        if classes.numel() != torch.unique(classes).numel():
            raise ValueError("classes contains duplicates")
        if ways > classes.numel():
            raise ValueError(f"cannot draw {ways}-way episodes from only {classes.numel()} classes")
        self.table, self.counts = class_index(y, classes)
        need = shots + queries
        short = torch.nonzero(self.counts < need).flatten()
        if short.numel():
            c = int(classes[short[0]])
            name = class_names[c] if class_names is not None else f"class {c}"
            raise ValueError(
                f"{name} has {int(self.counts[short[0]])} examples, fewer than shots + queries = "
                f"{shots} + {queries} = {need} ({short.numel()} class(es) too small)"
            )
        self.x, self.y, self.classes = x, y, classes
        self.ways, self.shots, self.queries = ways, shots, queries
        self.transform, self.augment = transform, augment
        self.generator = generator if generator is not None else torch.Generator("cpu").manual_seed(seed)

    def sample_indices(self, num_tasks: int) -> tuple[Tensor, Tensor]:
        """Positions in `x` of the drawn examples and the drawn class ids, on the CPU.

        Returns:
            `(examples, classes)` of shapes (T, N, K+Q) and (T, N).
        """
        g, n, need = self.generator, self.ways, self.shots + self.queries
        # A random permutation of the allowed classes per task; keep the first N.
        picked = torch.rand(num_tasks, self.classes.numel(), generator=g, device="cpu").argsort(dim=1)[:, :n]
        counts = self.counts[picked]  # (T, N)
        # Random keys for every slot; slots past a class's count sort last, so the first K+Q
        # keys pick K+Q distinct examples uniformly at random from that class.
        width = self.table.shape[1]
        keys = torch.rand(num_tasks, n, width, generator=g, device="cpu")
        keys.masked_fill_(torch.arange(width, device="cpu") >= counts[..., None], 2.0)
        slots = keys.argsort(dim=2)[..., :need]
        examples = self.table[picked[..., None], slots]
        return examples, self.classes[picked]

    def sample(self, num_tasks: int) -> TaskBatch:
        """Draw `num_tasks` episodes as one `TaskBatch`.

        Returns:
            support_x (T, N*K, ...), support_y (T, N*K), query_x (T, N*Q, ...), query_y (T, N*Q),
            on the device of the examples `x`.
        """
        examples, _ = self.sample_indices(num_tasks)
        t, n, k, q = num_tasks, self.ways, self.shots, self.queries
        device = self.x.device
        support = examples[..., :k].reshape(t, n * k).to(device)
        query = examples[..., k:].reshape(t, n * q).to(device)
        labels = torch.arange(n, device=device)
        sx, qx = self.x[support], self.x[query]
        if self.transform is not None:
            sx, qx = self.transform(sx), self.transform(qx)
        if self.augment is not None:
            sx, qx = self.augment(sx, self.generator), self.augment(qx, self.generator)
        return TaskBatch(
            sx,
            labels.repeat_interleave(k).expand(t, -1).contiguous(),
            qx,
            labels.repeat_interleave(q).expand(t, -1).contiguous(),
        )

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)
