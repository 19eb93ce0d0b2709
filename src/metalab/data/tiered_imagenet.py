"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes under 34 high-level categories, split by
category into 351 / 97 / 160 meta-train / val / test classes (20 / 6 / 8 categories), at 84x84.

There is no official download (the images come from ImageNet). The authors' files, per split
`train`, `val`, `test`, are read from the data folder:

- `{split}_labels.pkl`: a dict with "label_specific" (the class of every image, 0..C-1 within the
  split), "label_specific_str" (the C class names), "label_general" and "label_general_str" (the
  high-level category of every image, and their names);
- the images, either `{split}_images_png.pkl` (a list of PNG-encoded 84x84 images, as the authors
  distribute them), decoded once and cached as uint8; or `{split}_images.npz` (key "images", uint8
  (N, 84, 84, 3)), which their `decompress` step writes with OpenCV and which therefore holds the
  channels in BGR order: they are reversed so that both forms give the same RGB images.

With `verify`, every split must hold the published numbers of classes and categories (`SPLIT_CLASSES`,
`SPLIT_CATEGORIES`) and of images (`SPLIT_IMAGES`).

Reference: Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR 2018.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset
from .store import cache_dir_for, cached, few_shot_dataset, load_pickle, source_key

__all__ = [
    "SPLIT_CATEGORIES",
    "SPLIT_CLASSES",
    "SPLIT_IMAGES",
    "find_tiered_imagenet",
    "load_tiered_imagenet",
]

SPLITS = ("train", "val", "test")
SPLIT_CLASSES = {"train": 351, "val": 97, "test": 160}
SPLIT_CATEGORIES = {"train": 20, "val": 6, "test": 8}
SPLIT_IMAGES = {"train": 448_695, "val": 124_261, "test": 206_209}
NATIVE_SIZE = 84
_CACHE_FORMAT = 1


def _images_file(data_dir: Path, split: str) -> Path | None:
    for name in (f"{split}_images_png.pkl", f"{split}_images.npz"):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def find_tiered_imagenet(data_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]] | None:
    """{split: (labels file, images file)} if every split's two files are in `data_dir`, else None
    (the PNG pickle is preferred where both image files are present)."""
    data_dir = Path(data_dir)
    found = {}
    for s in SPLITS:
        labels, images = data_dir / f"{s}_labels.pkl", _images_file(data_dir, s)
        if not labels.is_file() or images is None:
            return None
        found[s] = (labels, images)
    return found


def _missing_message(data_dir: Path) -> str:
    return (
        f"tieredImageNet not found in {data_dir}: it has no public download (its images come from ImageNet). "
        "Put Ren et al.'s files there: train_labels.pkl, val_labels.pkl, test_labels.pkl and "
        "train_images_png.pkl, val_images_png.pkl, test_images_png.pkl (or the decompressed "
        "{split}_images.npz)"
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_labels(path: Path) -> dict:
    d = load_pickle(path, str(path), encoding="latin1")
    if not isinstance(d, dict):
        raise DataIntegrityError(f"{path}: expected a dict of labels")
    d = {_text(k): v for k, v in d.items()}
    missing = [k for k in ("label_specific", "label_specific_str", "label_general") if k not in d]
    if missing:
        raise DataIntegrityError(f"{path}: no {', '.join(missing)} (expected Ren et al.'s labels file)")
    labels = np.asarray(d["label_specific"], dtype=np.int64).reshape(-1)
    names = [_text(n) for n in d["label_specific_str"]]
    general = np.asarray(d["label_general"], dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)) or general.shape != labels.shape:
        raise DataIntegrityError(
            f"{path}: labels outside the {len(names)} class names, or unequal label lists"
        )
    return {"labels": labels, "classes": names, "general": general}


