"""Omniglot from the two official zips, decoded once into uint8 tensors, cached, and split by class.

- `archive`: reading one archive straight out of its zip, with the zip-safety and count checks;
- `cache`: the decoded archives, cached per archive, keyed by its sha256 and the image size;
- `download`: fetching the archives, md5-checked;
- `splits`: the "vinyals", "lake" and "random" class splits, the rotations, and the figures they
  are checked against (`SPLIT_CLASSES`, `EXAMPLES_PER_CLASS`).

`load_omniglot` puts them together into a `FewShotDataset`.

References: Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic
program induction", Science 2015; Vinyals et al., "Matching Networks for One Shot Learning",
NeurIPS 2016; Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...tasks.splits import ClassSplits
from ..dataset import DataIntegrityError, DataNotFoundError, FewShotDataset, to_float
from ..store import cache_dir_for
from .archive import ARCHIVES, OmniglotArchive, read_omniglot_zip
from .cache import load_omniglot_archive
from .download import _missing_message, download_omniglot
from .splits import (
    EXAMPLES_PER_CLASS,
    IMAGES_PER_CHARACTER,
    ROTATED_BY_DEFAULT,
    ROTATIONS,
    SPLIT_CLASSES,
    VINYALS_TEST_ALPHABETS,
    VINYALS_VAL_ALPHABETS,
    _assign_splits,
    _rotate_all,
    split_characters,
)

__all__ = [
    "ARCHIVES",
    "DataIntegrityError",
    "DataNotFoundError",
    "EXAMPLES_PER_CLASS",
    "FewShotDataset",
    "IMAGES_PER_CHARACTER",
    "OmniglotArchive",
    "ROTATED_BY_DEFAULT",
    "ROTATIONS",
    "SPLIT_CLASSES",
    "VINYALS_TEST_ALPHABETS",
    "VINYALS_VAL_ALPHABETS",
    "download_omniglot",
    "load_omniglot",
    "load_omniglot_archive",
    "read_omniglot_zip",
    "split_characters",
    "to_float",
]


def load_omniglot(
    data_dir: str | os.PathLike,
    split: str = "vinyals",
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    *,
    rotations: bool | None = None,
    download: bool = False,
    verify_counts: bool = True,
) -> FewShotDataset:
    """Omniglot as a `FewShotDataset`, split into meta-train / val / test classes.

    Args:
        data_dir: the folder holding `images_background.zip` and `images_evaluation.zip`.
        split: "vinyals", "lake" or "random"; `SPLIT_CLASSES` gives their sizes, docs/omniglot.md
            their classes.
        image_size: S; images are resized once to S x S.
        cache_dir: see `load_omniglot_archive`.
        rotations: make 4 classes of every character by rotating 0/90/180/270 degrees; default
            `ROTATED_BY_DEFAULT[split]` (False for "lake" only). All rotations of a
            character share its split.
        download: first fetch missing archives with `download_omniglot`.
        verify_counts: check the official counts and, for the full data, the split sizes.

    Returns:
        `FewShotDataset` with x uint8 (M, 1, S, S), ink 255, and `EXAMPLES_PER_CLASS` images per
        class: M = 129,840 for "vinyals" and "random" (1,623 characters x 4 rotations) and 32,460
        for "lake".

    Raises:
        DataNotFoundError: an archive is missing; the message says where to put it.
        DataIntegrityError: an archive or cache file is corrupt or laid out wrongly.

    Example:
        >>> data = load_omniglot("data/omniglot")                                          # doctest: +SKIP
        >>> batch = data.sampler("train", ways=5, shots=1, queries=15, seed=0).sample(32)  # doctest: +SKIP

    References: Vinyals et al., NeurIPS 2016 (the "vinyals" split, with the character lists of
    Snell et al., NeurIPS 2017); Lake et al., Science 2015 (the "lake" split); Finn et al.,
    ICML 2017 (1,200 training characters drawn without regard to alphabet, the "random" split).
    """
    if split not in SPLIT_CLASSES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CLASSES)}, got {split!r}")
    data_dir = Path(data_dir)
    if download:
        download_omniglot(data_dir)
    for name in ARCHIVES:
        if not (data_dir / f"{name}.zip").is_file():
            raise DataNotFoundError(_missing_message(name, data_dir))
    cache_dir = cache_dir_for("omniglot", cache_dir)
    parts = [
        load_omniglot_archive(
            data_dir / f"{name}.zip", image_size=image_size, cache_dir=cache_dir, verify_counts=verify_counts
        )
        for name in ARCHIVES
    ]
    characters = [c for part in parts for c in part.characters]
    offsets = np.cumsum([0] + [len(part.characters) for part in parts[:-1]])
    images = torch.cat([part.images for part in parts])
    character = torch.cat([part.character + int(off) for part, off in zip(parts, offsets)])

    which = _assign_splits(data_dir, split, characters, verify_counts)
    rotate = ROTATED_BY_DEFAULT[split] if rotations is None else rotations
    if rotate:
        images, y = _rotate_all(images, character)
        class_names = [f"{c}/rot{deg:03d}" for c in characters for deg in ROTATIONS]
        which = which.repeat_interleave(len(ROTATIONS))
    else:
        y, class_names = character, characters
    splits = ClassSplits(*(torch.nonzero(which == s).flatten() for s in range(3)))
    return FewShotDataset(images.unsqueeze(1), y, class_names, splits, (1, image_size, image_size))
