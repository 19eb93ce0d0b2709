"""CIFAR-10 and CIFAR-100 from their official archives (and CIFAR-10 from a JPEG copy), cached as uint8.

Sources read (never extracted to disk):

- `cifar-10-python.tar.gz` (official, md5 `CIFAR10_TARBALL.md5`): `cifar-10-batches-py/` with the
  pickled batches `data_batch_1` ... `data_batch_5` (the 50,000 training images) and `test_batch`
  (10,000), each a dict with b"data" (10,000 x 3,072 uint8, the red, green and blue 32x32 planes of
  every image one after the other) and b"labels"; `batches.meta` holds b"label_names".
- `cifar10-images.zip` (a re-encoding of the same 60,000 images as JPEG files, stored uncompressed,
  sha256 `CIFAR10_JPEG_ZIP.sha256`): `cifar10-images/{train,test}/<class>/NNNN.jpg`. Its pixels are
  close to, not identical with, the official ones (JPEG is lossy).
- `cifar-100-python.tar.gz` (official, md5 `CIFAR100_TARBALL.md5`): `cifar-100-python/train` (50,000)
  and `test` (10,000), dicts with b"data", b"fine_labels" and b"coarse_labels"; `meta` holds
  b"fine_label_names" and b"coarse_label_names".

Each is decoded once into uint8 tensors of shape (N, 3, 32, 32) and cached (see
`metalab.data.store`); later loads read the cache in well under a second (docs/datasets.md has
the measured times). The official split of every image (train or test) is kept: `Cifar.train_*`
and `Cifar.test_*`.

Example (`data/cifar10` holding the tarball or the JPEG zip):
    >>> cifar = load_cifar10("data/cifar10")                                  # doctest: +SKIP
    >>> cifar.train_images.shape, cifar.train_images.dtype                    # doctest: +SKIP
    (torch.Size([50000, 3, 32, 32]), torch.uint8)
    >>> cifar.classes[cifar.test_labels[0]]                                   # doctest: +SKIP
    'cat'

Reference: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report 2009
(https://www.cs.toronto.edu/~kriz/cifar.html).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .dataset import DataIntegrityError, DataNotFoundError
from .store import cache_dir_for, cached, check_digests, download_file, file_digests, load_pickle, source_key
from .zips import is_extra_entry, open_zip, reading_entry

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_JPEG_ZIP",
    "CIFAR10_TARBALL",
    "CIFAR100_TARBALL",
    "Cifar",
    "SourceFile",
    "download_cifar10",
    "download_cifar100",
    "find_cifar10",
    "load_cifar10",
    "load_cifar100",
]


class SourceFile(NamedTuple):
    """A published file: its name, where it comes from (None: no public URL), its digests."""

    name: str
    url: str | None
    md5: str | None = None
    sha256: str | None = None

    def digests(self) -> dict[str, str]:
        return {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256)) if v is not None}


CIFAR10_TARBALL = SourceFile(
    "cifar-10-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR10_JPEG_ZIP = SourceFile(
    "cifar10-images.zip",
    None,
    sha256="8506a817b94f9c441c2458baeb55e754e39d6e9265557d2dc41aaeb42230d1c6",
)
CIFAR100_TARBALL = SourceFile(
    "cifar-100-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)
# The official label order (batches.meta); also the sorted order of the JPEG copy's folder names.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_SIZE = 32
_CACHE_FORMAT = 1  # bump when the decoding changes, so old caches are not reused


@dataclass(frozen=True, eq=False)
class Cifar:
    """CIFAR-10 or CIFAR-100 in memory, in its official train / test split.

    Attributes:
        train_images: uint8 of shape (50,000, 3, 32, 32) for the full data (RGB planes).
        train_labels: int64 of shape (50,000,), indexes `classes` (CIFAR-100: the fine labels).
        test_images: uint8 of shape (10,000, 3, 32, 32).
        test_labels: int64 of shape (10,000,).
        classes: the 10 (CIFAR-100: 100 fine) class names in label order.
        train_coarse_labels, test_coarse_labels: CIFAR-100's superclass of every image, indexing
            `coarse_classes` (20 names); None for CIFAR-10.
        source: the file the data were read from.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    source: Path
    train_coarse_labels: Tensor | None = None
    test_coarse_labels: Tensor | None = None
    coarse_classes: list[str] | None = None

    @property
    def images(self) -> Tensor:
        """All images, the training ones first: uint8 (60,000, 3, 32, 32)."""
        return torch.cat([self.train_images, self.test_images])

    @property
    def labels(self) -> Tensor:
        """The labels of `images`, int64 (60,000,)."""
        return torch.cat([self.train_labels, self.test_labels])

    @property
    def is_test(self) -> Tensor:
        """Whether each of `images` is from the official test set: bool (60,000,)."""
        return torch.cat(
            [
                torch.zeros(len(self.train_labels), dtype=torch.bool),
                torch.ones(len(self.test_labels), dtype=torch.bool),
            ]
        )


