"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`, errors that say what is wrong.

A checkpoint is a dict of plain data and tensors: the learner's state, the optimizer's and the LR
schedule's states, the RNG states, the iteration and the resolved config. It is written to a temporary
file in the same folder, flushed to disk, then renamed over the old one, so a crash at any moment
leaves either the old checkpoint or the new one, never a broken or missing file. The file gets the
mode an ordinary new file would (0666 less the umask), or keeps the mode of the file it replaces. A
write that fails (disk full, quota, I/O error) raises `WriteError` naming the file and the reason;
the previous file is intact and the temporary file is removed. Temporary files a killed process
leaves behind match `TEMP_FILE` and are removed by `remove_temp_files` when the next writer of the
folder starts.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "WriteError",
    "TEMP_FILE",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_text",
    "atomic_write_bytes",
    "state_error",
    "device_free",
    "file_mode",
    "remove_temp_files",
    "write_error",
    "non_finite",
    "state_mismatch",
    "optimizer_state_mismatch",
]

FORMAT = "metalab-checkpoint-1"


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not a metalab checkpoint."""


class WriteError(CheckpointError, OSError):
    """A file that could not be written (disk full, over quota, an I/O error); the file's previous
    version is intact and no temporary file is left. `errno` is the system's error number where known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


# The temporary files `_atomic_replace` makes: "." + the file's name + mkstemp's 8 random characters.
TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _umask() -> int:
    try:  # Linux: read without changing it (os.umask sets it for every thread while it reads it)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(path: Path) -> int:
    """The mode a file written at `path` gets: that of the file it replaces, else 0666 less the umask
    (what `open(path, "w")` gives a new file)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def write_error(path: Path, error: BaseException) -> WriteError:
    """`error` from writing `path` as one line: the system's reason (e.g. "No space left on device")."""
    if isinstance(error, OSError):
        reason = error.strerror or str(error) or type(error).__name__
        code = error.errno
    else:  # torch.save's "[enforce fail at inline_container.cc:...] ... file write failed"
        reason, code = f"the write failed ({_first_line(error)})", None
        try:
            free = shutil.disk_usage(path.parent).free
            reason += f"; {free / 2**20:,.1f} MiB free on its disk"
        except OSError:
            pass
    return WriteError(f"could not write {path}: {reason}", code)


