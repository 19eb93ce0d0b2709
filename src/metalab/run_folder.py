"""A run folder's writer lock, its stale temporary files and its record of the class split.

**One writer at a time.** A process that trains into a run folder (`metalab train`, `--resume`,
each run of a sweep; under torch.distributed only rank 0, the one that writes) holds an advisory
lock on `RUN/.lock` (`fcntl.flock`, taken without waiting). A second writer is refused at once with
one line naming the holder, read from the lock file: its pid, host and start time. Whether a lock
is held is decided by the kernel alone, never by that text: a killed process's lock is released by
the kernel when it dies, so the next writer takes it over, and a live holder can't be taken for dead
whatever its lock file says. Readers (`metalab eval`, `runs`, `report`, `predict`) take no lock.
A process may take the same folder's lock again while it holds it (the training loop and the final
meta-test of `metalab train` both write there); another thread of it may not. On file systems
where `flock` is not shared between machines, writers on different machines are not kept apart;
on platforms without `fcntl` (Windows) no lock is taken and nothing is refused.

**Temporary files.** An atomic write (`metalab.checkpoint`) goes through `.NAME.XXXXXXXX.tmp`; a
process killed mid-write leaves that file behind. Taking the lock proves that no other process is
writing, so the temporary files found then are removed.

**The class split.** For your own data (the folder and csv benchmarks) the classes (or, for
regression, the tasks) of meta-train / meta-val / meta-test are recorded in `RUN/split.json`, with
the number of examples of each, when the run starts; a resumption checks that the data still gives
the same split and refuses otherwise. Omniglot's splits are fixed by name (the config's `split`
key) and sine tasks have none: no split.json is written for them. `metalab runs RUN` shows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .checkpoint import CheckpointError, atomic_write_text, remove_temp_files
from .config import Config, ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "LOCK",
    "SPLIT",
    "RunFolderBusy",
    "RunFolderLock",
    "acquire",
    "hold",
    "check_free",
    "split_record",
    "record_split",
    "describe_split",
]

LOCK = ".lock"
SPLIT = "split.json"


class RunFolderBusy(ConfigError):
    """Another process is writing into the run folder."""


@dataclass
class RunFolderLock:
    """A held run-folder lock (see `acquire`); `release` once per `acquire`."""

    path: Path
    fd: int | None
    created_folder: bool
    removed: list[Path]
    depth: int = 1
    owner: int = 0

    def release(self) -> None:
        with _registry_lock:
            self.depth -= 1
            if self.depth > 0:
                return
            _held.pop(_key(self.path.parent), None)
        if self.fd is None:
            return
        folder = self.path.parent
        try:
            # A folder made by this writer that got no further than its lock file goes again (a
            # start refused for bad data leaves nothing behind). Unlinked while still locked: a
            # writer that opened the old file finds it gone once it gets the lock, and starts over.
            if self.created_folder and [p.name for p in folder.iterdir()] == [LOCK]:
                self.path.unlink()
                folder.rmdir()
        except OSError:
            pass
        finally:
            os.close(self.fd)  # releases the flock
            self.fd = None


_held: dict[str, RunFolderLock] = {}
_registry_lock = threading.Lock()


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _holder_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n"


def _holder(path: Path) -> str:
    """Who holds the lock at `path`, from what it wrote there: "pid 1234 on host, started 10:31"."""
    try:
        info = json.loads(path.read_text())
        pid, host, started = int(info["pid"]), str(info["host"]), float(info["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its pid yet)"
    same_day = time.strftime("%Y-%m-%d", time.localtime(started)) == time.strftime("%Y-%m-%d")
    when = time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(started))
    return f"pid {pid} on {host}, started {when}"


def _busy(folder: Path, path: Path) -> RunFolderBusy:
    return RunFolderBusy(
        f"{folder} is in use by {_holder(path)}; wait for it to finish or choose another --run-dir"
    )


def acquire(run_dir: str | Path) -> RunFolderLock:
    """Take the writer lock of `run_dir` (made if missing) without waiting, and remove the temporary
    files interrupted writes left there. Taken again by the thread that holds it, it counts.

    Raises:
        RunFolderBusy: another process (or another thread of this one) holds it; the message names it.
        ConfigError: the folder or its lock file cannot be made (e.g. no permission).
    """
    folder = Path(run_dir)
    path = folder / LOCK
    with _registry_lock:
        held = _held.get(_key(folder))
        if held is not None:
            if held.owner != threading.get_ident():
                raise _busy(folder, path)
            held.depth += 1
            return held
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make the run folder {folder}: {e.strerror or e}") from None
    if fcntl is None:
        lock = RunFolderLock(path, None, not existed, [], owner=threading.get_ident())
    else:
        lock = _flock(folder, path, existed)
    with _registry_lock:
        _held[_key(folder)] = lock
    return lock


def _flock(folder: Path, path: Path, existed: bool) -> RunFolderLock:
    for _ in range(100):
        try:
            # 0o666: the lock file follows the umask like any file; never truncated before it is held.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"cannot make the lock file {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, path) from None
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"cannot lock {path}: {e.strerror or e}") from None
        try:
            mine, now = os.fstat(fd), os.stat(path)
            same = (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed the file before releasing it: lock the new one
            os.close(fd)
            folder.mkdir(parents=True, exist_ok=True)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text().encode(), 0)
        lock = RunFolderLock(path, fd, not existed, [], owner=threading.get_ident())
        lock.removed = remove_temp_files(folder)  # no other writer: they are nobody's
        return lock
    raise ConfigError(f"cannot lock {path}: it keeps being replaced")


@contextlib.contextmanager
def hold(run_dir: str | Path) -> Iterator[RunFolderLock]:
    """`acquire(run_dir)` for the duration of a `with` block."""
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        lock.release()


def check_free(run_dir: str | Path) -> None:
    """Raise `RunFolderBusy` if another process writes into `run_dir` now (a check before starting
    processes that will take the lock themselves, e.g. `--nproc`); takes the lock only for an instant
    and makes nothing where the folder does not exist."""
    if fcntl is None or not (Path(run_dir) / LOCK).exists():
        return
    with hold(run_dir):
        pass


# --- the class split -----------------------------------------------------------------------------


def split_record(c: Config, dataset: Any) -> dict | None:
    """What split.json holds for the data set of `c` (None for Omniglot and sine tasks): each split's
    classes (regression: tasks) with the number of examples of each, names sorted."""
    if c.benchmark not in ("folder", "csv") or dataset is None:
        return None
    names = getattr(dataset, "class_names", None) or dataset.group_names
    groups = getattr(dataset, "groups", dataset.y)
    counts = groups.cpu().bincount(minlength=len(names)).tolist()
    regression = getattr(dataset, "kind", "classification") == "regression"
    splits = {}
    for split, ids in zip(("train", "val", "test"), dataset.splits):
        chosen = sorted((names[i], counts[i]) for i in ids.tolist())
        splits[split] = {"count": len(chosen), "examples": dict(chosen)}
    return {
        "benchmark": c.benchmark,
        "data_dir": c.data_dir,
        "unit": "tasks" if regression else "classes",
        "splits": splits,
    }


def _difference(old: dict, new: dict) -> str | None:
    for split in ("train", "val", "test"):
        before, now = old["splits"][split]["examples"], new["splits"][split]["examples"]
        if before == now:
            continue
        unit = new["unit"]
        gone, added = sorted(set(before) - set(now)), sorted(set(now) - set(before))
        if gone or added:
            parts = ([f"{', '.join(added[:3])} added"] if added else []) + (
                [f"{', '.join(gone[:3])} gone"] if gone else []
            )
            return f"meta-{split} {unit} differ: {'; '.join(parts)}"
        changed = next(n for n in now if now[n] != before[n])
        return f"{changed!r} (meta-{split}) had {before[changed]} examples, now {now[changed]}"
    return None


def record_split(run_dir: str | Path, c: Config, dataset: Any, *, resume: bool) -> None:
    """Write split.json for a new run; on resumption check the data still gives the recorded split
    (writing it if the run has none). Nothing for Omniglot and sine.

    Raises:
        CheckpointError: resuming, and the data's split differs from split.json (or it is unreadable).
    """
    record = split_record(c, dataset)
    if record is None:
        return
    path = Path(run_dir) / SPLIT
    if resume and path.exists():
        try:
            old = json.loads(path.read_text())
            difference = _difference(old, record)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"cannot resume: {path} is not a split record; fix or remove it") from None
        if difference:
            raise CheckpointError(
                f"cannot resume {run_dir}: the data in {c.data_dir} no longer gives the class split of "
                f"{path} ({difference}); train a new run on the changed data"
            )
        return
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def describe_split(run_dir: str | Path, config: dict, *, show: int = 30) -> list[str]:
    """Lines for `metalab runs RUN`: each split's classes, from split.json (Omniglot: the split's name)."""
    benchmark = config.get("benchmark")
    if benchmark == "omniglot":
        name = config.get("split", "vinyals")
        return [f"class split: Omniglot's {name!r} split (fixed by name; docs/omniglot.md)"]
    path = Path(run_dir) / SPLIT
    if benchmark not in ("folder", "csv"):
        return []
    if not path.exists():
        return [f"class split: not recorded ({path} is missing)"]
    try:
        record = json.loads(path.read_text())
        splits, unit = record["splits"], record["unit"]
        lines = [f"class split of {record.get('data_dir')} ({path}):"]
        for split in ("train", "val", "test"):
            names = list(splits[split]["examples"])
            shown = ", ".join(names[:show]) + (
                f", ... ({len(names) - show} more)" if len(names) > show else ""
            )
            lines.append(f"  meta-{split} {unit} ({len(names)}): {shown or '-'}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [f"class split: {path} is not a split record"]
    return lines
