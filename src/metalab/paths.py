"""Checks of the files and folders a command is given, made before it spends any time: an output
file that is a folder or lies under a file, an output folder that is a file, an input folder that is
missing. Each refusal is a `PathError` naming the option and the path (one line on the command line).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PathError", "check_output_file", "check_output_folder"]


class PathError(OSError, ValueError):
    """A path that cannot serve its purpose (an `OSError` for the file system, a `ValueError` for
    the command line, which reports it in one line)."""


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder among `path`'s parents, if any (nothing can be made below it)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def check_output_folder(path: str | os.PathLike, option: str) -> Path:
    """`path` as a folder to write into (made later, with its parents, where missing).

    Raises:
        PathError: `path` is a file, or lies under one.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{option} {path} is a file, not a folder")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise PathError(f"{option} {path}: {blocking} is a file, not a folder")
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """`path` as a file to write (its folder made later where missing).

    Raises:
        PathError: `path` is a folder, or lies under a file.
    """
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{option} {path} is a folder; give a file name")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise PathError(f"{option} {path}: {blocking} is a file, not a folder")
    return path
