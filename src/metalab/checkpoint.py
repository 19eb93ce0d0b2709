"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`, errors that say what is wrong.

A checkpoint is a dict of plain data and tensors: the learner's state, the optimizer's and the LR
schedule's states, the RNG states, the iteration and the resolved config. It is written to a temporary
file in the same folder, flushed to disk, then renamed over the old one, so a crash at any moment
leaves either the old checkpoint or the new one, never a broken or missing file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "atomic_write_text", "device_free"]

FORMAT = "metalab-checkpoint-1"


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not a metalab checkpoint."""


def _atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Whatever happened (disk full, Ctrl-C), the previous file at `path` is untouched.
        Path(tmp).unlink(missing_ok=True)
        raise


def device_free(state: Any) -> Any:
    """`state` (nested dicts, lists, tuples) with every tensor copied to the CPU, so that a checkpoint
    written on a GPU loads on any machine; `load_checkpoint` reads it onto the CPU and the caller
    moves what it builds to its own device."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        out = type(state)((k, device_free(v)) for k, v in state.items())
        if hasattr(state, "_metadata"):  # a module's state_dict: its layers' versions
            out._metadata = state._metadata
        return out
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):
        return type(state)(device_free(v) for v in state)
    return state


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temporary file + rename)."""
    _atomic_replace(Path(path), lambda f: torch.save({"format": FORMAT, **state}, f))


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_replace(Path(path), lambda f: f.write(text.encode()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or not a metalab checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a metalab checkpoint")
    return state
