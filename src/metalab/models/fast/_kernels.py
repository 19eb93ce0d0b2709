"""Conv-4's fused CPU kernels (`_conv4_kernels.cpp`), compiled on first use.

`kernels()` returns the compiled module, or None where it cannot be had: no C++ compiler, a build
error, a non-CPU build of this file's callers, or `METALAB_KERNELS=0` in the environment. Callers
then run the same computation as plain PyTorch ops (same values and derivatives, slower), so a
machine without a compiler loses speed, never results.

The first call on a machine compiles the file with `torch.utils.cpp_extension.load` (about 30 s,
once: the library is cached under `TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions, and
shared by later processes). It is built for the CPU it runs on (`-march=native`), so the cache
name carries a digest of the CPU's feature flags, the torch version and the source's contents:
one build directory per source, into which the source is copied and compiled from there. Two
checkouts of the same source share one build; a changed source gets a build of its own; neither
makes the other rebuild (the build file never points into a checkout).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

_SOURCE = Path(__file__).with_name("_conv4_kernels.cpp")
_lock = threading.Lock()
_state: dict[str, object] = {}


def build_name(source: Path = _SOURCE) -> str:
    """The build's name: a digest of the CPU's feature flags, the torch version and the source, so
    a cache shared between machines, kept across a torch upgrade or used by several checkouts never
    hands over a binary built for another CPU, torch or source."""
    import torch

    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), flags)
    except OSError:
        pass
    digest = hashlib.sha1(f"{flags} {torch.__version__}".encode())
    digest.update(source.read_bytes())
    return f"metalab_conv4_{digest.hexdigest()[:12]}"


def kernels() -> ModuleType | None:
    """The compiled kernels, building them on the first call; None if they cannot be built."""
    if os.environ.get("METALAB_KERNELS", "1") == "0":
        return None
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    with _lock:  # task threads may ask at the same moment
        if "module" not in _state:
            _state["module"] = _build()
    return _state["module"]  # type: ignore[return-value]


def _cached() -> tuple[str, Path]:
    """The build's name and its own build folder (where the source copy and the library go)."""
    from torch.utils.cpp_extension import _get_build_directory

    name = build_name()
    return name, Path(_get_build_directory(name, verbose=False))


def status() -> str:
    """Where the kernels stand, without building them: off, built (loaded, or cached for this CPU,
    torch and source), unavailable (a build failed in this process) or not built yet."""
    if os.environ.get("METALAB_KERNELS", "1") == "0":
        return "off (METALAB_KERNELS=0)"
    if "module" in _state:
        return "built (loaded)" if _state["module"] is not None else "unavailable (the build failed)"
    try:
        name, folder = _cached()
    except Exception as error:  # no cpp_extension support in this torch
        return f"unavailable ({type(error).__name__})"
    built = folder / f"{name}.so"
    return f"built (cached: {built})" if built.exists() else "not built yet (compiled on first use, ~30 s)"


def _build() -> ModuleType | None:
    try:
        from torch.utils.cpp_extension import load

        name, folder = _cached()
        source = folder / _SOURCE.name  # compiled from a copy in its own build folder
        if not source.exists() or source.read_bytes() != _SOURCE.read_bytes():
            tmp = folder / f".{_SOURCE.name}.{os.getpid()}.tmp"
            tmp.write_bytes(_SOURCE.read_bytes())
            os.replace(tmp, source)
        if not (folder / f"{name}.so").exists():
            print(
                "metalab: compiling the Conv-4 CPU kernels (first use on this machine, ~30 s) ...",
                file=sys.stderr,
                flush=True,
            )
        flags = ["-O3", "-fopenmp-simd"]
        if platform.machine().lower() in ("x86_64", "amd64"):
            flags += ["-march=native", "-mprefer-vector-width=512"]  # AVX-512 where the CPU has it
        return load(name=name, sources=[str(source)], extra_cflags=flags, verbose=False)
    except Exception as error:  # no compiler, headers or ninja: the PyTorch ops answer instead
        first_line = str(error).splitlines()[0] if str(error) else ""
        print(
            f"metalab: Conv-4 CPU kernels unavailable ({type(error).__name__}: {first_line}); "
            "using the plain PyTorch ops (same results, slower)",
            file=sys.stderr,
            flush=True,
        )
        return None
