"""Downloading the two official Omniglot archives, each checked against its published md5."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ...paths import check_output_folder
from ..store import download_file
from .archive import ARCHIVES

__all__ = ["download_omniglot"]


def _missing_message(name: str, data_dir: Path) -> str:
    """Where a missing archive belongs, where it comes from, and the command that fetches it."""
    return (
        f"Omniglot archive {name}.zip not found at {data_dir / (name + '.zip')}. Put the official "
        f"{name}.zip (from {ARCHIVES[name].url}) in {data_dir}, or run "
        f"`metalab data download omniglot --data-dir {data_dir}` to fetch it."
    )


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
    for name, spec in ARCHIVES.items():
        target = root / f"{name}.zip"
        if force or not target.exists():
            download_file(spec.url, target, spec.md5, opener=opener)
    return root
