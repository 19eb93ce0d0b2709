"""Reading one official Omniglot archive straight out of its zip, with the zip-safety checks.

The archives `images_background.zip` (30 alphabets, 964 characters) and `images_evaluation.zip`
(20 alphabets, 659 characters), with `EXAMPLES_PER_CLASS` drawings of every character, are read
without extracting them: entry names are checked so that nothing can point outside the archive
root, every PNG is decoded with Pillow, resized once to `image_size` x `image_size` and inverted so
that ink is 255 and background 0.

References: Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic
program induction", Science 2015.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..dataset import DataIntegrityError, DataNotFoundError
from ..zips import is_extra_entry, open_zip, reading_entry
from .splits import EXAMPLES_PER_CLASS

__all__ = ["ARCHIVES", "OmniglotArchive", "read_omniglot_zip"]


class _ArchiveSpec(NamedTuple):
    url: str
    md5: str  # of the official download; other copies are checked by their contents instead
    alphabets: int
    characters: int
    images: int


_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
ARCHIVES: dict[str, _ArchiveSpec] = {
    "images_background": _ArchiveSpec(
        f"{_BASE_URL}/images_background.zip",
        "68d2efa1b9178cc56df9314c21c6e718",
        30,
        964,
        964 * EXAMPLES_PER_CLASS,
    ),
    "images_evaluation": _ArchiveSpec(
        f"{_BASE_URL}/images_evaluation.zip",
        "6b91aef0f799c5bb55b94e3f2daec811",
        20,
        659,
        659 * EXAMPLES_PER_CLASS,
    ),
}


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
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataIntegrityError(
                f"{archive}: entry {name!r} is a symbolic link; refusing to read this archive"
            )
        if is_extra_entry(name):
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
    wrong = [(c, n) for c, n in zip(characters, counts) if n != EXAMPLES_PER_CLASS]
    if wrong:
        raise DataIntegrityError(
            f"{archive}: {wrong[0][0]} has {wrong[0][1]} images, expected {EXAMPLES_PER_CLASS} "
            f"({len(wrong)} character(s) affected)"
        )


# Omniglot's PNGs are 105x105 and about 1 KB; an entry far beyond that is not an Omniglot image,
# and decoding it (a small file can declare a huge image) could exhaust memory.
MAX_ENTRY_BYTES = 1 << 20
MAX_ENTRY_PIXELS = 1 << 22


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """One PNG (any mode; Omniglot's are 1-bit, ink black) -> uint8 (S, S) with ink 255."""
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > MAX_ENTRY_PIXELS:
            raise ValueError(
                f"a {img.width}x{img.height} image, beyond the {MAX_ENTRY_PIXELS:,} pixels allowed"
            )
        img.load()  # Pillow decodes lazily; force it here so errors surface inside the caller's try
        # Resizing a 1-bit image would fall back to nearest neighbour; greyscale first gives a
        # properly filtered (anti-aliased) downsample.
        small = img.convert("L").resize((image_size, image_size), Image.LANCZOS)
        return 255 - np.asarray(small, dtype=np.uint8)


def read_omniglot_zip(
    path: str | os.PathLike, *, image_size: int = 28, verify_counts: bool = True
) -> OmniglotArchive:
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
    with open_zip(path) as zf:
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
                with reading_entry(path, info.filename):
                    if info.file_size > MAX_ENTRY_BYTES:
                        raise ValueError(f"{info.file_size:,} bytes, beyond the {MAX_ENTRY_BYTES:,} allowed")
                    images[k] = _decode_png(zf.read(info), image_size)
                k += 1
    character = torch.arange(len(characters)).repeat_interleave(torch.tensor(counts))
    return OmniglotArchive(torch.from_numpy(images), character, characters)
