"""miniImageNet (Vinyals et al. 2016) in the split of Ravi & Larochelle 2017: 64 / 16 / 20 ImageNet
classes of 600 images each, at 84x84.

There is no official download: the images come from ImageNet (ILSVRC-2012), whose licence requires
registration. Three common distributions are read, looked for in this order in the data folder:

1. Ravi & Larochelle's split files `train.csv`, `val.csv`, `test.csv` (lines `filename,label`, e.g.
   `n0153282900000005.jpg,n01532829`; md5s in `RAVI_CSV_MD5`) with the JPEGs in `images/` (either
   `images/<filename>` or `images/<label>/<filename>`). Every JPEG is decoded once and resized to
   `image_size` x `image_size` (Lanczos, as `metalab.data.images`), then cached as uint8.
2. The pickled 84x84 arrays `mini-imagenet-cache-{train,val,test}.pkl`: dicts with "image_data"
   (uint8 (N, 84, 84, 3)) and "class_dict" ({wnid: [indices into image_data]}).
3. The pickles of MetaOptNet (Lee et al. 2019) and Gidaris & Komodakis 2018:
   `miniImageNet_category_split_train_phase_train.pickle`, `..._val.pickle`, `..._test.pickle`:
   dicts with "data" (uint8 (N, 84, 84, 3)), "labels" (N ints) and "catname2label" ({wnid: label}).

Forms 2 and 3 already hold decoded uint8 arrays and are read as they are (a cache would only copy
them). With `verify`, the classes of every split must be exactly Ravi & Larochelle's
(`MINI_IMAGENET_CLASSES`) with 600 images each, and the CSVs must be theirs (md5).

References: Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016; Ravi &
Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017; Lee et al., "Meta-Learning
with Differentiable Convex Optimization", CVPR 2019.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset
from .images import read_image
from .store import (
    cache_dir_for,
    cached,
    check_digests,
    few_shot_dataset,
    file_digests,
    load_pickle,
    source_key,
)

__all__ = [
    "IMAGES_PER_CLASS",
    "MINI_IMAGENET_CLASSES",
    "MINI_IMAGENET_LAYOUTS",
    "RAVI_CSV_MD5",
    "find_mini_imagenet",
    "load_mini_imagenet",
]

SPLITS = ("train", "val", "test")
IMAGES_PER_CLASS = 600
NATIVE_SIZE = 84

# Ravi & Larochelle's classes (ImageNet wnids), from their train.csv / val.csv / test.csv.
MINI_IMAGENET_CLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747",
        "n02074367", "n02089867", "n02091831", "n02101006", "n02105505", "n02108089", "n02108551",
        "n02108915", "n02111277", "n02113712", "n02120079", "n02165456", "n02457408", "n02606052",
        "n02687172", "n02747177", "n02795169", "n02823428", "n02966193", "n03017168", "n03047690",
        "n03062245", "n03207743", "n03220513", "n03337140", "n03347037", "n03400231", "n03476684",
        "n03527444", "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
        "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548", "n04296562",
        "n04389033", "n04435653", "n04443257", "n04509417", "n04515003", "n04596742", "n04604644",
        "n04612504", "n06794110", "n07584110", "n07697537", "n07747607", "n09246464", "n13054560",
        "n13133613",
    ),
    "val": (
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356",
        "n02981792", "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504",
        "n03980874", "n09256479",
    ),
    "test": (
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165",
        "n02219486", "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143",
        "n03775546", "n04146614", "n04149813", "n04418357", "n04522168", "n07613480",
    ),
}  # fmt: skip
# md5 of the split files in twitter-research/meta-learning-lstm, data/miniImagenet/.
RAVI_CSV_MD5 = {
    "train": "9525e1538f67719f18f1936bf8d0782d",
    "val": "ce315ce99b41fbf84fa6acd69315d918",
    "test": "5b89df877c6cbe5d291e43118a2a9591",
}
# The file names of each distribution, by split.
MINI_IMAGENET_LAYOUTS: dict[str, dict[str, str]] = {
    "csv": {s: f"{s}.csv" for s in SPLITS},
    "cache_pkl": {s: f"mini-imagenet-cache-{s}.pkl" for s in SPLITS},
    "metaoptnet": {
        "train": "miniImageNet_category_split_train_phase_train.pickle",
        "val": "miniImageNet_category_split_val.pickle",
        "test": "miniImageNet_category_split_test.pickle",
    },
}
_CACHE_FORMAT = 1


def _missing_message(data_dir: Path) -> str:
    return (
        f"miniImageNet not found in {data_dir}: it has no public download (its images come from ImageNet). "
        "Put one of these there: (1) Ravi & Larochelle's train.csv, val.csv, test.csv with the JPEGs in "
        "images/; (2) mini-imagenet-cache-train.pkl, -val.pkl, -test.pkl; (3) MetaOptNet's "
        "miniImageNet_category_split_train_phase_train.pickle, ..._val.pickle, ..._test.pickle"
    )


def find_mini_imagenet(data_dir: str | os.PathLike) -> str | None:
    """The distribution ("csv", "cache_pkl" or "metaoptnet") whose three files are all in `data_dir`."""
    data_dir = Path(data_dir)
    for layout, files in MINI_IMAGENET_LAYOUTS.items():
        if all((data_dir / f).is_file() for f in files.values()) and (
            layout != "csv" or (data_dir / "images").is_dir()
        ):
            return layout
    return None


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataIntegrityError(f"cannot read {path} ({type(err).__name__}: {err})") from err
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataIntegrityError(
            f"{path}: expected the header 'filename,label' (Ravi & Larochelle's split files)"
        )
    body = [r for r in rows[1:] if r]
    bad = next((r for r in body if len(r) != 2 or not r[0] or not r[1]), None)
    if bad is not None:
        raise DataIntegrityError(f"{path}: malformed line {','.join(bad)!r}; expected filename,label")
    return [(r[0].strip(), r[1].strip()) for r in body]


def _decode_csv_split(data_dir: Path, split: str, image_size: int) -> dict:
    """One split of the CSV distribution: its JPEGs decoded and resized, grouped by class."""
    rows = _read_csv(data_dir / f"{split}.csv")
    classes = sorted({label for _, label in rows})
    images = np.empty((len(rows), 3, image_size, image_size), dtype=np.uint8)
    for k, (name, label) in enumerate(rows):
        flat, nested = data_dir / "images" / name, data_dir / "images" / label / name
        path = flat if flat.is_file() else nested
        if not path.is_file():
            raise DataNotFoundError(
                f"{data_dir / (split + '.csv')} names {name}, which is neither {flat} nor {nested}; put the "
                "miniImageNet JPEGs in images/"
            )
        images[k] = read_image(path, image_size, channels=3)
    index = {c: i for i, c in enumerate(classes)}
    return {
        "images": torch.from_numpy(images),
        "labels": torch.tensor([index[label] for _, label in rows], dtype=torch.long),
        "classes": classes,
    }


def _from_arrays(path: Path, data, labels: np.ndarray, classes: list[str]) -> dict:
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3 or len(labels) != len(data):
        raise DataIntegrityError(
            f"{path}: expected uint8 images of shape (N, H, W, 3) and N labels, got {data.dtype} "
            f"{data.shape} and {len(labels)} labels"
        )
    return {
        "images": torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2))),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "classes": classes,
    }


def _read_cache_pkl(path: Path) -> dict:
    d = load_pickle(path, str(path), encoding="latin1")
    if not isinstance(d, dict) or "image_data" not in d or not isinstance(d.get("class_dict"), dict):
        raise DataIntegrityError(f"{path}: expected a dict with 'image_data' and 'class_dict'")
    classes = sorted(d["class_dict"])
    data = np.asarray(d["image_data"])
    labels = np.full(len(data), -1, dtype=np.int64)
    for i, c in enumerate(classes):
        idx = np.asarray(d["class_dict"][c], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(data)):
            raise DataIntegrityError(f"{path}: class_dict[{c!r}] indexes beyond the {len(data)} images")
        labels[idx] = i
    keep = labels >= 0  # images no class claims are not part of the split
    return _from_arrays(path, data[keep], labels[keep], classes)


def _read_metaoptnet(path: Path) -> dict:
    d = load_pickle(path, str(path), encoding="latin1")
    if not isinstance(d, dict) or not {"data", "labels", "catname2label"} <= set(d):
        raise DataIntegrityError(f"{path}: expected a dict with 'data', 'labels' and 'catname2label'")
    labels = np.asarray(d["labels"], dtype=np.int64)
    name_of = {int(v): str(k) for k, v in d["catname2label"].items()}
    present = sorted(set(labels.tolist()))
    if not present:
        raise DataIntegrityError(f"{path}: holds no labelled images")
    unnamed = [lab for lab in present if lab not in name_of]
    if unnamed:
        raise DataIntegrityError(f"{path}: labels {unnamed[:5]} have no name in catname2label")
    classes = sorted(name_of[lab] for lab in present)
    index = {c: i for i, c in enumerate(classes)}
    remap = np.array([index[name_of[lab]] if lab in name_of else -1 for lab in range(max(present) + 1)])
    return _from_arrays(path, d["data"], remap[labels], classes)


def _check_split(path: Path, split: str, part: dict, verify: bool) -> None:
    counts = torch.bincount(part["labels"], minlength=len(part["classes"]))
    if verify:
        if tuple(part["classes"]) != MINI_IMAGENET_CLASSES[split]:
            extra = sorted(set(part["classes"]) - set(MINI_IMAGENET_CLASSES[split]))
            raise DataIntegrityError(
                f"{path}: the {split} split holds {len(part['classes'])} classes, not Ravi & Larochelle's "
                f"{len(MINI_IMAGENET_CLASSES[split])}" + (f" (e.g. {extra[0]})" if extra else "")
            )
        if bool((counts != IMAGES_PER_CLASS).any()):
            raise DataIntegrityError(
                f"{path}: {int((counts != IMAGES_PER_CLASS).sum())} class(es) of the {split} split do not "
                f"have {IMAGES_PER_CLASS} images"
            )


def load_mini_imagenet(
    data_dir: str | os.PathLike,
    image_size: int = NATIVE_SIZE,
    *,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> FewShotDataset:
    """miniImageNet from any of the three distributions (see the module) in `data_dir`.

    Args:
        data_dir: the folder holding one distribution.
        image_size: S (84 in the papers). The CSV form decodes its JPEGs at S; the pickled forms
            are 84x84 and are resized where S differs.
        cache_dir: where the decoded JPEGs are cached (default `$XDG_CACHE_HOME/metalab/mini_imagenet`).
        verify: check the CSVs' md5s, Ravi & Larochelle's classes per split and 600 images per class;
            off for a distribution of your own in the same format (its files' splits are used as given).

    Returns:
        `FewShotDataset` with x uint8 (60,000, 3, S, S), classes named by their ImageNet wnids,
        64 / 16 / 20 meta-train / val / test classes.

    Raises:
        DataNotFoundError: no distribution in `data_dir`; the message lists what to put there.
        DataIntegrityError: a file is damaged or does not hold the published split.
    """
    data_dir = Path(data_dir)
    layout = find_mini_imagenet(data_dir)
    if layout is None:
        raise DataNotFoundError(_missing_message(data_dir))
    files = {s: data_dir / name for s, name in MINI_IMAGENET_LAYOUTS[layout].items()}
    parts = {}
    if layout == "csv":
        if verify:
            for s, path in files.items():
                check_digests(path, {"md5": RAVI_CSV_MD5[s]}, file_digests(path))

        def build() -> dict:
            out: dict = {"format": _CACHE_FORMAT}
            for s in SPLITS:
                for k, v in _decode_csv_split(data_dir, s, image_size).items():
                    out[f"{s}_{k}"] = v
            return out

        def check(blob: dict) -> bool:
            return all(
                isinstance(blob.get(f"{s}_images"), torch.Tensor)
                and blob[f"{s}_images"].dtype == torch.uint8
                and tuple(blob[f"{s}_images"].shape[1:]) == (3, image_size, image_size)
                and blob[f"{s}_labels"].shape == blob[f"{s}_images"].shape[:1]
                for s in SPLITS
            )

        images_dir = data_dir / "images"
        key = {"source": source_key(files.values()), "images": source_key([images_dir]), "size": image_size}
        blob = cached(cache_dir_for("mini_imagenet", cache_dir), "mini_imagenet", key, build, check)
        parts = {s: {k: blob[f"{s}_{k}"] for k in ("images", "labels", "classes")} for s in SPLITS}
    else:
        read = _read_cache_pkl if layout == "cache_pkl" else _read_metaoptnet
        parts = {s: read(files[s]) for s in SPLITS}
    for s in SPLITS:
        _check_split(files[s], s, parts[s], verify)
    return _join_splits(parts, image_size)


def _join_splits(parts: dict[str, dict], image_size: int) -> FewShotDataset:
    """One `FewShotDataset` from three splits' images, labels and class names (disjoint classes)."""
    names, xs, ys = [], [], []
    for s in SPLITS:
        xs.append(parts[s]["images"])
        ys.append(parts[s]["labels"] + len(names))
        names += list(parts[s]["classes"])
    split_names = tuple(list(parts[s]["classes"]) for s in SPLITS)
    return few_shot_dataset(torch.cat(xs), torch.cat(ys), names, split_names, image_size)
