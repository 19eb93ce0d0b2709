"""Your own images: a folder `root/<class>/<image>` as a `FewShotDataset`, split by class.

Every file Pillow can open (by its extension: PNG, JPEG, BMP, GIF, TIFF, WebP, ...) directly inside
a class folder is one example of that class; hidden files, files of other types and anything deeper
than one level are ignored. Class names are the folder names; class ids follow their sorted order.

Every image is prepared once by `read_image` (see `metalab.data.images`), the same way as in
`metalab predict`: upright, on white, greyscale or RGB, resized, and optionally inverted.

The result is kept as uint8 of shape (M, C, S, S); `to_float` maps it to [0, 1] when episodes are drawn.
The classes are shuffled with a fixed seed and cut into meta-train / meta-val / meta-test classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..tasks.splits import split_classes
from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset
from .images import IMAGE_EXTENSIONS, list_images, read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "default_split_size",
    "list_images",
    "load_image_folder",
    "read_class_folders",
    "read_image",
]


def default_split_size(num: int, least: int) -> int:
    """Classes held out for meta-val or meta-test by default: a fifth of them, at least `least`."""
    return max(least, round(0.2 * num))


def read_class_folders(
    root: str | os.PathLike, image_size: int = 28, channels: int = 1, invert: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read `root/<class>/<image>`, classes in sorted name order.

    Returns:
        `(x, y, class_names)`: uint8 images of shape (M, C, S, S), class ids of shape (M,) grouped
        class by class, and the sorted folder names.

    Raises:
        DataNotFoundError: `root` is missing, is not a folder, or has no class folders.
        DataIntegrityError: a class folder holds no image (it is named), or an image cannot be read.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataNotFoundError(
            f"{root} is a file; expected a folder of class folders, {root}/<class>/<image>"
        )
    if not root.is_dir():
        raise DataNotFoundError(f"image folder not found: {root} (expected {root}/<class>/<image>)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataNotFoundError(
            f"{root} has no class folders; expected {root}/<class>/<image>, one folder per class"
        )
    files = []
    for d in class_dirs:
        images = list_images(d)
        if not images:
            raise DataIntegrityError(
                f"class folder {d} has no images (files Pillow reads: .png, .jpg, ...; subfolders are not "
                "searched)"
            )
        files.append(images)
    x = np.empty((sum(map(len, files)), channels, image_size, image_size), dtype=np.uint8)
    k = 0
    for images in files:
        for path in images:
            x[k] = read_image(path, image_size, channels, invert)
            k += 1
    y = torch.arange(len(class_dirs)).repeat_interleave(torch.tensor([len(f) for f in files]))
    return torch.from_numpy(x), y, [d.name for d in class_dirs]


def load_image_folder(
    root: str | os.PathLike,
    image_size: int = 28,
    channels: int = 1,
    val_classes: int | None = None,
    test_classes: int | None = None,
    seed: int = 0,
    *,
    invert: bool = False,
    min_classes: int = 1,
) -> FewShotDataset:
    """A folder of images, one subfolder per class, as a `FewShotDataset` split by class.

    Args:
        root: the folder holding `<class>/<image>`.
        image_size: S; every image is resized to S x S.
        channels: 1 (greyscale) or 3 (RGB).
        val_classes, test_classes: classes held out for meta-val and meta-test (default: a fifth
            of the classes each, at least `min_classes`).
        seed: the seed of the class shuffle; the same folder and seed give the same split.
        invert: store 255 - pixel (Omniglot's "ink bright"); off for ordinary images.
        min_classes: the least number of classes a defaulted val/test split gets (the test ways).

    Returns:
        `FewShotDataset` with x uint8 (M, C, S, S), class names the folder names.

    Raises:
        DataNotFoundError, DataIntegrityError: as `read_class_folders`.
        ValueError: too few classes for the split.

    Example:
        >>> data = load_image_folder("my_images", channels=3, val_classes=5, test_classes=5)  # doctest: +SKIP
        >>> batch = data.sampler("train", ways=5, shots=1, queries=5).sample(4)               # doctest: +SKIP
    """
    x, y, names = read_class_folders(root, image_size, channels, invert)
    n = len(names)
    val = default_split_size(n, min_classes) if val_classes is None else val_classes
    test = default_split_size(n, min_classes) if test_classes is None else test_classes
    if val + test >= n:
        raise ValueError(
            f"{root} has {n} classes: too few to hold out {val} for meta-validation and {test} for meta-test "
            "and keep some for meta-training; add classes or set val_classes / test_classes"
        )
    return FewShotDataset(
        x, y, names, split_classes(n, val, test, seed=seed), (channels, image_size, image_size)
    )
