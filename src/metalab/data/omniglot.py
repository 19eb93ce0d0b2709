"""Omniglot from the two official zips, decoded once into uint8 tensors, cached, and split by class.

The archives `images_background.zip` (30 alphabets, 964 characters) and `images_evaluation.zip`
(20 alphabets, 659 characters), 20 drawings of every character, are read straight out of the zip:
entry names are checked so that nothing can point outside the archive root, every PNG is decoded
with Pillow, resized once to `image_size` x `image_size` and inverted so that ink is 255 and
background 0. The result is cached per archive, keyed by the archive's sha256 and the image size.

Two splits of the characters into meta-train / meta-val / meta-test classes (see docs/omniglot.md):

- "vinyals" (Vinyals et al. 2016, as used by MAML and Prototypical Networks): 1,028 / 172 / 423
  characters, each rotated by 0, 90, 180 and 270 degrees into 4 classes.
- "lake" (Lake et al. 2015): background for meta-training (5 alphabets held out for validation),
  evaluation for meta-test, no rotations by default.

References: Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic
program induction", Science 2015; Vinyals et al., "Matching Networks for One Shot Learning",
NeurIPS 2016; Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..tasks.splits import ClassSplits
from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset, to_float

__all__ = [
    "ARCHIVES",
    "DataIntegrityError",
    "DataNotFoundError",
    "FewShotDataset",
    "OmniglotArchive",
    "VINYALS_TEST_ALPHABETS",
    "VINYALS_VAL_ALPHABETS",
    "download_omniglot",
    "load_omniglot",
    "load_omniglot_archive",
    "read_omniglot_zip",
    "to_float",
]


class _ArchiveSpec(NamedTuple):
    url: str
    md5: str  # of the official download; other copies are checked by their contents instead
    alphabets: int
    characters: int
    images: int


_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
IMAGES_PER_CHARACTER = 20
ARCHIVES: dict[str, _ArchiveSpec] = {
    "images_background": _ArchiveSpec(
        f"{_BASE_URL}/images_background.zip", "68d2efa1b9178cc56df9314c21c6e718", 30, 964, 19_280
    ),
    "images_evaluation": _ArchiveSpec(
        f"{_BASE_URL}/images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811", 20, 659, 13_180
    ),
}

# The Vinyals split as distributed with the Prototypical Networks code (splits/vinyals/*.txt): the
# validation characters are five whole background alphabets and the test characters twelve whole
# evaluation alphabets plus the last four Gurmukhi characters; everything else is meta-train.
VINYALS_VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
VINYALS_TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)
_VINYALS_TEST_GURMUKHI_FROM = 42  # Gurmukhi/character42..45 are test, character01..41 train
_SPLIT_SIZES = {"vinyals": (1028, 172, 423), "lake": (792, 172, 659)}  # characters, full data only
ROTATIONS = (0, 90, 180, 270)  # degrees counter-clockwise, as np.rot90 / torch.rot90 with k = 0..3

_CACHE_FORMAT = 1  # bump when the decoding changes, so old caches are not reused
_IGNORED_PREFIXES = ("__MACOSX/",)  # resource forks some zip tools add; never image data


# ---------------------------------------------------------------------------------------------
# Reading one archive
# ---------------------------------------------------------------------------------------------


class OmniglotArchive(NamedTuple):
    """The decoded contents of one archive.

    Attributes:
        images: uint8, of shape (M, S, S); ink 255, background 0.
        character: the index into `characters` of every image, of shape (M,), non-decreasing.
        characters: "<archive>/<Alphabet>/<characterNN>", sorted.
    """

    images: Tensor
    character: Tensor
    characters: list[str]


def _check_entry_name(archive: Path, name: str) -> None:
    """Reject entry names that are absolute or could step outside the folder they unpack into."""
    parts = name.split("/")
    unsafe = (
        name.startswith("/")
        or "\\" in name  # a Windows separator hides `..\` or `C:\` from the checks below
        or "\x00" in name
        or re.match(r"^[A-Za-z]:", name) is not None
        or any(p in ("..", ".") for p in parts)
    )
    if unsafe:
        raise DataIntegrityError(
            f"{archive}: unsafe entry {name!r} (absolute, '..', or otherwise escaping the archive "
            "root); refusing to read this archive"
        )


def _index_entries(
    archive: Path, zf: zipfile.ZipFile, root: str
) -> tuple[list[str], list[list[zipfile.ZipInfo]]]:
    """Group the PNG entries by character, everything sorted by name.

    Returns:
        `(characters, entries)`: character names "<root>/<Alphabet>/<character>" and, for each,
        its PNG entries sorted by file name.
    """
    by_character: dict[str, list[zipfile.ZipInfo]] = {}
    for info in zf.infolist():
        name = info.filename
        _check_entry_name(archive, name)
        if name.startswith(_IGNORED_PREFIXES) or name.rsplit("/", 1)[-1].startswith("."):
            continue
        parts = name.rstrip("/").split("/")
        if parts[0] != root:
            raise DataIntegrityError(
                f"{archive}: entry {name!r} is outside the archive root {root + '/'!r}; expected the "
                f"layout {root}/<Alphabet>/<characterNN>/<file>.png"
            )
        if info.is_dir():
            if len(parts) > 3:
                raise DataIntegrityError(f"{archive}: unexpected folder {name!r} below a character folder")
            continue
        if len(parts) != 4 or not name.lower().endswith(".png"):
            raise DataIntegrityError(
                f"{archive}: unexpected entry {name!r}; expected {root}/<Alphabet>/<characterNN>/<file>.png"
            )
        by_character.setdefault("/".join(parts[:3]), []).append(info)
    characters = sorted(by_character)
    return characters, [sorted(by_character[c], key=lambda i: i.filename) for c in characters]


def _check_counts(archive: Path, characters: list[str], counts: list[int], spec: _ArchiveSpec) -> None:
    """Compare the alphabet, character and image counts with the official ones."""
    alphabets = {c.split("/")[1] for c in characters}
    found = (len(alphabets), len(characters), sum(counts))
    expected = (spec.alphabets, spec.characters, spec.images)
    if found != expected:
        raise DataIntegrityError(
            f"{archive}: expected {expected[0]} alphabets / {expected[1]} characters / {expected[2]:,} PNGs, "
            f"found {found[0]} / {found[1]} / {found[2]:,}; is this the complete official archive?"
        )
    wrong = [(c, n) for c, n in zip(characters, counts) if n != IMAGES_PER_CHARACTER]
    if wrong:
        raise DataIntegrityError(
            f"{archive}: {wrong[0][0]} has {wrong[0][1]} images, expected {IMAGES_PER_CHARACTER} "
            f"({len(wrong)} character(s) affected)"
        )


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """One PNG (any mode; Omniglot's are 1-bit, ink black) -> uint8 (S, S) with ink 255."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # Pillow decodes lazily; force it here so errors surface inside the caller's try
        # Resizing a 1-bit image would fall back to nearest neighbour; greyscale first gives a
        # properly filtered (anti-aliased) downsample.
        small = img.convert("L").resize((image_size, image_size), Image.LANCZOS)
        return 255 - np.asarray(small, dtype=np.uint8)


def read_omniglot_zip(path: str | os.PathLike, *, image_size: int = 28, verify_counts: bool = True) -> OmniglotArchive:
    """Decode every PNG of one Omniglot archive, without extracting it to disk.

    The archive root is the file's stem (`images_background.zip` -> `images_background/`). Every
    entry name is checked before anything is decoded; any error leaves nothing half-built.

    Args:
        path: `images_background.zip` or `images_evaluation.zip` (or a small archive in that layout).
        image_size: S, the side the images are resized to, once.
        verify_counts: check the official alphabet / character / image counts and 20 images per
            character (only for the two official archive names). Turn off for small test archives.

    Returns:
        An `OmniglotArchive`: images uint8 (M, S, S), ink 255, background 0.

    Raises:
        DataNotFoundError: the file does not exist.
        DataIntegrityError: not a zip, truncated, CRC error, undecodable PNG, unsafe entry name,
            wrong layout or wrong counts; the message names the archive (and the entry).

    References: Lake et al., Science 2015 (the data set).
    """
    path = Path(path)
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not path.is_file():
        raise DataNotFoundError(f"Omniglot archive not found: {path}")
    root = path.name.removesuffix(".zip")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataIntegrityError(f"{path}: not a readable zip file ({err}); the archive is corrupt or truncated") from err
    with zf:
        characters, entries = _index_entries(path, zf, root)
        counts = [len(e) for e in entries]
        if verify_counts and root in ARCHIVES:
            _check_counts(path, characters, counts, ARCHIVES[root])
        if not characters:
            raise DataIntegrityError(f"{path}: no PNG files found under {root}/<Alphabet>/<characterNN>/")
        images = np.empty((sum(counts), image_size, image_size), dtype=np.uint8)
        k = 0
        for group in entries:
            for info in group:
                try:
                    images[k] = _decode_png(zf.read(info), image_size)
                # BadZipFile: CRC mismatch; zlib.error / EOFError: broken deflate stream or truncated
                # data; OSError (incl. UnidentifiedImageError), SyntaxError, ValueError: Pillow.
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError, ValueError) as err:
                    raise DataIntegrityError(
                        f"{path}: cannot read entry {info.filename!r} ({type(err).__name__}: {err}); "
                        "the archive is corrupt or truncated"
                    ) from err
                k += 1
    character = torch.arange(len(characters)).repeat_interleave(torch.tensor(counts))
    return OmniglotArchive(torch.from_numpy(images), character, characters)


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_cache_dir(data_dir: Path) -> Path:
    """The user's cache folder (`$XDG_CACHE_HOME/metalab/omniglot`, else `~/.cache/...`).

    The data folder itself is never written to: it may be a shared or read-only copy (running as
    root would otherwise write into it). Cache files are keyed by the archive's sha256, so copies
    in different folders share one cache entry and a changed archive never hits a stale one.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "metalab" / "omniglot"


def _prepare_cache_dir(cache_dir: Path) -> None:
    """Create the cache folder and check it is writable, before spending time decoding."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the Omniglot cache folder {cache_dir} ({err}); pass cache_dir=...") from err
    if not os.access(cache_dir, os.W_OK):
        raise OSError(f"the Omniglot cache folder {cache_dir} is not writable; pass cache_dir=...")