def _is_write_failure(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("inline_container" in text or "file write failed" in text)


def _atomic_replace(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = file_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)  # mkstemp makes it 0600
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # Whatever happened (disk full, Ctrl-C), the previous file at `path` is untouched.
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass  # the write's own error is the one to report
        if _is_write_failure(e):
            raise write_error(path, e) from None
        raise


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files interrupted atomic writes left in `folder` (only safe while no
    other process writes there: a run folder's lock says so); returns those removed."""
    removed = []
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if TEMP_FILE.match(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_replace(Path(path), lambda f: f.write(data))


# What every checkpoint holds, and what a resumption needs besides: key -> (type, what it is).
_FOR_EVALUATION = {"config": (dict, "the resolved config"), "learner": (dict, "the learner's state"),
                   "iteration": (int, "the iteration")}  # fmt: skip
_FOR_RESUMING = {"optimizer": (dict, "the optimizer's state"), "schedule": (dict, "the schedule's state"),
                 "rng": (dict, "the random number generators' states")}  # fmt: skip


def load_checkpoint(path: str | Path, *, resuming: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, checking it before anything uses it: every
    entry of the file against its CRC, then that it holds what evaluation (or, `resuming`, a
    resumption) reads, each of the right type.

    Raises:
        CheckpointError: the file is missing, truncated, damaged or not a metalab checkpoint, or it
            holds objects whose loading would run code; the message says which.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the checkpoint file in it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # torch.load itself does not check the CRCs
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from None
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: its entry {damaged!r} fails its CRC check")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(
                f"checkpoint {path} refused: loading it would run code (it holds objects other than "
                f"tensors and plain data: {_first_line(e)})"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from None
    written_by = state.get("format") if isinstance(state, dict) else None
    if isinstance(written_by, str) and written_by.startswith("metalab-checkpoint-") and written_by != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is in format {written_by!r}, written by a newer metalab; this one reads "
            f"{FORMAT!r}: upgrade metalab to read it"
        )
    if written_by != FORMAT:
        raise CheckpointError(f"{path} is not a metalab checkpoint")
    wanted = {**_FOR_EVALUATION, **(_FOR_RESUMING if resuming else {})}
    for key, (kind, what) in wanted.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r} ({what})")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(
                f"checkpoint {path}: {key!r} ({what}) is a {type(state[key]).__name__}, not a {kind.__name__}"
            )
    if state["iteration"] < 0:
        raise CheckpointError(f"checkpoint {path}: 'iteration' is {state['iteration']}, not >= 0")
    for key, what in (("seconds", "the training time"), ("cpu_seconds", "the training CPU time")):
        value = state.get(key, 0.0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise CheckpointError(f"checkpoint {path}: {key!r} ({what}) is {value!r}, not >= 0")
    return state


def non_finite(weights: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor in `weights` holding a NaN or an infinity."""
    for name, value in weights.items():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            return name
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def state_error(error: BaseException) -> str:
    """The informative line of an error from loading a saved state: `load_state_dict` opens with
    "Error(s) in loading state_dict for X:" and names the first mismatch on the next line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
        return lines[1]
    return lines[0] if lines else type(error).__name__


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if isinstance(value, dict):
        return "mapping"
    if torch.is_tensor(value):
        return "tensor"
    return type(value).__name__


def state_mismatch(fresh: Any, saved: Any, where: str) -> str | None:
    """Where a saved state (an optimizer's param groups, a schedule's state) differs in kind from
    the same object's freshly made state: the first entry holding another type, a list of
    another length or a tensor of another shape (a number where a number was is fine). `load_state_dict`
    takes such states without a word, and the first step after them fails deep inside torch."""
    if fresh is None or saved is None:
        return None
    kinds = _kind(fresh), _kind(saved)
    if kinds[0] != kinds[1]:
        return f"{where} is {_shown(saved)}, where a {kinds[0]} was expected"
    if kinds[0] == "mapping":
        for key in fresh.keys() & saved.keys():
            problem = state_mismatch(fresh[key], saved[key], f"{where}[{key!r}]")
            if problem:
                return problem
    elif kinds[0] == "sequence":
        if len(fresh) != len(saved):
            return f"{where} has {len(saved)} entries, where {len(fresh)} were expected"
        for i, (a, b) in enumerate(zip(fresh, saved)):
            problem = state_mismatch(a, b, f"{where}[{i}]")
            if problem:
                return problem
    elif kinds[0] == "tensor" and fresh.shape != saved.shape:
        return f"{where} has shape {tuple(saved.shape)}, where {tuple(fresh.shape)} was expected"
    return None


def optimizer_state_mismatch(optimizer: torch.optim.Optimizer, saved: dict) -> str | None:
    """Before `optimizer.load_state_dict(saved)`: the first per-parameter state in `saved` that does
    not fit its parameter (a moment of another shape, a step count that is not a number)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [
        i
        for group in saved.get("param_groups", [])
        if isinstance(group, dict)
        for i in group.get("params", [])
    ]
    if len(ids) != len(params):
        return f"the optimizer's state holds {len(ids)} parameters, this run's optimizer {len(params)}"
    by_id = dict(zip(ids, params))
    state = saved.get("state", {})
    if not isinstance(state, dict):
        return f"the optimizer's state is {_shown(state)}, not a mapping"
    for i, values in state.items():
        if i not in by_id or not isinstance(values, dict):
            return f"the optimizer's state of parameter {i!r} is {_shown(values)}, not a parameter's state"
        for key, value in values.items():
            where = f"optimizer state {key!r} of parameter {i}"
            if torch.is_tensor(value):
                if value.dim() > 0 and value.shape != by_id[i].shape:
                    return f"{where} has shape {tuple(value.shape)}, the parameter {tuple(by_id[i].shape)}"
            elif _kind(value) != "number":
                return f"{where} is {_shown(value)}, not a number or a tensor"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
