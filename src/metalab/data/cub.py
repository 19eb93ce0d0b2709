"""Caltech-UCSD Birds-200-2011 (CUB) from its official archive, in the few-shot split of Chen et al. 2019.

The archive `CUB_200_2011.tgz` (md5 `CUB_TARBALL.md5`, downloadable) holds `CUB_200_2011/` with
`classes.txt` (`<class id> <class folder>`), `images.txt` (`<image id> <class folder>/<file>.jpg`),
`image_class_labels.txt` (`<image id> <class id>`) and the JPEGs in `images/<class folder>/`: 11,788
photographs of 200 bird species. It is read without extracting it (an extracted `CUB_200_2011/`
folder in the data folder is read too); every JPEG is decoded once, resized to `image_size` x
`image_size` (84 for Conv-4 in the papers; the whole photograph, stretched, as Chen et al. do,
without the bounding boxes) and cached as uint8.

The split is Chen et al.'s (`write_CUB_filelist.py` of "A Closer Look at Few-shot Classification"):
with the 200 class folders in sorted order and i their 0-based position, classes with i % 2 == 0
are meta-train (100), i % 4 == 1 meta-val (50) and i % 4 == 3 meta-test (50).

References: Wah, Branson, Welinder, Perona & Belongie, "The Caltech-UCSD Birds-200-2011 Dataset",
Caltech tech. report CNS-TR-2011-001; Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot
Classification", ICLR 2019.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .cifar import SourceFile
from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset
from .images import decode_image
from .store import (
    cache_dir_for,
    cached,
    check_digests,
    download_file,
    few_shot_dataset,
    file_digests,
    source_key,
)

__all__ = ["CUB_TARBALL", "IMAGES", "chen_split", "download_cub", "find_cub", "load_cub"]

CUB_TARBALL = SourceFile(
    "CUB_200_2011.tgz",
    "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
    md5="97eceeb196236b17998738112f37df78",
)
ROOT = "CUB_200_2011"
CLASSES, IMAGES = 200, 11_788
_MAX_PIXELS = 1 << 24  # the photographs are at most about 500 x 500
_CACHE_FORMAT = 1


def chen_split(class_folders: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Chen et al.'s meta-train / val / test classes of the sorted class folders (see the module)."""
    ordered = sorted(class_folders)
    return (
        [c for i, c in enumerate(ordered) if i % 2 == 0],
        [c for i, c in enumerate(ordered) if i % 4 == 1],
        [c for i, c in enumerate(ordered) if i % 4 == 3],
    )


def find_cub(data_dir: str | os.PathLike) -> Path | None:
    """The archive in `data_dir` (or the file itself), else an extracted `CUB_200_2011/` folder, else None."""
    data_dir = Path(data_dir)
    if data_dir.is_file():
        return data_dir
    if (data_dir / CUB_TARBALL.name).is_file():
        return data_dir / CUB_TARBALL.name
    if (data_dir / ROOT / "images.txt").is_file():
        return data_dir / ROOT
    return None


def _parse_pairs(text: str, name: str) -> list[tuple[int, str]]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        first, _, rest = line.strip().partition(" ")
        if not first.isdigit() or not rest:
            raise DataIntegrityError(f"{name}: malformed line {line!r}; expected '<id> <value>'")
        out.append((int(first), rest.strip()))
    return out


