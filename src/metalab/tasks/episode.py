"""Named tasks: one few-shot task (`Task`) and a batch of them with a leading task dimension (`TaskBatch`).

Every algorithm consumes a `TaskBatch`; the shapes are checked once here so that a wrong shape fails
with a message naming the field, not deep inside a convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Task", "TaskBatch"]

_FIELDS = ("support_x", "support_y", "query_x", "query_y")


def _check_pair(name_x: str, x: Tensor, name_y: str, y: Tensor, lead: int) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(
            f"{name_x} and {name_y} must be tensors, got {type(x).__name__} and {type(y).__name__}"
        )
    if x.dim() < lead + 1:
        raise ValueError(f"{name_x} must have at least {lead + 1} dimensions, got shape {tuple(x.shape)}")
    if y.dim() < lead + 1:
        raise ValueError(f"{name_y} must have at least {lead + 1} dimensions, got shape {tuple(y.shape)}")
    if x.shape[: lead + 1] != y.shape[: lead + 1]:
        raise ValueError(
            f"{name_x} and {name_y} disagree on the number of examples: {tuple(x.shape)} vs {tuple(y.shape)}"
        )


@dataclass(frozen=True)
class Task:
    """One few-shot task.

    Attributes:
        support_x: inputs the learner adapts on, of shape (n_support, *input_shape).
        support_y: their targets, of shape (n_support,) (class ids 0..N-1) or (n_support, *target_shape).
        query_x: inputs the adapted learner is evaluated on, of shape (n_query, *input_shape).
        query_y: their targets, shaped like support_y.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __post_init__(self) -> None:
        _check_pair("support_x", self.support_x, "support_y", self.support_y, 0)
        _check_pair("query_x", self.query_x, "query_y", self.query_y, 0)
        if self.support_x.shape[1:] != self.query_x.shape[1:]:
            raise ValueError(
                f"support_x and query_x must have the same example shape: "
                f"{tuple(self.support_x.shape[1:])} vs {tuple(self.query_x.shape[1:])}"
            )


@dataclass(frozen=True)
class TaskBatch:
    """T tasks stacked along a leading task dimension.

    Attributes:
        support_x: of shape (T, n_support, *input_shape).
        support_y: of shape (T, n_support) or (T, n_support, *target_shape).
        query_x: of shape (T, n_query, *input_shape).
        query_y: of shape (T, n_query) or (T, n_query, *target_shape).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __post_init__(self) -> None:
        _check_pair("support_x", self.support_x, "support_y", self.support_y, 1)
        _check_pair("query_x", self.query_x, "query_y", self.query_y, 1)
        if self.support_x.shape[0] != self.query_x.shape[0]:
            raise ValueError(
                f"support and query disagree on the number of tasks: "
                f"{self.support_x.shape[0]} vs {self.query_x.shape[0]}"
            )
        if self.support_x.shape[2:] != self.query_x.shape[2:]:
            raise ValueError(
                f"support_x and query_x must have the same example shape: "
                f"{tuple(self.support_x.shape[2:])} vs {tuple(self.query_x.shape[2:])}"
            )

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, index: int | slice) -> "Task | TaskBatch":
        """`batch[i]` is the i-th `Task`; `batch[a:b]` is a smaller `TaskBatch`."""
        parts = [getattr(self, f)[index] for f in _FIELDS]
        return TaskBatch(*parts) if isinstance(index, slice) else Task(*parts)

    def to(self, *args, **kwargs) -> "TaskBatch":
        return TaskBatch(*(getattr(self, f).to(*args, **kwargs) for f in _FIELDS))

    def map_x(self, fn) -> "TaskBatch":
        """Apply `fn` to support_x and query_x (e.g. uint8 images -> normalised floats)."""
        return TaskBatch(fn(self.support_x), self.support_y, fn(self.query_x), self.query_y)

    @staticmethod
    def stack(tasks: "list[Task]") -> "TaskBatch":
        if not tasks:
            raise ValueError("cannot stack an empty list of tasks")
        return TaskBatch(*(torch.stack([getattr(t, f) for t in tasks]) for f in _FIELDS))
