"""Notices said once per machine (an optional extra that is missing, say), not on every run.

A notice leaves a marker file under the user's cache folder, `$XDG_CACHE_HOME/metalab/notices/NAME`
(default `~/.cache/...`); deleting the folder brings every notice back. Where the cache folder cannot
be written, notices are said every time rather than never.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["notices_dir", "once_per_machine"]


def notices_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metalab" / "notices"


def once_per_machine(name: str) -> bool:
    """True the first time notice `name` is asked for on this machine (and whenever its marker cannot
    be written), False afterwards."""
    marker = notices_dir() / name
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with open(marker, "x"):
            pass
    except FileExistsError:
        return False
    except OSError:
        return True
    return True
