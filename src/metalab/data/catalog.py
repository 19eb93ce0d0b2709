"""The data sets metalab reads as `benchmark:` values: where each comes from, its checksums, its
class split, its default image size, whether a folder holds it, and how to download it.

`CATALOG` has one `DataSetInfo` per data-set benchmark; `metalab data list` prints it
(`format_catalog`), `metalab data download NAME` fetches what has a public URL (`download`), and
`metalab.builders.load_dataset` loads a benchmark through `load` with the config's data keys.
Loaders are imported only when a data set is loaded, so reading the catalogue is cheap.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .dataset import DataNotFoundError, FewShotDataset

__all__ = [
    "CATALOG",
    "DOWNLOADS",
    "DataSetInfo",
    "default_image",
    "download",
    "find",
    "format_catalog",
    "load",
]


@dataclass(frozen=True)
class DataSetInfo:
    """One data-set benchmark.

    Attributes:
        name: the `benchmark:` value.
        title: the data set and the paper of its split.
        classes: meta-train / val / test classes.
        images: how many images, of what size, once loaded.
        total_images: their number.
        image_size, channels: the defaults of the config keys `image_size` and `channels`.
        files: what the data folder must hold (one entry per accepted form).
        checksums: "file: algorithm digest" lines.
        source: a URL, or where the files come from when there is none.
        download: the `metalab data download` name that fetches the files, None if none can.
        folder: the usual name of its folder under a data root (`--data-dir ROOT/<folder>`).
        loader: "module:function" in `metalab.data`, called as `f(data_dir, image_size, verify=...)`.
        present: the form found in a folder, or None.
    """

    name: str
    title: str
    classes: tuple[int, int, int]
    images: str
    total_images: int
    image_size: int
    channels: int
    files: tuple[str, ...]
    checksums: tuple[str, ...]
    source: str
    download: str | None
    folder: str
    loader: str
    present: Callable[[Path], str | None]


def _all(*names: str) -> Callable[[Path], str | None]:
    return lambda d: ", ".join(names) if all((d / n).is_file() for n in names) else None


def _any(*names: str) -> Callable[[Path], str | None]:
    return lambda d: next((n for n in names if (d / n).is_file()), None)


def _call(module: str, function: str):
    return lambda *args, **kwargs: getattr(importlib.import_module(f"metalab.data.{module}"), function)(
        *args, **kwargs
    )


def _mini(d: Path) -> str | None:
    return _call("mini_imagenet", "find_mini_imagenet")(d)


def _tiered(d: Path) -> str | None:
    found = _call("tiered_imagenet", "find_tiered_imagenet")(d)
    return None if found is None else ", ".join(sorted({v[1].name.split("_", 1)[1] for v in found.values()}))


def _cub(d: Path) -> str | None:
    found = _call("cub", "find_cub")(d)
    return None if found is None else found.name


_CIFAR100_FILE = "cifar-100-python.tar.gz"
_CIFAR100_CHECKSUM = "cifar-100-python.tar.gz: md5 eb9058c3a382ffc7106e4002c42a8d85"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

CATALOG: dict[str, DataSetInfo] = {
    info.name: info
    for info in (
        DataSetInfo(
            "omniglot",
            "Omniglot (Lake et al. 2015), split of Vinyals et al. 2016 with rotations (docs/omniglot.md)",
            (4112, 688, 1692),
            "129,840 images (1,623 characters x 4 rotations x 20), greyscale",
            129_840,
            28,
            1,
            ("images_background.zip and images_evaluation.zip",),
            (
                "images_background.zip: md5 68d2efa1b9178cc56df9314c21c6e718",
                "images_evaluation.zip: md5 6b91aef0f799c5bb55b94e3f2daec811",
            ),
            "https://github.com/brendenlake/omniglot/raw/master/python/",
            "omniglot",
            "omniglot",
            "omniglot:load_omniglot",
            _all("images_background.zip", "images_evaluation.zip"),
        ),
        DataSetInfo(
            "cifar10",
            "CIFAR-10 (Krizhevsky 2009); the val classes are the train classes' test images",
            (5, 5, 5),
            "60,000 images, 32x32 RGB",
            60_000,
            32,
            3,
            ("cifar-10-python.tar.gz (official) or cifar10-images.zip (JPEG copy)",),
            (
                "cifar-10-python.tar.gz: md5 c58f30108f718f92721af3b95e74349a",
                "cifar10-images.zip: sha256 8506a817b94f9c441c2458baeb55e754e39d6e9265557d2dc41aaeb42230d1c6",
            ),
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar10",
            "cifar10",
            "cifar_fewshot:load_cifar10_fewshot",
            _any("cifar-10-python.tar.gz", "cifar10-images.zip"),
        ),
        DataSetInfo(
            "cifar_fs",
            "CIFAR-FS (Bertinetto et al. 2019): classes of CIFAR-100",
            (64, 16, 20),
            "60,000 images (600 per class), 32x32 RGB",
            60_000,
            32,
            3,
            (_CIFAR100_FILE,),
            (_CIFAR100_CHECKSUM,),
            _CIFAR100_URL,
            "cifar100",
            "cifar100",
            "cifar_fewshot:load_cifar_fs",
            _all(_CIFAR100_FILE),
        ),
        DataSetInfo(
            "fc100",
            "FC100 (Oreshkin et al. 2018): CIFAR-100 split by 12 / 4 / 4 superclasses",
            (60, 20, 20),
            "60,000 images (600 per class), 32x32 RGB",
            60_000,
            32,
            3,
            (_CIFAR100_FILE,),
            (_CIFAR100_CHECKSUM,),
            _CIFAR100_URL,
            "cifar100",
            "cifar100",
            "cifar_fewshot:load_fc100",
            _all(_CIFAR100_FILE),
        ),
        DataSetInfo(
            "mini_imagenet",
            "miniImageNet (Vinyals et al. 2016), split of Ravi & Larochelle 2017",
            (64, 16, 20),
            "60,000 images (600 per class), 84x84 RGB",
            60_000,
            84,
            3,
            (
                "train.csv, val.csv, test.csv and images/ (Ravi & Larochelle's split files, ImageNet JPEGs)",
                "mini-imagenet-cache-train.pkl, -val.pkl, -test.pkl",
                "miniImageNet_category_split_train_phase_train.pickle, ..._val.pickle, ..._test.pickle "
                "(MetaOptNet)",
            ),
            (
                "train.csv: md5 9525e1538f67719f18f1936bf8d0782d",
                "val.csv: md5 ce315ce99b41fbf84fa6acd69315d918",
                "test.csv: md5 5b89df877c6cbe5d291e43118a2a9591",
                "(no published checksums for the pickles: their classes and counts are checked)",
            ),
            "no public URL (ImageNet images): put one of the forms above in the data folder",
            None,
            "mini_imagenet",
            "mini_imagenet:load_mini_imagenet",
            _mini,
        ),
        DataSetInfo(
            "tiered_imagenet",
            "tieredImageNet (Ren et al. 2018): 20 / 6 / 8 high-level categories of ImageNet",
            (351, 97, 160),
            "779,165 images, 84x84 RGB",
            779_165,
            84,
            3,
            ("{train,val,test}_labels.pkl with {train,val,test}_images_png.pkl (or _images.npz)",),
            ("(no published checksums: the class, category and image counts are checked)",),
            "no public URL (ImageNet images): put Ren et al.'s files in the data folder",
            None,
            "tiered_imagenet",
            "tiered_imagenet:load_tiered_imagenet",
            _tiered,
        ),
        DataSetInfo(
            "cub",
            "CUB-200-2011 (Wah et al. 2011), split of Chen et al. 2019",
            (100, 50, 50),
            "11,788 images, resized to 84x84 RGB",
            11_788,
            84,
            3,
            ("CUB_200_2011.tgz (or the extracted CUB_200_2011/)",),
            ("CUB_200_2011.tgz: md5 97eceeb196236b17998738112f37df78",),
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
            "cub",
            "cub",
            "cub:load_cub",
            _cub,
        ),
        DataSetInfo(
            "fashion_mnist",
            "Fashion-MNIST (Xiao et al. 2017); the val classes are the train classes' test images",
            (5, 5, 5),
            "70,000 images, 28x28 greyscale",
            70_000,
            28,
            1,
            (
                "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                "t10k-labels-idx1-ubyte.gz",
            ),
            (
                "train-images-idx3-ubyte.gz: md5 8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz: md5 25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz: md5 bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz: md5 bb300cfdad3c16e7a12a480ee83cd310",
                "(Debian's dataset-fashion-mnist recompresses them: its md5s are accepted too)",
            ),
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "fashion_mnist",
            "fashion_mnist",
            "fashion_mnist:load_fashion_mnist",
            _all(
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ),
        ),
    )
}

# `metalab data download NAME`: what each name fetches (module, function), and into which folder.
DOWNLOADS: dict[str, tuple[str, str, str]] = {
    "omniglot": ("omniglot", "download_omniglot", "images_background.zip, images_evaluation.zip"),
    "cifar10": ("cifar", "download_cifar10", "cifar-10-python.tar.gz (163 MB)"),
    "cifar100": ("cifar", "download_cifar100", "cifar-100-python.tar.gz (161 MB), for cifar_fs and fc100"),
    "cub": ("cub", "download_cub", "CUB_200_2011.tgz (1.1 GB)"),
    "fashion_mnist": ("fashion_mnist", "download_fashion_mnist", "the four idx .gz files (30 MB)"),
}


def default_image(benchmark: str) -> tuple[int, int] | None:
    """(image_size, channels) a data-set benchmark uses unless the config sets them; None for others."""
    info = CATALOG.get(benchmark)
    return None if info is None else (info.image_size, info.channels)


def find(info: DataSetInfo, data_dir: str | os.PathLike) -> tuple[Path, str] | None:
    """(folder, form) where `data_dir` or `data_dir/<info.folder>` holds the data set, else None."""
    for folder in (Path(data_dir), Path(data_dir) / info.folder):
        if folder.is_dir():
            form = info.present(folder)
            if form is not None:
                return folder, form
    return None


def load(
    benchmark: str,
    data_dir: str | os.PathLike,
    image_size: int,
    *,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> FewShotDataset:
    """The `FewShotDataset` of a data-set benchmark (not omniglot, whose loader takes its split)."""
    module, function = CATALOG[benchmark].loader.split(":")
    return _call(module, function)(data_dir, image_size, verify=verify, cache_dir=cache_dir)


def download(name: str, data_dir: str | os.PathLike) -> Path:
    """`metalab data download NAME`: fetch the files of `name` (a `DOWNLOADS` name or a benchmark
    whose files one of them fetches) into `data_dir`, each checked against its published md5.

    Raises:
        DataNotFoundError: `name` has no public download (the message says what to put where), or
            the download failed.
        DataIntegrityError: a download's md5 is wrong (the partial file is removed).
    """
    info = CATALOG.get(name)
    target = name if name in DOWNLOADS else (info.download if info is not None else None)
    if target is None:
        if info is None:
            raise ValueError(f"unknown data set {name!r}; `metalab data list` names them")
        raise DataNotFoundError(
            f"{name} has no public download. Put {' or '.join(info.files)} in {data_dir}, then pass "
            f"--data-dir {data_dir} with --benchmark {info.name}"
        )
    module, function, _ = DOWNLOADS[target]
    _call(module, function)(data_dir)
    return Path(data_dir)


def format_catalog(data_dir: str | os.PathLike | None = None) -> str:
    """The text of `metalab data list`: every data set with its split, files, checksums, source and,
    with `data_dir`, whether that folder (or its subfolder of the data set's name) holds it."""
    lines = []
    for info in CATALOG.values():
        train, val, test = info.classes
        lines.append(f"{info.name}: {info.title}")
        lines.append(f"  classes:   {train} / {val} / {test} (meta-train / val / test); {info.images}")
        lines.append(f"  defaults:  image_size {info.image_size}, channels {info.channels}")
        for k, f in enumerate(info.files):
            lines.append(f"  {'files:' if k == 0 else 'or:':<10} {f}")
        for k, c in enumerate(info.checksums):
            lines.append(f"  {'checksums:' if k == 0 else '':<10} {c}")
        how = f"`metalab data download {info.download} --data-dir DIR`" if info.download else "no download"
        lines.append(f"  source:    {info.source} ({how})")
        if data_dir is not None:
            found = find(info, data_dir)
            where = (
                f"present in {found[0]} ({found[1]})"
                if found
                else f"not in {data_dir} (nor {Path(data_dir) / info.folder})"
            )
            lines.append(f"  here:      {where}")
    return "\n".join(lines)