class _Reader:
    """The metadata and JPEGs of the archive or of an extracted folder, through one interface."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def read_all(self, image_size: int) -> dict:
        texts: dict[str, str] = {}
        decoded: dict[str, np.ndarray] = {}
        for rel, data in self._entries():
            if rel in ("classes.txt", "images.txt", "image_class_labels.txt"):
                texts[rel] = data.decode()
            elif rel.startswith("images/") and rel.lower().endswith(".jpg"):
                decoded[rel[len("images/") :]] = decode_image(
                    data, image_size, 3, name=f"{self.source}:{ROOT}/{rel}", max_pixels=_MAX_PIXELS
                )
        for name in ("classes.txt", "images.txt", "image_class_labels.txt"):
            if name not in texts:
                raise DataIntegrityError(
                    f"{self.source}: no {ROOT}/{name}; is this the official CUB-200-2011 archive?"
                )
        classes = _parse_pairs(texts["classes.txt"], f"{self.source}:{ROOT}/classes.txt")
        images = _parse_pairs(texts["images.txt"], f"{self.source}:{ROOT}/images.txt")
        labels = dict(
            _parse_pairs(texts["image_class_labels.txt"], f"{self.source}:{ROOT}/image_class_labels.txt")
        )
        class_ids = {cid: k for k, (cid, _) in enumerate(sorted(classes))}
        x = np.empty((len(images), 3, image_size, image_size), dtype=np.uint8)
        y = np.empty(len(images), dtype=np.int64)
        for k, (image_id, rel) in enumerate(images):
            if rel not in decoded:
                raise DataIntegrityError(
                    f"{self.source}: images.txt names {rel}, which is not in {ROOT}/images/"
                )
            label = labels.get(image_id)
            if label is None or not label.isdigit() or int(label) not in class_ids:
                raise DataIntegrityError(f"{self.source}: image {image_id} ({rel}) has no valid class label")
            x[k], y[k] = decoded[rel], class_ids[int(label)]
        return {
            "images": torch.from_numpy(x),
            "labels": torch.from_numpy(y),
            "classes": [name for _, name in sorted(classes)],
            "format": _CACHE_FORMAT,
        }

    def _entries(self):
        """(path below CUB_200_2011/, bytes) of every file of interest."""
        if self.source.is_dir():
            for path in sorted(self.source.rglob("*")):
                rel = path.relative_to(self.source).as_posix()
                if path.is_file() and (rel.endswith(".txt") or rel.startswith("images/")):
                    yield rel, path.read_bytes()
            return
        try:
            with tarfile.open(self.source, "r:gz") as tf:
                for info in tf:
                    if not info.isfile() or not info.name.startswith(ROOT + "/"):
                        continue
                    rel = info.name[len(ROOT) + 1 :]
                    if (rel.endswith(".txt") and "/" not in rel) or rel.startswith("images/"):
                        f = tf.extractfile(info)
                        if f is not None:
                            yield rel, f.read()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise DataIntegrityError(
                f"{self.source}: not a readable .tgz ({type(err).__name__}: {err}); the archive is "
                "corrupt or truncated"
            ) from err


def load_cub(
    data_dir: str | os.PathLike,
    image_size: int = 84,
    *,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> FewShotDataset:
    """CUB-200-2011 in Chen et al.'s split (see the module).

    Args:
        data_dir: the folder holding `CUB_200_2011.tgz` (or an extracted `CUB_200_2011/`).
        image_size: S, the side every photograph is resized to once (84 for Conv-4).
        cache_dir: the cache folder (default `$XDG_CACHE_HOME/metalab/cub`).
        verify: check the archive's md5 and the official counts (11,788 images, 200 classes).

    Returns:
        `FewShotDataset` with x uint8 (11,788, 3, S, S), classes named by their folders
        ("001.Black_footed_Albatross", ...), 100 / 50 / 50 meta-train / val / test classes.

    Raises:
        DataNotFoundError: no archive; the message says where to put it and how to download it.
        DataIntegrityError: a wrong md5, a damaged archive or cache, or wrong counts.
    """
    data_dir = Path(data_dir)
    source = find_cub(data_dir)
    if source is None:
        raise DataNotFoundError(
            f"CUB-200-2011 not found in {data_dir}: put the official {CUB_TARBALL.name} (from "
            f"{CUB_TARBALL.url}) there, or run `metalab data download cub --data-dir {data_dir}`"
        )
    archive = source.is_file()
    key_files = [source] if archive else [source / "images.txt", source / "images"]

    def build() -> dict:
        digests = file_digests(source) if archive else {}
        if archive and verify:
            check_digests(source, CUB_TARBALL.digests(), digests)  # before spending time decoding
        return {**_Reader(source).read_all(image_size), "digests": digests}

    def check(blob: dict) -> bool:
        x, y = blob.get("images"), blob.get("labels")
        return (
            isinstance(x, torch.Tensor)
            and x.dtype == torch.uint8
            and tuple(x.shape[1:]) == (3, image_size, image_size)
            and isinstance(y, torch.Tensor)
            and y.shape == x.shape[:1]
            and isinstance(blob.get("classes"), list)
            and isinstance(blob.get("digests"), dict)
        )

    key = {"source": source_key(key_files), "size": image_size, "format": _CACHE_FORMAT}
    blob = cached(cache_dir_for("cub", cache_dir), "cub", key, build, check)
    if archive and verify:
        check_digests(source, CUB_TARBALL.digests(), blob["digests"])  # a cache built without verifying
    if verify and (len(blob["classes"]) != CLASSES or len(blob["labels"]) != IMAGES):
        raise DataIntegrityError(
            f"{source}: {len(blob['classes'])} classes and {len(blob['labels']):,} images, expected "
            f"{CLASSES} and {IMAGES:,}; is this the complete official archive?"
        )
    return few_shot_dataset(
        blob["images"], blob["labels"], blob["classes"], chen_split(blob["classes"]), image_size
    )


def download_cub(root: str | os.PathLike, *, force: bool = False, opener=None) -> Path:
    """Download the official `CUB_200_2011.tgz` (1.1 GB) into `root`, md5-checked; an existing file
    is kept unless `force`. Returns its path."""
    target = Path(root) / CUB_TARBALL.name
    if force or not target.exists():
        download_file(CUB_TARBALL.url, target, CUB_TARBALL.md5, opener=opener)
    return target
