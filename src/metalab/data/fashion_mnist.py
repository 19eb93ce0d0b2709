"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 28x28 greyscale images of 10 kinds of clothing,
from the four official idx files, for few-shot and cross-domain evaluation.

Files (`FASHION_MNIST_FILES`, downloadable, md5-checked): `train-images-idx3-ubyte.gz`,
`train-labels-idx1-ubyte.gz` (60,000) and `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`
(10,000), gzip-compressed idx files (a big-endian header: magic 2051 or 2049, the count, for images
the rows and columns; then one byte per pixel or label). Debian's package `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist/`) holds the same files compressed again, with other md5s; those
are accepted too (`DEBIAN_MD5`). Decompressing takes well under a second, so no cache is kept.

The few-shot split mirrors the cifar10 benchmark's: meta-train on T-shirt/top, Trouser, Pullover,
Dress, Coat (labels 0-4; their 6,000 training images each), meta-val on those five classes' 1,000
test images each (held out as five classes of their own), meta-test on Sandal, Shirt, Sneaker, Bag,
Ankle boot (labels 5-9; all 7,000 images each).

Reference: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .cifar import SourceFile
from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset
from .store import download_file, few_shot_dataset, file_digests

__all__ = [
    "DEBIAN_MD5",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "download_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
]

_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
FASHION_MNIST_FILES = {
    key: SourceFile(name, f"{_BASE}/{name}", md5=md5)
    for key, name, md5 in (
        ("train_images", "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train_labels", "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("test_images", "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("test_labels", "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    )
}
# The md5s of the same files as Debian's dataset-fashion-mnist package ships them (compressed again).
DEBIAN_MD5 = {
    "train_images": "cf8536b0aa1a6ac5fa3f23001093305c",
    "train_labels": "10bea18fdb374794d4bb42e356e600c9",
    "test_images": "f78720b4224f21cce2f2ccf2d7a94c9a",
    "test_labels": "0d30e22e447f3c33dab9ed536400ac01",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
SIZE = 28
_COUNTS = {"train": 60_000, "test": 10_000}


def read_idx(path: str | os.PathLike, images: bool) -> np.ndarray:
    """One gzip-compressed idx file -> uint8 (N, 28, 28) images or (N,) labels (a read-only array).

    Raises:
        DataIntegrityError: not gzip, a wrong magic number, image size or length; the message names `path`.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataIntegrityError(f"{path}: not a readable .gz ({type(err).__name__}: {err})") from err
    header = 16 if images else 8
    if len(data) < header:
        raise DataIntegrityError(f"{path}: too short for an idx header")
    magic, count = struct.unpack(">ii", data[:8])
    if magic != (2051 if images else 2049):
        raise DataIntegrityError(f"{path}: idx magic {magic}, expected {2051 if images else 2049}")
    shape = (count, *struct.unpack(">ii", data[8:16])) if images else (count,)
    if images and shape[1:] != (SIZE, SIZE):
        raise DataIntegrityError(f"{path}: images of {shape[1]}x{shape[2]}, expected {SIZE}x{SIZE}")
    if len(data) - header != int(np.prod(shape)):
        raise DataIntegrityError(
            f"{path}: {len(data) - header:,} bytes of data, expected {int(np.prod(shape)):,}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    data_dir: str | os.PathLike, image_size: int = SIZE, *, cache_dir=None, verify: bool = True
) -> FewShotDataset:
    """Fashion-MNIST from the four idx files in `data_dir`, in the split of the module.

    Args:
        data_dir: the folder holding the four `.gz` files (e.g. `/usr/share/datasets/fashion-mnist`).
        image_size: S; the 28x28 images are resized where S differs.
        cache_dir: unused (nothing is cached); accepted like every loader's.
        verify: check each file's md5 (the official one or Debian's) and the official counts
            (60,000 / 10,000 images, 6,000 / 1,000 per class).

    Returns:
        `FewShotDataset` with x uint8 (70,000, 1, S, S), 15 classes (the 10 kinds, and the test
        images of kinds 0-4 as classes 10-14, meta-val).
    """
    data_dir = Path(data_dir)
    missing = [f.name for f in FASHION_MNIST_FILES.values() if not (data_dir / f.name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"Fashion-MNIST not found in {data_dir}: missing {', '.join(missing)}. Put the four official idx "
            f"files there (from {_BASE}/, or Debian's dataset-fashion-mnist package in "
            "/usr/share/datasets/fashion-mnist), or run "
            f"`metalab data download fashion_mnist --data-dir {data_dir}`"
        )
    arrays = {}
    for key, source in FASHION_MNIST_FILES.items():
        path = data_dir / source.name
        md5 = file_digests(path)["md5"] if verify else None
        if verify and md5 not in (source.md5, DEBIAN_MD5[key]):
            raise DataIntegrityError(
                f"{path} has md5 {md5}, expected {source.md5} (or Debian's {DEBIAN_MD5[key]}): the file is "
                "corrupt, truncated or not the official one (a copy of your own in the same format loads "
                "with verify_data: false)"
            )
        arrays[key] = read_idx(path, images=key.endswith("images"))
    for split, n in _COUNTS.items():
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(x) != len(y) or (y.size and y.max() >= len(FASHION_MNIST_CLASSES)):
            raise DataIntegrityError(
                f"{data_dir}: the {split} files hold {len(x)} images and {len(y)} labels in 0..9"
            )
        if verify and (len(y) != n or bool((np.bincount(y, minlength=10) != n // 10).any())):
            raise DataIntegrityError(
                f"{data_dir}: the {split} files do not hold {n:,} images, {n // 10:,} per class"
            )
    x = torch.from_numpy(np.concatenate([arrays["train_images"], arrays["test_images"]]))[:, None]
    test_y = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    y = torch.cat(
        [
            torch.from_numpy(arrays["train_labels"].astype(np.int64)),
            torch.where(test_y < 5, test_y + 10, test_y),
        ]
    )
    names = list(FASHION_MNIST_CLASSES) + [f"{n} (test images)" for n in FASHION_MNIST_CLASSES[:5]]
    split = (FASHION_MNIST_CLASSES[:5], names[10:], FASHION_MNIST_CLASSES[5:])
    return few_shot_dataset(x, y, names, split, image_size)


def download_fashion_mnist(root: str | os.PathLike, *, force: bool = False, opener=None) -> Path:
    """Download the four official idx files into `root`, each md5-checked; existing files are kept
    unless `force`. Returns `root`."""
    root = Path(root)
    for source in FASHION_MNIST_FILES.values():
        if force or not (root / source.name).exists():
            download_file(source.url, root / source.name, source.md5, opener=opener)
    return root