def _read_cache(cache_file: Path, sha256: str, image_size: int) -> OmniglotArchive:
    """Load and check a cache file; anything unexpected is an error telling the user to delete it."""

    def corrupt(reason: str) -> DataIntegrityError:
        return DataIntegrityError(
            f"Omniglot cache file {cache_file} is corrupt or incomplete ({reason}); delete it and load again "
            "to rebuild it from the archive"
        )

    try:
        blob = torch.load(cache_file, weights_only=True, map_location="cpu")
    except Exception as err:  # torch.load raises many types on a damaged file (pickle, zip, EOF, ...)
        raise corrupt(f"{type(err).__name__}: {err}") from err
    if not isinstance(blob, dict) or blob.get("format") != _CACHE_FORMAT:
        raise corrupt("unknown layout")
    images, character, characters = blob.get("images"), blob.get("character"), blob.get("characters")
    ok = (
        blob.get("sha256") == sha256
        and blob.get("image_size") == image_size
        and isinstance(images, Tensor) and images.dtype == torch.uint8
        and tuple(images.shape[1:]) == (image_size, image_size)
        and isinstance(character, Tensor) and character.dtype == torch.long
        and character.shape == images.shape[:1]
        and isinstance(characters, list) and all(isinstance(c, str) for c in characters)
        and (character.numel() == 0 or 0 <= int(character.min()) <= int(character.max()) < len(characters))
    )
    if not ok:
        raise corrupt("contents do not match the archive or the image size")
    return OmniglotArchive(images, character, characters)


