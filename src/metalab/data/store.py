"""What every data-set loader shares: checksums, downloads, safe unpickling and the uint8 cache.

- Checksums: `file_digests` reads a file once for its md5 and sha256; `check_digests` compares them
  with the published ones and names the file on a mismatch.
- Downloads: `download_file` streams a URL into a temporary file beside the target, checks its
  md5, and renames it into place only when it matches; nothing is left behind otherwise.
- Pickles: the official CIFAR batches, the mini/tieredImageNet caches and MetaOptNet's pickles are
  pickled dicts of numpy arrays. `load_pickle` reads them with an unpickler that builds only plain
  containers and numpy arrays, so a crafted file cannot run code.
- The cache: a loader decodes its source files once and keeps the result (uint8 image tensors,
  labels, names) in `$XDG_CACHE_HOME/metalab/<data set>/` (normally `~/.cache/metalab/...`). The
  data folder is never written to: it may be shared or read-only. A cache file is keyed by the
  source files' names, sizes and modification times and by the loader's settings, so a changed
  file is decoded again; files are written atomically, so a crash never leaves half a cache.
- `few_shot_dataset` puts decoded images, labels and the published class lists together into the
  `FewShotDataset` every image benchmark hands to the samplers.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.nn import functional as F

from ..paths import PathError
from ..tasks.splits import ClassSplits
from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset

__all__ = [
    "cache_dir_for",
    "cached",
    "check_digests",
    "download_file",
    "few_shot_dataset",
    "file_digests",
    "load_pickle",
    "prepare_cache_dir",
    "resize_images",
    "save_atomically",
    "source_key",
]


def cache_dir_for(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else `$XDG_CACHE_HOME/metalab/<name>` (normally `~/.cache/metalab/<name>`)."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "metalab" / name


def file_digests(path: str | os.PathLike, algorithms: Iterable[str] = ("md5", "sha256")) -> dict[str, str]:
    """{"md5": ..., "sha256": ...} of a file (or the `hashlib` digests named in `algorithms`), read
    once in 1 MiB blocks."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for digest in digests.values():
                digest.update(block)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def check_digests(path: str | os.PathLike, expected: dict[str, str], found: dict[str, str]) -> None:
    """Raise `DataIntegrityError` naming `path` unless every published digest in `expected` matches."""
    for algorithm, digest in expected.items():
        if found.get(algorithm) != digest:
            raise DataIntegrityError(
                f"{path} has {algorithm} {found.get(algorithm)}, expected {digest}: the file is corrupt, "
                "truncated or not the official one (a copy of your own in the same format loads with "
                "verify_data: false)"
            )


def _urlopen(url: str):
    return urllib.request.urlopen(url, timeout=60)


