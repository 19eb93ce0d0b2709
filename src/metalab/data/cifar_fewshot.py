"""The few-shot benchmarks made of CIFAR: CIFAR-FS, FC100 (both from CIFAR-100) and a CIFAR-10 split.

- **CIFAR-FS** (Bertinetto et al. 2019): the 100 CIFAR-100 classes cut at random into 64 meta-train,
  16 meta-val and 20 meta-test classes, 600 images each (the official train and test images of a
  class together). `CIFAR_FS_CLASSES` is the published split (the R2D2 authors' split files, also
  distributed with torchmeta).
- **FC100** (Oreshkin et al. 2018, TADAM): split by superclass, so that meta-test classes are far
  from the meta-train ones: 12 superclasses (60 classes) for meta-training, 4 (20) for meta-val and
  4 (20) for meta-test. `FC100_SUPERCLASSES` is the published split.
- **cifar10**: CIFAR-10's 10 classes are too few for three disjoint 5-way splits. Meta-train on
  airplane, automobile, bird, cat, deer (their 5,000 official training images each); meta-test on
  dog, frog, horse, ship, truck (all 6,000 images each); meta-validate on the official *test*
  images (1,000 each) of the five meta-train classes, held out as five classes of their own
  ("airplane (test images)", ...). Validation therefore measures new images of known classes, an
  early-stopping signal, not generalisation to new classes; the meta-test does that.

Images are 32x32 RGB; `image_size` other than 32 resizes them once (antialiased bilinear).

References: Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable closed-form
solvers", ICLR 2019; Oreshkin, Rodriguez & Lacoste, "TADAM: Task dependent adaptive metric for
improved few-shot learning", NeurIPS 2018; Krizhevsky 2009 (the data).
"""

from __future__ import annotations

import os

import torch

from .cifar import CIFAR10_CLASSES, load_cifar10, load_cifar100
from .dataset import DataIntegrityError, FewShotDataset
from .store import few_shot_dataset

__all__ = [
    "CIFAR10_SPLIT",
    "CIFAR100_SUPERCLASSES",
    "CIFAR_FS_CLASSES",
    "FC100_SUPERCLASSES",
    "fc100_classes",
    "load_cifar10_fewshot",
    "load_cifar_fs",
    "load_fc100",
]

# CIFAR-100's 20 superclasses and their 5 classes each, names as in the official `meta` file.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

# Bertinetto et al. 2019's split of the 100 classes (64 / 16 / 20), sorted by name.
CIFAR_FS_CLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can",
        "castle", "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur",
        "dolphin", "elephant", "forest", "girl", "hamster", "house", "kangaroo", "keyboard",
        "lawn_mower", "lion", "lizard", "lobster", "mountain", "mouse", "mushroom", "oak_tree",
        "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate", "porcupine", "possum",
        "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip",
        "turtle", "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp",
        "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
        "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale",
        "woman", "worm",
    ),
}  # fmt: skip

# Oreshkin et al. 2018's split of the 20 superclasses (12 / 4 / 4).
FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
        "reptiles", "trees", "vehicles_1", "vehicles_2",
    ),
    "val": (
        "large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals",
    ),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip

# The cifar10 benchmark's split (see the module): meta-val holds the meta-train classes' test images.
CIFAR10_SPLIT: dict[str, tuple[str, ...]] = {
    "train": CIFAR10_CLASSES[:5],
    "val": tuple(f"{name} (test images)" for name in CIFAR10_CLASSES[:5]),
    "test": CIFAR10_CLASSES[5:],
}


def fc100_classes(part: str) -> tuple[str, ...]:
    """The CIFAR-100 classes of FC100's "train", "val" or "test" superclasses, sorted."""
    return tuple(sorted(c for s in FC100_SUPERCLASSES[part] for c in CIFAR100_SUPERCLASSES[s]))


def _check_superclasses(cifar) -> None:
    """The file's superclass labels must agree with `CIFAR100_SUPERCLASSES` (FC100 splits by them)."""
    for fine, coarse in (
        (cifar.train_labels, cifar.train_coarse_labels),
        (cifar.test_labels, cifar.test_coarse_labels),
    ):
        for f, c in torch.unique(torch.stack([fine, coarse], dim=1), dim=0).tolist():
            name, superclass = cifar.classes[f], cifar.coarse_classes[c]
            if name not in CIFAR100_SUPERCLASSES.get(superclass, ()):
                raise DataIntegrityError(
                    f"{cifar.source}: class {name!r} is labelled with superclass {superclass!r}, which does "
                    "not hold it in CIFAR-100"
                )


def load_cifar_fs(
    data_dir: str | os.PathLike,
    image_size: int = 32,
    *,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> FewShotDataset:
    """CIFAR-FS from `cifar-100-python.tar.gz` in `data_dir`: 64 / 16 / 20 classes of 600 images.

    Args:
        data_dir: the folder holding the tarball (or the tarball itself).
        image_size: S; 32 keeps the images as they are.
        cache_dir, verify: as in `metalab.data.cifar.load_cifar100`.

    Returns:
        `FewShotDataset` with x uint8 (60,000, 3, S, S), classes named as in CIFAR-100.
    """
    cifar = load_cifar100(data_dir, cache_dir=cache_dir, verify=verify)
    parts = tuple(CIFAR_FS_CLASSES[p] for p in ("train", "val", "test"))
    return few_shot_dataset(cifar.images, cifar.labels, cifar.classes, parts, image_size)


def load_fc100(
    data_dir: str | os.PathLike,
    image_size: int = 32,
    *,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> FewShotDataset:
    """FC100 from `cifar-100-python.tar.gz` in `data_dir`: 60 / 20 / 20 classes (12 / 4 / 4
    superclasses) of 600 images. Arguments and result as `load_cifar_fs`."""
    cifar = load_cifar100(data_dir, cache_dir=cache_dir, verify=verify)
    _check_superclasses(cifar)
    parts = tuple(fc100_classes(p) for p in ("train", "val", "test"))
    return few_shot_dataset(cifar.images, cifar.labels, cifar.classes, parts, image_size)


def load_cifar10_fewshot(
    data_dir: str | os.PathLike,
    image_size: int = 32,
    *,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> FewShotDataset:
    """The cifar10 benchmark (see the module) from the official tarball or the JPEG zip in `data_dir`.

    Returns:
        `FewShotDataset` with x uint8 (60,000, 3, S, S) and 15 classes: the 10 CIFAR-10 classes
        (ids 0-9, meta-train 0-4 with their training images only, meta-test 5-9) and the test images
        of classes 0-4 as classes 10-14 (meta-val).
    """
    cifar = load_cifar10(data_dir, cache_dir=cache_dir, verify=verify)
    held_out = cifar.test_labels < 5
    y = torch.cat([cifar.train_labels, torch.where(held_out, cifar.test_labels + 10, cifar.test_labels)])
    names = list(cifar.classes) + list(CIFAR10_SPLIT["val"])
    parts = tuple(CIFAR10_SPLIT[p] for p in ("train", "val", "test"))
    return few_shot_dataset(cifar.images, y, names, parts, image_size)
