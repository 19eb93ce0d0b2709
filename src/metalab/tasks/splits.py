"""Disjoint meta-train / meta-val / meta-test class splits."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ClassSplits", "split_classes"]


class ClassSplits(NamedTuple):
    """Class ids of each split, pairwise disjoint."""

    train: Tensor
    val: Tensor
    test: Tensor


def split_classes(classes: Tensor | int, num_val: int, num_test: int, seed: int = 0) -> ClassSplits:
    """Shuffle `classes` with a fixed seed and cut off `num_val` and `num_test` of them.

    Args:
        classes: class ids, or an int C meaning `range(C)`.
        num_val: classes for meta-validation.
        num_test: classes for meta-test.
        seed: the shuffle's seed; the same seed always gives the same split.
    """
    classes = (
        torch.arange(classes) if isinstance(classes, int) else torch.as_tensor(classes, dtype=torch.long)
    )
    if num_val < 0 or num_test < 0 or num_val + num_test >= classes.numel():
        raise ValueError(
            f"cannot take {num_val} validation and {num_test} test classes from {classes.numel()} "
            "and leave any for training"
        )
    perm = classes[torch.randperm(classes.numel(), generator=torch.Generator().manual_seed(seed))]
    n_train = classes.numel() - num_val - num_test
    return ClassSplits(perm[:n_train], perm[n_train : n_train + num_val], perm[n_train + num_val :])
