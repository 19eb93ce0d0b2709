"""The cache of decoded Omniglot archives: one `torch.save` file per archive and image size.

Decoding both archives takes seconds; loading the cache a fraction of one. A cache file is named
`<archive>-<first 16 hex of the zip's sha256>-<S>px-v<format>.pt` and holds the sha256, the image
size and the decoded tensors, all checked on load, so that a changed archive, another image size or
a damaged file is never served. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ...paths import PathError
from ..dataset import DataIntegrityError, DataNotFoundError
from .archive import ARCHIVES, OmniglotArchive, _check_counts, read_omniglot_zip

__all__ = ["load_omniglot_archive"]

_CACHE_FORMAT = 1  # bump when the decoding changes, so old caches are not reused


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
    hint = "set XDG_CACHE_HOME to a writable folder (in Python: pass cache_dir=...)"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathError(
            f"cannot create the Omniglot cache folder {cache_dir} ({err.strerror}); {hint}"
        ) from err
    if not os.access(cache_dir, os.W_OK):
        raise PathError(f"the Omniglot cache folder {cache_dir} is not writable; {hint}")


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
    cache_dir = _default_cache_dir(path.parent) if cache_dir is None else Path(cache_dir)
    _prepare_cache_dir(cache_dir)
    sha256 = _sha256(path)
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
