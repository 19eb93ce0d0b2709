"""Downloading the two official Omniglot archives, each checked against its published md5."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ...paths import check_output_folder
from ..dataset import DataIntegrityError, DataNotFoundError
from .archive import ARCHIVES

__all__ = ["download_omniglot"]


def _missing_message(name: str, data_dir: Path) -> str:
    """Where a missing archive belongs, where it comes from, and the command that fetches it."""
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
    root = check_output_folder(root, "data folder")
    root.mkdir(parents=True, exist_ok=True)
    opener = _urlopen if opener is None else opener
    for name, spec in ARCHIVES.items():
        target = root / f"{name}.zip"
        if force or not target.exists():
            _download_one(spec.url, target, spec.md5, opener)
    return root