def _write_cache(cache_file: Path, archive: OmniglotArchive, sha256: str, image_size: int) -> None:
    """Write atomically: a temporary file in the same folder, then `os.replace`, so a crash or a
    concurrent reader never sees a half-written cache."""
    blob = {
        "format": _CACHE_FORMAT,
        "sha256": sha256,
        "image_size": image_size,
        "images": archive.images,
        "character": archive.character,
        "characters": list(archive.characters),
    }
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


def load_omniglot_archive(
    path: str | os.PathLike,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    verify_counts: bool = True,
) -> OmniglotArchive:
    """`read_omniglot_zip`, cached: decoded once, then loaded from `<cache_dir>/<name>-<sha256>-<S>px.pt`.

    Args:
        path: the archive.
        image_size: S.
        cache_dir: where the cache lives; default `$XDG_CACHE_HOME/metalab/omniglot`
            (normally `~/.cache/metalab/omniglot`); the data folder is never written to.
        verify_counts: as in `read_omniglot_zip`; also applied to a cache hit.

    Returns:
        An `OmniglotArchive`, images uint8 (M, S, S).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Omniglot archive not found: {path}")
    cache_dir = _default_cache_dir(path.parent) if cache_dir is None else Path(cache_dir)
    _prepare_cache_dir(cache_dir)
    sha256 = _sha256(path)
    cache_file = cache_dir / f"{path.name.removesuffix('.zip')}-{sha256[:16]}-{image_size}px-v{_CACHE_FORMAT}.pt"
    if cache_file.exists():
        archive = _read_cache(cache_file, sha256, image_size)
        root = path.name.removesuffix(".zip")
        if verify_counts and root in ARCHIVES:
            counts = torch.bincount(archive.character, minlength=len(archive.characters)).tolist()
            _check_counts(path, archive.characters, counts, ARCHIVES[root])
        return archive
    archive = read_omniglot_zip(path, image_size=image_size, verify_counts=verify_counts)
    _write_cache(cache_file, archive, sha256, image_size)
    return archive


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def _missing_message(name: str, data_dir: Path) -> str:
    return (
        f"Omniglot archive {name}.zip not found at {data_dir / (name + '.zip')}. Put the official "
        f"{name}.zip (from {ARCHIVES[name].url}) in {data_dir}, or run "
        f"`metalab data download omniglot --data-dir {data_dir}` to fetch it."
    )


def _download_one(url: str, target: Path, md5: str, opener: Callable[[str], object]) -> None:
    """Stream `url` into a temporary file next to `target`, check its md5, then rename it."""

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


def _urlopen(url: str):
    return urllib.request.urlopen(url, timeout=60)


def download_omniglot(
    root: str | os.PathLike, *, force: bool = False, opener: Callable[[str], object] | None = None
) -> Path:
    """Download `images_background.zip` and `images_evaluation.zip` into `root`, md5-checked.

    Each file is streamed into a temporary file in `root`, its md5 compared with the official one,
    and only then renamed into place; on a mismatch nothing is left behind. Archives already in
    `root` are kept (they may be a non byte-identical copy, whose contents `load_omniglot` checks)
    unless `force`.

    Args:
        root: the data folder, created if needed.
        force: download again even if the archive exists.
        opener: `opener(url)` returns a binary file-like context manager (default `urllib`);
            injectable for offline tests.

    Returns:
        `root` as a `Path`.

    Raises:
        DataNotFoundError: the download failed (e.g. offline).
        DataIntegrityError: the md5 of a download is wrong.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    opener = _urlopen if opener is None else opener
    for name, spec in ARCHIVES.items():
        target = root / f"{name}.zip"
        if force or not target.exists():
            _download_one(spec.url, target, spec.md5, opener)
    return root