def _decode_png_pickle(path: Path) -> torch.Tensor:
    items = load_pickle(path, str(path), encoding="latin1")
    if not isinstance(items, (list, tuple)):
        raise DataIntegrityError(f"{path}: expected a list of PNG-encoded images")
    out = np.empty((len(items), 3, NATIVE_SIZE, NATIVE_SIZE), dtype=np.uint8)
    for k, item in enumerate(items):
        data = item.tobytes() if isinstance(item, np.ndarray) else item
        try:
            if not isinstance(data, bytes):
                raise TypeError(f"a {type(item).__name__}, not encoded bytes")
            with Image.open(io.BytesIO(data)) as img:
                if img.size != (NATIVE_SIZE, NATIVE_SIZE):
                    raise ValueError(
                        f"a {img.width}x{img.height} image, expected {NATIVE_SIZE}x{NATIVE_SIZE}"
                    )
                out[k] = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        except (OSError, SyntaxError, ValueError, TypeError) as err:
            raise DataIntegrityError(
                f"{path}: cannot decode image {k} ({type(err).__name__}: {err})"
            ) from err
    return torch.from_numpy(out)


def _read_npz(path: Path) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = npz["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataIntegrityError(
            f"cannot read {path} ({type(err).__name__}: {err}); expected key 'images'"
        ) from err
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataIntegrityError(
            f"{path}: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(images[..., ::-1].transpose(0, 3, 1, 2)))  # BGR -> RGB


def _check_split(path: Path, split: str, labels: dict, n_images: int, verify: bool) -> None:
    if n_images != len(labels["labels"]):
        raise DataIntegrityError(
            f"{path}: {n_images:,} images but {len(labels['labels']):,} labels in {split}_labels.pkl"
        )
    if verify:
        found = (len(labels["classes"]), len(np.unique(labels["general"])), n_images)
        expected = (SPLIT_CLASSES[split], SPLIT_CATEGORIES[split], SPLIT_IMAGES[split])
        if found != expected:
            raise DataIntegrityError(
                f"{path}: the {split} split has {found[0]} classes / {found[1]} categories / {found[2]:,} "
                f"images, expected {expected[0]} / {expected[1]} / {expected[2]:,}; is this Ren et al.'s "
                "complete file?"
            )


def load_tiered_imagenet(
    data_dir: str | os.PathLike,
    image_size: int = NATIVE_SIZE,
    *,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> FewShotDataset:
    """tieredImageNet from Ren et al.'s files in `data_dir` (see the module).

    Args:
        data_dir: the folder holding the files.
        image_size: S; the 84x84 images are resized where S differs.
        cache_dir: where the decoded PNGs are cached (default `$XDG_CACHE_HOME/metalab/tiered_imagenet`).
        verify: check the published class, category and image counts of every split.

    Returns:
        `FewShotDataset` with x uint8 (779,165, 3, S, S) for the full data and 351 / 97 / 160
        meta-train / val / test classes, named "<split>/<class name>".

    Raises:
        DataNotFoundError: files are missing; the message lists them.
        DataIntegrityError: a file is damaged or does not hold the published split.
    """
    data_dir = Path(data_dir)
    files = find_tiered_imagenet(data_dir)
    if files is None:
        raise DataNotFoundError(_missing_message(data_dir))
    names, xs, ys, split_names = [], [], [], []
    for s in SPLITS:
        labels_file, images_file = files[s]
        labels = _read_labels(labels_file)
        if images_file.name.endswith(".npz"):
            images = _read_npz(images_file)
        else:

            def build(path=images_file) -> dict:
                return {"images": _decode_png_pickle(path), "format": _CACHE_FORMAT}

            def check(blob: dict) -> bool:
                x = blob.get("images")
                return (
                    isinstance(x, torch.Tensor)
                    and x.dtype == torch.uint8
                    and tuple(x.shape[1:]) == (3, 84, 84)
                )

            key = {"source": source_key([images_file]), "format": _CACHE_FORMAT}
            images = cached(
                cache_dir_for("tiered_imagenet", cache_dir), f"tiered_imagenet-{s}", key, build, check
            )["images"]
        _check_split(images_file, s, labels, len(images), verify)
        classes = [f"{s}/{c}" for c in labels["classes"]]
        xs.append(images)
        ys.append(torch.from_numpy(labels["labels"]) + len(names))
        names += classes
        split_names.append(classes)
    return few_shot_dataset(torch.cat(xs), torch.cat(ys), names, tuple(split_names), image_size)
