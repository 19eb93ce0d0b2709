"""Omniglot's class splits and rotations, and the figures they are checked against.

Three splits of the characters into meta-train / meta-val / meta-test classes (see docs/omniglot.md):

- "vinyals" (Vinyals et al. 2016, as used by Prototypical Networks): every character is
  rotated by 0, 90, 180 and 270 degrees into 4 classes.
- "lake" (Lake et al. 2015): background for meta-training (5 alphabets held out for validation),
  evaluation for meta-test, no rotations by default.
- "random" (Finn et al. 2017, and the code of MAML, MAML++, Relation Networks and Reptile): 1,200
  characters drawn irrespective of alphabet for meta-training (1,100 train, 100 val), the other 423
  for meta-test, rotated as "vinyals". The draw is fixed (`RANDOM_SPLIT_SEED`), so it does not
  change between versions; meta-test characters share their alphabets with meta-training ones.

`SPLIT_CLASSES` and `EXAMPLES_PER_CLASS` state the split sizes and the drawings per character once:
the loader checks the data against them, and code that needs the figures (e.g. limits on ways, shots
and queries) imports them from `metalab.data.omniglot` rather than restating them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ...tasks.splits import ClassSplits
from ..dataset import DataIntegrityError

__all__ = [
    "EXAMPLES_PER_CLASS",
    "IMAGES_PER_CHARACTER",
    "RANDOM_SPLIT_SEED",
    "ROTATED_BY_DEFAULT",
    "ROTATIONS",
    "SPLIT_CLASSES",
    "VINYALS_TEST_ALPHABETS",
    "VINYALS_VAL_ALPHABETS",
    "split_characters",
]

# Classes in each part of each split, with the split's default rotations (`ROTATED_BY_DEFAULT`):
# for "vinyals" every character makes 4 classes, for "lake" one. Valid for the full data only.
SPLIT_CLASSES = {
    "vinyals": {"train": 4112, "val": 688, "test": 1692},
    "lake": {"train": 792, "val": 172, "test": 659},
    "random": {"train": 4400, "val": 400, "test": 1692},
}
ROTATED_BY_DEFAULT = {"vinyals": True, "lake": False, "random": True}
EXAMPLES_PER_CLASS = 20  # drawings of every character; a rotation keeps them, so also per class
IMAGES_PER_CHARACTER = EXAMPLES_PER_CLASS  # the archive's view of the same figure
ROTATIONS = (0, 90, 180, 270)  # degrees counter-clockwise, as np.rot90 / torch.rot90 with k = 0..3

# The Vinyals split as distributed with the Prototypical Networks code (splits/vinyals/*.txt): the
# validation characters are five whole background alphabets and the test characters twelve whole
# evaluation alphabets plus the last four Gurmukhi characters; everything else is meta-train.
VINYALS_VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
VINYALS_TEST_ALPHABETS = (
    "Kannada",
    "Keble",
    "Malayalam",
    "Manipuri",
    "Mongolian",
    "Old_Church_Slavonic_(Cyrillic)",
    "Oriya",
    "Sylheti",
    "Syriac_(Serto)",
    "Tengwar",
    "Tibetan",
    "ULOG",
)
_VINYALS_TEST_GURMUKHI_FROM = 42  # Gurmukhi/character42..45 are test, character01..41 train

# The "random" split: a permutation of the characters in their sorted order, drawn by
# torch.randperm with this seed; the first 1,100 / 1,623 of them are meta-train, the next 100 / 1,623
# meta-val (the proportions of MAML's code: 1,200 meta-training characters, 100 of them held out
# for validation), the rest meta-test.
RANDOM_SPLIT_SEED = 1
_RANDOM_PROPORTIONS = (1100, 100, 423)


def split_characters(split: str) -> tuple[int, int, int]:
    """Characters in the train / val / test part of `split` with the full data: its classes in
    `SPLIT_CLASSES`, divided by the rotations it makes of every character by default."""
    per_character = len(ROTATIONS) if ROTATED_BY_DEFAULT[split] else 1
    train, val, test = (SPLIT_CLASSES[split][part] // per_character for part in ClassSplits._fields)
    return train, val, test


def _split_of(split: str, character: str) -> int:
    """0 (train), 1 (val) or 2 (test) for "<archive>/<Alphabet>/<characterNN>"."""
    archive, alphabet, name = character.split("/")
    if split == "vinyals":
        if alphabet in VINYALS_TEST_ALPHABETS:
            return 2
        if alphabet == "Gurmukhi":
            number = re.search(r"\d+$", name)
            return 2 if number is not None and int(number.group()) >= _VINYALS_TEST_GURMUKHI_FROM else 0
        return 1 if alphabet in VINYALS_VAL_ALPHABETS else 0
    # lake: evaluation is meta-test; the same five background alphabets as Vinyals' are meta-val.
    if archive == "images_evaluation":
        return 2
    return 1 if alphabet in VINYALS_VAL_ALPHABETS else 0


def _random_split(characters: list[str]) -> Tensor:
    """The "random" split's ids: `characters` sorted, permuted with `RANDOM_SPLIT_SEED`, and cut in
    the proportions 1,100 : 100 : 423 (exactly those sizes for the full 1,623 characters)."""
    order = sorted(range(len(characters)), key=characters.__getitem__)
    generator = torch.Generator().manual_seed(RANDOM_SPLIT_SEED)
    drawn = torch.tensor(order, dtype=torch.long)[torch.randperm(len(order), generator=generator)]
    total = sum(_RANDOM_PROPORTIONS)
    train = round(len(order) * _RANDOM_PROPORTIONS[0] / total)
    val = round(len(order) * _RANDOM_PROPORTIONS[1] / total)
    which = torch.full((len(order),), 2, dtype=torch.long)
    which[drawn[:train]] = 0
    which[drawn[train : train + val]] = 1
    return which


def _assign_splits(data_dir: Path, split: str, characters: list[str], verify_counts: bool) -> Tensor:
    """The split id (0 train, 1 val, 2 test) of every character, of shape (len(characters),).

    With `verify_counts`, the number of characters in each part must be `split_characters(split)`.
    """
    if split == "random":
        which = _random_split(characters)
    else:
        which = torch.tensor([_split_of(split, c) for c in characters])
    sizes = tuple(int((which == s).sum()) for s in range(3))
    expected = split_characters(split)
    if verify_counts and sizes != expected:
        raise DataIntegrityError(
            f"{data_dir}: the {split!r} split gives {sizes} train/val/test characters, expected "
            f"{expected}; are the alphabet folder names the official ones?"
        )
    return which


def _rotate_all(images: Tensor, character: Tensor) -> tuple[Tensor, Tensor]:
    """Materialise the 4 rotations of every image as 4 classes per character.

    Args:
        images: (M, S, S); character: (M,), non-decreasing.

    Returns:
        images (4M, S, S) and class ids `4 * character + r` (4M,), grouped by class.
    """
    stacked = torch.stack([torch.rot90(images, k, dims=(1, 2)) for k in range(len(ROTATIONS))], dim=1)
    labels = character[:, None] * len(ROTATIONS) + torch.arange(len(ROTATIONS))
    order = torch.argsort(labels.flatten(), stable=True)  # keep each class's images contiguous
    return stacked.flatten(0, 1)[order], labels.flatten()[order]