# --- the official pickled batches ---------------------------------------------------------------------


class _TarLayout(NamedTuple):
    root: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    coarse_key: bytes | None
    coarse_names_key: bytes | None
    classes: int
    coarse_classes: int


_CIFAR10_LAYOUT = _TarLayout(
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    b"labels",
    b"label_names",
    None,
    None,
    10,
    0,
)
_CIFAR100_LAYOUT = _TarLayout(
    "cifar-100-python",
    ("train",),
    ("test",),
    "meta",
    b"fine_labels",
    b"fine_label_names",
    b"coarse_labels",
    b"coarse_label_names",
    100,
    20,
)
_TRAIN, _TEST = 50_000, 10_000


def _read_tarball(path: Path, layout: _TarLayout) -> dict:
    """The batches of an official tarball as uint8 tensors (see the module), read from the archive."""

    def member(tf: tarfile.TarFile, name: str) -> bytes:
        full = f"{layout.root}/{name}"
        try:
            info = tf.getmember(full)
        except KeyError:
            raise DataIntegrityError(
                f"{path}: no {full} in the archive; is this the official {layout.root} tarball?"
            ) from None
        f = tf.extractfile(info)
        if f is None:
            raise DataIntegrityError(f"{path}: {full} is not a regular file")
        return f.read()

    def batch(tf: tarfile.TarFile, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        d = load_pickle(member(tf, name), f"{path}:{layout.root}/{name}")
        try:
            data = np.asarray(d[b"data"], dtype=np.uint8)
            labels = np.asarray(d[layout.label_key], dtype=np.int64)
            coarse = None if layout.coarse_key is None else np.asarray(d[layout.coarse_key], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise DataIntegrityError(
                f"{path}: {layout.root}/{name} is not a CIFAR batch ({err!r} missing or wrong)"
            ) from err
        if data.ndim != 2 or data.shape[1] != 3 * _SIZE * _SIZE or labels.shape != data.shape[:1]:
            raise DataIntegrityError(
                f"{path}: {layout.root}/{name} holds data of shape {data.shape} with {labels.shape[0]} "
                f"labels; expected (n, {3 * _SIZE * _SIZE}) and n labels"
            )
        return data.reshape(-1, 3, _SIZE, _SIZE), labels, coarse

    try:
        with tarfile.open(path, "r:gz") as tf:
            meta = load_pickle(member(tf, layout.meta), f"{path}:{layout.root}/{layout.meta}")
            parts = {
                split: [batch(tf, n) for n in names]
                for split, names in (("train", layout.train), ("test", layout.test))
            }
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataIntegrityError(
            f"{path}: not a readable .tar.gz ({type(err).__name__}: {err}); the file is corrupt or truncated"
        ) from err
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]
        coarse_classes = (
            None
            if layout.coarse_names_key is None
            else [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.coarse_names_key]]
        )
    except (KeyError, TypeError) as err:
        raise DataIntegrityError(f"{path}: {layout.root}/{layout.meta} has no {err} class names") from err
    out = {"classes": classes, "coarse_classes": coarse_classes}
    for split, batches in parts.items():
        out[f"{split}_images"] = torch.from_numpy(np.concatenate([b[0] for b in batches]))
        out[f"{split}_labels"] = torch.from_numpy(np.concatenate([b[1] for b in batches]))
        if layout.coarse_key is not None:
            out[f"{split}_coarse_labels"] = torch.from_numpy(np.concatenate([b[2] for b in batches]))
    return out


# --- the JPEG copy of CIFAR-10 --------------------------------------------------------------------------

_ZIP_ENTRY = re.compile(r"^cifar10-images/(train|test)/([a-z]+)/([^/]+\.jpe?g)$")


