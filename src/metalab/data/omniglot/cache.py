"""The cache of decoded Omniglot archives: one `torch.save` file per archive and image size.

Decoding both archives takes seconds; loading the cache a fraction of one. A cache file is named
`<archive>-<first 16 hex of the zip's sha256>-<S>px-v<format>.pt` and holds the sha256, the image
size and the decoded tensors, all checked on load, so that a changed archive, another image size or
a damaged file is never served. Files are written atomically.

The cache lives in the user's cache folder (`$XDG_CACHE_HOME/metalab/omniglot`, else
`~/.cache/metalab/omniglot`). The data folder itself is never written to: it may be a shared or
read-only copy (running as root would otherwise write into it). Keyed by the archive's sha256, copies
in different folders share one cache entry and a changed archive never hits a stale one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..dataset import DataIntegrityError, DataNotFoundError
from ..store import cache_dir_for, file_digests, prepare_cache_dir, save_atomically
from .archive import ARCHIVES, OmniglotArchive, _check_counts, read_omniglot_zip

__all__ = ["load_omniglot_archive"]

_CACHE_FORMAT = 1  # bump when the decoding changes, so old caches are not reused


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
        and isinstance(images, Tensor)
        and images.dtype == torch.uint8
        and tuple(images.shape[1:]) == (image_size, image_size)
        and isinstance(character, Tensor)
        and character.dtype == torch.long
        and character.shape == images.shape[:1]
        and isinstance(characters, list)
        and all(isinstance(c, str) for c in characters)
        and (character.numel() == 0 or 0 <= int(character.min()) <= int(character.max()) < len(characters))
    )
    if not ok:
        raise corrupt("contents do not match the archive or the image size")
    return OmniglotArchive(images, character, characters)


def _write_cache(cache_file: Path, archive: OmniglotArchive, sha256: str, image_size: int) -> None:
    """Write atomically (see `save_atomically`): a crash or a concurrent reader never sees a
    half-written cache."""
    blob = {
        "format": _CACHE_FORMAT,
        "sha256": sha256,
        "image_size": image_size,
        "images": archive.images,
        "character": archive.character,
        "characters": list(archive.characters),
    }
    save_atomically(cache_file, blob)


def load_omniglot_archive(
    path: str | os.PathLike,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    verify_counts: bool = True,
) -> OmniglotArchive:
    """`read_omniglot_zip`, cached: decoded once, then loaded from the cache file (see the module).

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
    cache_dir = cache_dir_for("omniglot", cache_dir)
    prepare_cache_dir(cache_dir, "Omniglot cache folder")
    sha256 = file_digests(path, ("sha256",))["sha256"]
    root = path.name.removesuffix(".zip")
    cache_file = cache_dir / f"{root}-{sha256[:16]}-{image_size}px-v{_CACHE_FORMAT}.pt"
    if cache_file.exists():
        archive = _read_cache(cache_file, sha256, image_size)
        if verify_counts and root in ARCHIVES:
            counts = torch.bincount(archive.character, minlength=len(archive.characters)).tolist()
            _check_counts(path, archive.characters, counts, ARCHIVES[root])
        return archive
    archive = read_omniglot_zip(path, image_size=image_size, verify_counts=verify_counts)
    _write_cache(cache_file, archive, sha256, image_size)
    return archive