def download_file(
    url: str, target: str | os.PathLike, md5: str, *, opener: Callable[[str], Any] | None = None
) -> Path:
    """Download `url` to `target`, checked against its published `md5`.

    The bytes go to a temporary file in the target's folder, which is renamed to `target` only when
    its md5 matches; on any failure the partial file is removed and `target` is untouched.

    Args:
        opener: `opener(url)` returns a binary file-like context manager (default `urllib`);
            injectable for offline tests.

    Raises:
        DataNotFoundError: the download failed (e.g. offline); the message says where to put the file.
        DataIntegrityError: the md5 of the download is wrong.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    opener = _urlopen if opener is None else opener

    def offline(err: BaseException) -> DataNotFoundError:
        return DataNotFoundError(
            f"could not download {url} ({type(err).__name__}: {err}). Without network access, put "
            f"{target.name} in {target.parent} by hand."
        )

    network_errors = (urllib.error.URLError, http.client.HTTPException, OSError)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as f:
            try:
                response = opener(url)
            except network_errors as err:
                raise offline(err) from err
            with response:
                while True:
                    try:
                        block = response.read(1 << 20)
                    except network_errors as err:
                        raise offline(err) from err
                    if not block:
                        break
                    digest.update(block)
                    f.write(block)  # a local write error (disk full) propagates as itself
        if digest.hexdigest() != md5:
            raise DataIntegrityError(
                f"downloaded {url} has md5 {digest.hexdigest()}, expected {md5}; the download is "
                f"incomplete or altered, nothing was saved to {target}"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)  # no-op after a successful rename
    return target


# The globals a pickled dict of numpy arrays may name; anything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} (only numpy arrays and containers)"
            )
        return super().find_class(module, name)


def load_pickle(source: str | os.PathLike | bytes | io.IOBase, name: str, encoding: str = "bytes") -> Any:
    """Unpickle a file (a path, its bytes, or a binary file object) that holds containers, strings
    and numpy arrays only; anything else, or a damaged file, is a `DataIntegrityError` naming `name`.

    `encoding="bytes"` reads Python 2 pickles (the CIFAR batches) with bytes keys; "latin1" reads the
    Python 2 numpy pickles of mini-ImageNet and tieredImageNet with str keys.
    """
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return _SafeUnpickler(f, encoding=encoding).load()
        f = io.BytesIO(source) if isinstance(source, bytes) else source
        return _SafeUnpickler(f, encoding=encoding).load()
    except FileNotFoundError:
        raise DataNotFoundError(f"file not found: {name}") from None
    except Exception as err:  # pickle raises many types on damaged input (EOF, Unpickling, Value, ...)
        raise DataIntegrityError(
            f"cannot read {name} ({type(err).__name__}: {err}); the file is corrupt"
        ) from err


def source_key(paths: Iterable[str | os.PathLike]) -> list[list]:
    """[name, size, mtime_ns] of each source file: what a cache entry is keyed by."""
    key = []
    for p in paths:
        stat = Path(p).stat()
        key.append([Path(p).name, stat.st_size, stat.st_mtime_ns])
    return key


def prepare_cache_dir(cache_dir: Path, what: str = "cache folder") -> None:
    """Create the cache folder and check it is writable, before spending time decoding.

    Raises:
        PathError: the folder cannot be created or written; the message names it as `what`.
    """
    hint = "set XDG_CACHE_HOME to a writable folder (in Python: pass cache_dir=...)"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathError(f"cannot create the {what} {cache_dir} ({err.strerror}); {hint}") from err
    if not os.access(cache_dir, os.W_OK):
        raise PathError(f"the {what} {cache_dir} is not writable; {hint}")


def _cache_file(cache_dir: Path, stem: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{stem}-{digest}.pt"


def save_atomically(cache_file: Path, blob: dict) -> None:
    """`torch.save(blob)` to a temporary file in the same folder, then `os.replace`, so that a crash
    or a concurrent reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as public as the data it holds
        os.replace(tmp, cache_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached(
    cache_dir: Path, stem: str, key: dict, build: Callable[[], dict], check: Callable[[dict], bool]
) -> dict:
    """`build()` once, then the same dict from the cache file of `key`.

    Args:
        cache_dir: the folder of the cache files (created if needed).
        stem: the start of the cache file's name (the data set's name).
        key: what the contents depend on (JSON-serialisable): the `source_key` of the files and the
            loader's settings; stored in the file and compared on a hit.
        build: decodes the sources into a dict of tensors, lists, strings and numbers.
        check: whether a loaded dict has the expected fields, types and shapes.

    Returns:
        The dict `build` returned (from the cache on later calls), with `cache_file` added.

    Raises:
        DataIntegrityError: a cache file is damaged or holds something else; the message says to
            delete it.
    """
    prepare_cache_dir(cache_dir)
    cache_file = _cache_file(cache_dir, stem, key)
    if cache_file.exists():

        def corrupt(reason: str) -> DataIntegrityError:
            return DataIntegrityError(
                f"cache file {cache_file} is corrupt or incomplete ({reason}); delete it and load again to "
                "rebuild it from the data files"
            )

        try:
            blob = torch.load(cache_file, weights_only=True, map_location="cpu")
        except Exception as err:  # torch.load raises many types on a damaged file
            raise corrupt(f"{type(err).__name__}: {err}") from err
        if not isinstance(blob, dict) or json.loads(json.dumps(blob.get("key"))) != json.loads(
            json.dumps(key)
        ):
            raise corrupt("its key does not match the data files")
        if not check(blob):
            raise corrupt("unexpected contents")
        blob["cache_file"] = str(cache_file)
        return blob
    blob = dict(build())
    blob["key"] = key
    if not check(blob):
        raise AssertionError(f"the decoded data for {stem} fail their own check")  # a loader bug
    save_atomically(cache_file, blob)
    blob["cache_file"] = str(cache_file)
    return blob


def resize_images(x: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """uint8 images (M, C, S, S) -> uint8 (M, C, size, size), resized with antialiased bilinear
    interpolation in chunks (the same images come out whatever the chunk); `x` itself if S == size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].to(torch.float32)
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def few_shot_dataset(
    x: Tensor,
    y: Tensor,
    class_names: list[str],
    split_names: tuple[Iterable[str], Iterable[str], Iterable[str]],
    image_size: int,
) -> FewShotDataset:
    """A `FewShotDataset` from uint8 images (M, C, S, S), their class ids and the class names of the
    meta-train / val / test splits; the images are resized to `image_size` where S differs.

    Raises:
        DataIntegrityError: a split names a class the data do not hold, or a class is in two splits.
    """
    index = {name: i for i, name in enumerate(class_names)}
    ids = []
    for part, names in zip(ClassSplits._fields, split_names):
        names = list(names)
        missing = [n for n in names if n not in index]
        if missing:
            raise DataIntegrityError(
                f"the meta-{part} classes {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} are "
                "not in the data"
            )
        ids.append(torch.tensor([index[n] for n in names], dtype=torch.long))
    every = torch.cat(ids)
    if every.unique().numel() != every.numel():
        raise DataIntegrityError("a class is in two of the meta-train / val / test splits")
    x = resize_images(x, image_size)
    return FewShotDataset(x, y, list(class_names), ClassSplits(*ids), tuple(x.shape[1:]))
