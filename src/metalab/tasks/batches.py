"""Ordinary mini-batches of labelled examples, for learners that pre-train a classifier over all the
meta-train classes (the Baseline and Baseline++ of Chen et al. 2019) through the one training loop.

The one training loop draws `source.sample(meta_batch)` and hands it to `learner.meta_loss`; an
`EpisodeSampler` relabels the classes of every episode 0..N-1, which a classifier over all classes
cannot use. `ClassBatchSampler` has the same surface (`sample`, `get_state`, `set_state`) and returns
a `TaskBatch` whose support holds examples drawn uniformly at random from the split's classes with
their *global* labels, remapped to 0..C-1 in the order of `classes`; the query part is empty.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .episode import TaskBatch

__all__ = ["ClassBatchSampler"]


class ClassBatchSampler:
    """Mini-batches of (example, class) pairs from a fixed set of classes, labels 0..C-1.

    Args:
        x: the examples, of shape (M, *example_shape).
        y: their class ids, of shape (M,).
        classes: the class ids to draw from (e.g. the meta-train split), of shape (C,); label c of a
            batch is `classes[c]`.
        batch_size: examples per row of the returned `TaskBatch`.
        seed: seeds the sampler's own generator.
        transform: applied to the gathered examples, e.g. uint8 -> float in [0, 1].
        augment: `augment(x, generator)` applied after `transform`, drawing from the sampler's
            generator (e.g. `metalab.data.augment.standard_augment`); None for none.

    `sample(T)` returns support_x (T, batch_size, ...), support_y (T, batch_size) and an empty query
    part (T, 0, ...): T * batch_size examples drawn uniformly with replacement from the split.

    Example:
        >>> x, y = torch.randn(100, 3), torch.arange(10).repeat_interleave(10)
        >>> batch = ClassBatchSampler(x, y, classes=torch.tensor([7, 3]), batch_size=4).sample(2)
        >>> tuple(batch.support_x.shape), tuple(batch.query_x.shape), int(batch.support_y.max()) <= 1
        ((2, 4, 3), (2, 0, 3), True)
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        classes: Tensor | Sequence[int],
        batch_size: int,
        seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        # The index arithmetic runs on the CPU; only the drawn positions travel to x's device.
        y = torch.as_tensor(y, dtype=torch.long).to("cpu")
        classes = torch.as_tensor(classes, dtype=torch.long).to("cpu")
        if classes.numel() == 0:
            raise ValueError("cannot draw batches from an empty set of classes")
        # label[g] = position of class g in `classes`, -1 for classes outside the split.
        label = torch.full((int(max(y.max(), classes.max())) + 1,), -1, dtype=torch.long, device="cpu")
        label[classes] = torch.arange(classes.numel(), device="cpu")
        self.index = torch.nonzero(label[y] >= 0).flatten()  # positions of the split's examples
        self.labels = label[y[self.index]]
        self.x, self.classes, self.batch_size, self.transform = x, classes, batch_size, transform
        self.augment = augment
        self.generator = torch.Generator("cpu").manual_seed(seed)

    @property
    def num_classes(self) -> int:
        return self.classes.numel()

    def sample(self, num_tasks: int) -> TaskBatch:
        """`num_tasks` rows of `batch_size` random examples of the split, labels 0..C-1."""
        pick = torch.randint(
            self.index.numel(), (num_tasks, self.batch_size), generator=self.generator, device="cpu"
        )
        sx = self.x[self.index[pick].to(self.x.device)]
        if self.transform is not None:
            sx = self.transform(sx)
        if self.augment is not None:
            sx = self.augment(sx, self.generator)
        empty = sx[:, :0]
        labels = self.labels[pick].to(self.x.device)
        return TaskBatch(sx, labels, empty, labels[:, :0])

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)