def _read_jpeg_zip(path: Path) -> dict:
    """The JPEG copy (see the module): every entry's name is checked, every image decoded as RGB."""
    entries: dict[str, list[tuple[int, str, zipfile.ZipInfo]]] = {"train": [], "test": []}
    with open_zip(path) as zf:
        for info in zf.infolist():
            if info.is_dir() or is_extra_entry(info.filename):
                continue
            m = _ZIP_ENTRY.match(info.filename)
            if m is None or m.group(2) not in CIFAR10_CLASSES:
                raise DataIntegrityError(
                    f"{path}: unexpected entry {info.filename!r}; expected "
                    f"cifar10-images/{{train,test}}/<class>/<name>.jpg with <class> one of "
                    f"{', '.join(CIFAR10_CLASSES)}"
                )
            entries[m.group(1)].append((CIFAR10_CLASSES.index(m.group(2)), m.group(3), info))
        out: dict = {"classes": list(CIFAR10_CLASSES), "coarse_classes": None}
        for split, items in entries.items():
            items.sort(key=lambda e: (e[0], e[1]))
            images = np.empty((len(items), _SIZE, _SIZE, 3), dtype=np.uint8)
            for k, (_, _, info) in enumerate(items):
                with reading_entry(path, info.filename), Image.open(io.BytesIO(zf.read(info))) as img:
                    if img.size != (_SIZE, _SIZE):
                        raise ValueError(f"a {img.width}x{img.height} image, expected {_SIZE}x{_SIZE}")
                    images[k] = np.asarray(img.convert("RGB"))
            out[f"{split}_images"] = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
            out[f"{split}_labels"] = torch.tensor([e[0] for e in items], dtype=torch.int64)
    return out


# --- loading, checking, caching -------------------------------------------------------------------------


def _check_blob(blob: dict, coarse: bool) -> bool:
    """The fields, dtypes and shapes a decoded CIFAR dict must have (a cache hit is checked too)."""
    try:
        for split in ("train", "test"):
            x, y = blob[f"{split}_images"], blob[f"{split}_labels"]
            ok = (
                isinstance(x, Tensor)
                and x.dtype == torch.uint8
                and x.ndim == 4
                and tuple(x.shape[1:]) == (3, _SIZE, _SIZE)
                and isinstance(y, Tensor)
                and y.dtype == torch.int64
                and y.shape == x.shape[:1]
                and (y.numel() == 0 or 0 <= int(y.min()) <= int(y.max()) < len(blob["classes"]))
            )
            if coarse:
                c = blob[f"{split}_coarse_labels"]
                ok = ok and isinstance(c, Tensor) and c.shape == y.shape
            if not ok:
                return False
        return isinstance(blob["classes"], list) and isinstance(blob.get("digests"), dict)
    except KeyError:
        return False


