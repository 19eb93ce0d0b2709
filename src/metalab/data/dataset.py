"""The few-shot data set every image or feature-row source returns, and the errors they raise.

A source (Omniglot's archives, a folder of images, a CSV file) decodes its data once into memory
and hands back a `FewShotDataset`: uint8 examples, one class id per example and the class ids of
each of the meta-train / meta-val / meta-test splits. Episodes are drawn from it by
`EpisodeSampler`, which turns the uint8 images into floats in [0, 1] with `to_float`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..tasks.batches import ClassBatchSampler
from ..tasks.sampler import EpisodeSampler
from ..tasks.splits import ClassSplits

__all__ = ["DataIntegrityError", "DataNotFoundError", "FewShotDataset", "to_float"]


class DataNotFoundError(FileNotFoundError):
    """A data file is missing (or could not be downloaded); the message says where to put it."""


class DataIntegrityError(ValueError):
    """An archive, a download or a cache file is corrupt, unsafe or laid out wrongly."""


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1] (ink 1, background 0), shape preserved."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {x.dtype}")
    return x.to(torch.float32).div_(255.0)


@dataclass(frozen=True, eq=False)
class FewShotDataset:
    """Labelled images held in memory with disjoint meta-train / val / test classes.

    Attributes:
        x: uint8 images, of shape (M, *image_shape) (Omniglot: ink 255, background 0).
        y: class id of every image, of shape (M,), long; indexes `class_names`.
        class_names: e.g. "images_background/Latin/character01/rot090".
        splits: class ids of each split (`ClassSplits(train, val, test)`), pairwise disjoint.
        image_shape: (C, S, S).
    """

    x: Tensor
    y: Tensor
    class_names: list[str]
    splits: ClassSplits
    image_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or tuple(self.x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"x must be uint8 of shape (M, {self.image_shape}), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.shape != self.x.shape[:1]:
            raise ValueError(f"y must have shape ({self.x.shape[0]},), got {tuple(self.y.shape)}")

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size()

    def to(self, device: torch.device | str) -> FewShotDataset:
        """The same data set with its examples on `device` (moved once; the samplers then gather
        every episode there). The class ids stay on the CPU, where the samplers' index arithmetic
        runs."""
        if self.x.device == torch.device(device):
            return self
        return dataclasses.replace(self, x=self.x.to(device))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sampler(
        self, split_name: str, ways: int, shots: int, queries: int, seed: int = 0, *, augment=None
    ) -> EpisodeSampler:
        """An `EpisodeSampler` over the classes of one split, yielding float images in [0, 1].

        Args:
            split_name: "train", "val" or "test".
            ways, shots, queries: N, K, Q.
            seed: the sampler's seed.
            augment: `augment(x, generator)` for the episodes' float images (`metalab.data.augment`).
        """
        return EpisodeSampler(
            self.x,
            self.y,
            ways=ways,
            shots=shots,
            queries=queries,
            classes=self._classes(split_name),
            seed=seed,
            transform=to_float,
            class_names=self.class_names,
            augment=augment,
        )

    def batches(self, split_name: str, batch_size: int, seed: int = 0, *, augment=None) -> ClassBatchSampler:
        """Ordinary mini-batches of one split with its classes' global labels (remapped 0..C-1 in
        the order of `splits.<split_name>`), for pre-training a classifier over all of them
        (Baseline / Baseline++, Chen et al. 2019); float images in [0, 1], empty query part;
        `augment` as in `sampler`."""
        return ClassBatchSampler(
            self.x,
            self.y,
            classes=self._classes(split_name),
            batch_size=batch_size,
            seed=seed,
            transform=to_float,
            augment=augment,
        )

    def _classes(self, split_name: str) -> Tensor:
        """The class ids of split "train", "val" or "test"; any other name is a ValueError."""
        if split_name not in ClassSplits._fields:
            raise ValueError(f"split_name must be one of {ClassSplits._fields}, got {split_name!r}")
        return getattr(self.splits, split_name)
