"""`metalab info`: what a bug report needs, gathered without side effects.

Versions (metalab, torch, Python), the device `auto` picks, CUDA and MPS availability with the GPUs'
names, whether the Conv-4 CPU kernels are built (without building them unless asked: that takes
about 30 s), torch's threads, the cores this process may use, the load of other processes on them
(what a run's thread choice sees, `metalab.threads`), and the registered algorithms.
"""

from __future__ import annotations

import os
import platform
import sys

import torch

from .algorithms.spec import algorithm_names
from .devices import _mps_available, auto_device_name
from .parallel import available_cores
from .threads import background_load

__all__ = ["system_info", "format_info"]


def _cuda() -> dict:
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU visible"
        return {"available": False, "why": why, "torch_cuda": torch.version.cuda}
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(f"cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB)")
    return {
        "available": True,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16": torch.cuda.is_bf16_supported(),
        "devices": devices,
    }


def system_info(*, build_kernels: bool = False) -> dict:
    """Everything `metalab info` prints, as a dict (JSON-ready)."""
    from . import __version__
    from .models.fast import _kernels

    if build_kernels:
        _kernels.kernels()
    busy = background_load()  # what a run's thread choice sees (metalab.threads)
    return {
        "metalab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "device (auto)": auto_device_name(),
        "cuda": _cuda(),
        "mps": _mps_available(),
        "cpu kernels": _kernels.status(),
        "torch threads": torch.get_num_threads(),
        "cores (usable / machine)": f"{available_cores()} / {os.cpu_count()}",
        "load of other processes (runnable threads)": "unknown" if busy is None else round(busy, 1),
        "algorithms": list(algorithm_names()),
    }


def format_info(info: dict) -> str:
    lines = []
    for name, value in info.items():
        if isinstance(value, dict):
            parts = [f"{k}={v}" for k, v in value.items() if k != "devices"]
            lines.append(f"{name}: " + ", ".join(parts))
            lines += [f"  {d}" for d in value.get("devices", [])]
        elif isinstance(value, list):
            lines.append(f"{name}: {', '.join(map(str, value))}")
        else:
            lines.append(f"{name}: {value}")
    return "\n".join(lines)