# ---------------------------------------------------------------------------------------------
# The splits
# ---------------------------------------------------------------------------------------------


def _split_of(split: str, character: str) -> int:
    """0 (train), 1 (val) or 2 (test) for "<archive>/<Alphabet>/<characterNN>"."""
    archive, alphabet, name = character.split("/")
    if split == "vinyals":
        if alphabet in VINYALS_TEST_ALPHABETS:
            return 2
        if alphabet == "Gurmukhi":
            number = re.search(r"\d+$", name)
            return 2 if number is not None and int(number.group()) >= _VINYALS_TEST_GURMUKHI_FROM else 0
        return 1 if alphabet in VINYALS_VAL_ALPHABETS else 0
    # lake: evaluation is meta-test; the same five background alphabets as Vinyals' are meta-val.
    if archive == "images_evaluation":
        return 2
    return 1 if alphabet in VINYALS_VAL_ALPHABETS else 0


def _rotate_all(images: Tensor, character: Tensor) -> tuple[Tensor, Tensor]:
    """Materialise the 4 rotations of every image as 4 classes per character.

    Args:
        images: (M, S, S); character: (M,), non-decreasing.

    Returns:
        images (4M, S, S) and class ids `4 * character + r` (4M,), grouped by class.
    """
    stacked = torch.stack([torch.rot90(images, k, dims=(1, 2)) for k in range(len(ROTATIONS))], dim=1)
    labels = character[:, None] * len(ROTATIONS) + torch.arange(len(ROTATIONS))
    order = torch.argsort(labels.flatten(), stable=True)  # keep each class's images contiguous
    return stacked.flatten(0, 1)[order], labels.flatten()[order]


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
        split: "vinyals" (1,028 / 172 / 423 characters) or "lake" (792 / 172 / 659); see docs/omniglot.md.
        image_size: S; images are resized once to S x S.
        cache_dir: see `load_omniglot_archive`.
        rotations: make 4 classes of every character by rotating 0/90/180/270 degrees; default
            True for "vinyals", False for "lake". All rotations of a character share its split.
        download: first fetch missing archives with `download_omniglot`.
        verify_counts: check the official counts and, for the full data, the split sizes.

    Returns:
        `FewShotDataset` with x uint8 (M, 1, S, S), ink 255; M = 129,840 for "vinyals"
        (1,623 characters x 4 rotations x 20) and 32,460 for "lake".

    Raises:
        DataNotFoundError: an archive is missing; the message says where to put it.
        DataIntegrityError: an archive or cache file is corrupt or laid out wrongly.

    Example:
        >>> data = load_omniglot("data/omniglot")                         # doctest: +SKIP
        >>> batch = data.sampler("train", ways=5, shots=1, queries=15, seed=0).sample(32)  # doctest: +SKIP

    References: Vinyals et al., NeurIPS 2016 (the "vinyals" split, with the character lists of
    Snell et al., NeurIPS 2017); Lake et al., Science 2015 (the "lake" split).
    """
    if split not in _SPLIT_SIZES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_SIZES)}, got {split!r}")
    data_dir = Path(data_dir)
    if download:
        download_omniglot(data_dir)
    for name in ARCHIVES:
        if not (data_dir / f"{name}.zip").is_file():
            raise DataNotFoundError(_missing_message(name, data_dir))
    cache_dir = _default_cache_dir(data_dir) if cache_dir is None else Path(cache_dir)
    parts = [
        load_omniglot_archive(data_dir / f"{name}.zip", image_size=image_size, cache_dir=cache_dir, verify_counts=verify_counts)
        for name in ARCHIVES
    ]
    characters = [c for part in parts for c in part.characters]
    offsets = np.cumsum([0] + [len(part.characters) for part in parts[:-1]])
    images = torch.cat([part.images for part in parts])
    character = torch.cat([part.character + int(off) for part, off in zip(parts, offsets)])

    which = torch.tensor([_split_of(split, c) for c in characters])
    sizes = tuple(int((which == s).sum()) for s in range(3))
    if verify_counts and sizes != _SPLIT_SIZES[split]:
        raise DataIntegrityError(
            f"{data_dir}: the {split!r} split gives {sizes} train/val/test characters, expected "
            f"{_SPLIT_SIZES[split]}; are the alphabet folder names the official ones?"
        )
    rotate = (split == "vinyals") if rotations is None else rotations
    if rotate:
        images, y = _rotate_all(images, character)
        class_names = [f"{c}/rot{deg:03d}" for c in characters for deg in ROTATIONS]
        which = which.repeat_interleave(len(ROTATIONS))
    else:
        y, class_names = character, characters
    splits = ClassSplits(*(torch.nonzero(which == s).flatten() for s in range(3)))
    return FewShotDataset(images.unsqueeze(1), y, class_names, splits, (1, image_size, image_size))
