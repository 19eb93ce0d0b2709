"""Devices and precisions: from the config's `device` and `precision` keys to torch objects.

`resolve_device("auto")` is CUDA where a GPU is visible, else Apple's MPS, else the CPU; an explicit
device that this machine lacks (`cuda` without a GPU, `cuda:3` with one GPU, `mps` off a Mac) or a
malformed name is a `ConfigError` naming the key and what is available, so every command ends with
one line and exit status 2 instead of a traceback deep inside torch.

Precision is autocast's: `fp32` runs as written; `bf16` and `fp16` run the forward passes under
`torch.autocast(device_type, dtype)`. fp16's narrow exponent needs loss scaling (`GradScaler`, in
`metalab.run`); the CPU has no fp16 autocast worth having and is refused. docs/gpu.md says what
each precision does to the meta-gradient.
"""

from __future__ import annotations

import contextlib
import re

import torch

from .config_values import ConfigError

__all__ = [
    "DEVICE_NAMES",
    "PRECISIONS",
    "check_device_name",
    "resolve_device",
    "autocast_dtype",
    "autocast_context",
    "check_precision",
    "data_fits",
    "place_dataset",
    "auto_device_name",
    "ieee_fp32",
]

DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"
PRECISIONS = ("fp32", "bf16", "fp16")
_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# A data set is kept on an accelerator when it takes at most this share of its free memory.
_DATA_SHARE = 0.25


def check_device_name(name: object) -> str:
    """`name` if it is a device name metalab takes, else a `ConfigError` listing them."""
    if not isinstance(name, str) or not _PATTERN.match(name):
        raise ConfigError(f"config key 'device' must be one of {DEVICE_NAMES}; got {name!r}")
    return name


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def auto_device_name() -> str:
    """What `device: auto` picks on this machine: cuda, else mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if _mps_available() else "cpu"


def _no_cuda() -> str:
    why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
    return f"CUDA is not available here ({why}; torch {torch.__version__})"


def resolve_device(name: str, *, local_rank: int | None = None) -> torch.device:
    """The torch device of a config's `device` key.

    Args:
        name: auto | cpu | cuda | cuda:N | mps.
        local_rank: under torchrun, this process's rank on its machine: `auto` and `cuda` then mean
            `cuda:local_rank` (one GPU per process).

    Raises:
        ConfigError: a malformed name, or a device this machine does not have.
    """
    check_device_name(name)
    if name == "auto":
        name = auto_device_name()
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError("config key 'device' is mps, but MPS is not available here; use cpu or auto")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {name}, but {_no_cuda()}; use --device cpu or auto")
    count = torch.cuda.device_count()
    if name == "cuda":
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    else:
        index = int(name.split(":")[1])
    if index >= count:
        raise ConfigError(
            f"config key 'device' asks for cuda:{index}, but this machine has {count} GPU(s) "
            f"(cuda:0..cuda:{count - 1})"
        )
    device = torch.device("cuda", index)
    ieee_fp32(device)
    return device


def ieee_fp32(device: torch.device) -> None:
    """On a CUDA device, keep fp32 convolutions and matrix products in IEEE fp32.

    PyTorch lets cuDNN run fp32 convolutions in TF32 (10 bits of mantissa) unless told otherwise.
    Second-order meta-gradients amplify that rounding: on an H200, MAML 20-way 1-shot's
    meta-gradient through 5 inner steps had a cosine of 0.30 to the float64 one with TF32 and 1.0000
    without (docs/gpu.md). metalab's `precision: fp32` therefore means fp32; bf16 and fp16 are the
    low-precision choices. The switches are torch's process-wide flags.
    """
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a `precision` key (None: fp32, no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse what cannot run: fp16 on the CPU (use bf16 there)."""
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(
            "config key 'precision' fp16 needs a GPU (CUDA autocast with loss scaling); on the CPU use "
            "bf16 or fp32"
        )


def autocast_context(device_type: str, dtype: torch.dtype | None):
    """Autocast on `device_type` ("cpu", "cuda", "mps") to `dtype`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def data_fits(nbytes: int, device: torch.device) -> bool:
    """Whether a data set of `nbytes` should be kept on `device` (the CPU: always; a GPU: when it
    takes at most a quarter of the free memory, leaving the rest to the meta-batch's graphs)."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= _DATA_SHARE * free
    return nbytes <= 1 << 30  # MPS shares the machine's memory: up to 1 GiB


def place_dataset(dataset, device: torch.device):
    """A `FewShotDataset` moved to `device` once where it fits there (its samplers then gather every
    episode on the device); anything else (None, a CSV's rows) as it is, its batches moved one by one."""
    if dataset is None or not hasattr(dataset, "nbytes") or not data_fits(dataset.nbytes, device):
        return dataset
    return dataset.to(device)
