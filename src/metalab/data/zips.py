"""Reading images straight out of a zip archive, without extracting it, as the Omniglot archives and
the JPEG copy of CIFAR-10 are read.

- `open_zip` opens an archive, or raises one `DataIntegrityError` naming it when it is not a
  readable zip file.
- `is_extra_entry` tells the entries zip tools add beside the data (macOS resource forks under
  `__MACOSX/`, hidden files such as `.DS_Store`), which a reader skips.
- `reading_entry` wraps the reading and decoding of one entry: a CRC mismatch, a broken deflate
  stream, truncated data, an image Pillow cannot decode or a decompression bomb becomes one
  `DataIntegrityError` naming the archive and the entry.
"""

from __future__ import annotations

import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image

from .dataset import DataIntegrityError
from .images import pillow_error

__all__ = ["is_extra_entry", "open_zip", "reading_entry"]

# BadZipFile: CRC mismatch; zlib.error / EOFError: broken deflate stream or truncated data; OSError
# (incl. UnidentifiedImageError), SyntaxError, ValueError, DecompressionBombError (or its warning,
# where warnings are errors): Pillow, or a reader's own limits on an entry.
_ENTRY_ERRORS = (
    zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError, ValueError,
    Image.DecompressionBombError, Image.DecompressionBombWarning,
)  # fmt: skip


def open_zip(path: Path) -> zipfile.ZipFile:
    """The archive at `path`, open for reading (use it as a context manager).

    Raises:
        DataIntegrityError: not a zip file, or truncated; the message names `path`.
    """
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataIntegrityError(
            f"{path}: not a readable zip file ({err}); the archive is corrupt or truncated"
        ) from err


def is_extra_entry(name: str) -> bool:
    """Whether entry `name` is one zip tools add (a `__MACOSX/` resource fork, a hidden file)."""
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith(".")


@contextmanager
def reading_entry(archive: Path, entry: str) -> Iterator[None]:
    """Turn a failure reading or decoding `entry` of `archive` into a `DataIntegrityError` naming both."""
    try:
        yield
    except _ENTRY_ERRORS as err:
        raise DataIntegrityError(
            f"{archive}: cannot read entry {entry!r} ({pillow_error(err)}); the archive is corrupt or "
            "truncated"
        ) from err