def _check_counts(path: Path, blob: dict, classes: int, coarse_classes: int) -> None:
    """The official counts: 50,000 / 10,000 images, every class equally often, the class count."""
    if len(blob["classes"]) != classes:
        raise DataIntegrityError(f"{path}: {len(blob['classes'])} class names, expected {classes}")
    for split, n in (("train", _TRAIN), ("test", _TEST)):
        y = blob[f"{split}_labels"]
        counts = torch.bincount(y, minlength=classes)
        if len(y) != n or bool((counts != n // classes).any()):
            raise DataIntegrityError(
                f"{path}: the {split} set has {len(y):,} images with {int(counts.min())}.."
                f"{int(counts.max())} per class, expected {n:,} with {n // classes} per class; is this the "
                "complete official file?"
            )
    if coarse_classes and len(blob["coarse_classes"] or []) != coarse_classes:
        raise DataIntegrityError(f"{path}: expected {coarse_classes} superclass names")


def _load(
    path: Path, source: SourceFile, read: Callable[[Path], dict], cache_dir, verify: bool, coarse: bool
) -> Cifar:
    if not path.is_file():
        raise DataNotFoundError(f"file not found: {path}")

    def build() -> dict:
        digests = file_digests(path)
        if verify:
            check_digests(path, source.digests(), digests)  # before spending time decoding
        blob = read(path)
        blob["digests"] = digests
        blob["format"] = _CACHE_FORMAT
        return blob

    key = {"source": source_key([path]), "format": _CACHE_FORMAT}
    stem = source.name.split(".")[0]
    blob = cached(cache_dir_for("cifar", cache_dir), stem, key, build, lambda b: _check_blob(b, coarse))
    if verify:
        check_digests(path, source.digests(), blob["digests"])  # a cache built without verifying
        _check_counts(path, blob, 100 if coarse else 10, 20 if coarse else 0)
    return Cifar(
        train_images=blob["train_images"],
        train_labels=blob["train_labels"],
        test_images=blob["test_images"],
        test_labels=blob["test_labels"],
        classes=list(blob["classes"]),
        source=path,
        train_coarse_labels=blob.get("train_coarse_labels"),
        test_coarse_labels=blob.get("test_coarse_labels"),
        coarse_classes=blob.get("coarse_classes"),
    )


def find_cifar10(path: str | os.PathLike) -> Path:
    """The CIFAR-10 file at `path`: the file itself, or in a folder the official tarball if it is
    there, else the JPEG zip. A missing one is a `DataNotFoundError` saying what to put where."""
    path = Path(path)
    if path.is_file():
        return path
    for source in (CIFAR10_TARBALL, CIFAR10_JPEG_ZIP):
        if (path / source.name).is_file():
            return path / source.name
    raise DataNotFoundError(
        f"CIFAR-10 not found in {path}: put the official {CIFAR10_TARBALL.name} (from "
        f"{CIFAR10_TARBALL.url}) or the JPEG copy {CIFAR10_JPEG_ZIP.name} there, or run "
        f"`metalab data download cifar10 --data-dir {path}`"
    )


def load_cifar10(
    path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, verify: bool = True
) -> Cifar:
    """CIFAR-10 from `cifar-10-python.tar.gz` or `cifar10-images.zip` (a file, or a folder holding one).

    Args:
        path: the file, or its folder (the official tarball is preferred where both are present).
        cache_dir: the cache folder (default `$XDG_CACHE_HOME/metalab/cifar`); the data folder is
            never written to.
        verify: check the published checksum (md5 of the tarball, sha256 of the JPEG zip) and the
            official counts (50,000 / 10,000 images, 10 classes, 5,000 / 1,000 each); off for a
            copy of your own in the same format.

    Returns:
        A `Cifar`: `.train_images` uint8 (50,000, 3, 32, 32), `.train_labels` int64 (50,000,),
        `.test_images` uint8 (10,000, 3, 32, 32), `.test_labels`, `.classes` (10 names, label order).

    Raises:
        DataNotFoundError: no CIFAR-10 file at `path`; the message says what to put where.
        DataIntegrityError: a wrong checksum, a damaged archive or cache, or wrong counts; the message
            names the file.
    """
    file = find_cifar10(path)
    if file.name.endswith(".zip"):
        return _load(file, CIFAR10_JPEG_ZIP, _read_jpeg_zip, cache_dir, verify, coarse=False)
    return _load(
        file, CIFAR10_TARBALL, lambda p: _read_tarball(p, _CIFAR10_LAYOUT), cache_dir, verify, coarse=False
    )


def load_cifar100(
    path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, verify: bool = True
) -> Cifar:
    """CIFAR-100 from `cifar-100-python.tar.gz` (the file, or a folder holding it).

    Args and raises as `load_cifar10`; the official counts are 500 / 100 images of each of the
    100 classes, in 20 superclasses.

    Returns:
        A `Cifar` with `.classes` the 100 fine class names and `.train_coarse_labels`,
        `.test_coarse_labels`, `.coarse_classes` (20 names) filled in.
    """
    path = Path(path)
    file = path if path.is_file() else path / CIFAR100_TARBALL.name
    if not file.is_file():
        raise DataNotFoundError(
            f"CIFAR-100 not found: put the official {CIFAR100_TARBALL.name} (from {CIFAR100_TARBALL.url}) in "
            f"{path}, or run `metalab data download cifar100 --data-dir {path}`"
        )
    return _load(
        file, CIFAR100_TARBALL, lambda p: _read_tarball(p, _CIFAR100_LAYOUT), cache_dir, verify, coarse=True
    )


def download_cifar10(root: str | os.PathLike, *, force: bool = False, opener=None) -> Path:
    """Download the official `cifar-10-python.tar.gz` (163 MB) into `root`, md5-checked (see
    `metalab.data.store.download_file`); an existing file is kept unless `force`. Returns its path."""
    target = Path(root) / CIFAR10_TARBALL.name
    if force or not target.exists():
        download_file(CIFAR10_TARBALL.url, target, CIFAR10_TARBALL.md5, opener=opener)
    return target


def download_cifar100(root: str | os.PathLike, *, force: bool = False, opener=None) -> Path:
    """Download the official `cifar-100-python.tar.gz` (161 MB) into `root`, md5-checked."""
    target = Path(root) / CIFAR100_TARBALL.name
    if force or not target.exists():
        download_file(CIFAR100_TARBALL.url, target, CIFAR100_TARBALL.md5, opener=opener)
    return target
