"""torch.distributed glue: the meta-batch split across ranks, gradients averaged before the step.

Launched by `torchrun` (or `metalab train --nproc N`, which calls it), every rank runs the same
training loop on `meta_batch / world_size` tasks drawn from its own rank-derived seed; after the
backward pass the gradients are averaged across ranks with one all-reduce, so every rank takes the
same outer step, equal to one process's step over the union of all ranks' tasks. Only rank 0 writes
checkpoints and logs. Backend nccl when the run's device is a GPU (one per process, `cuda:LOCAL_RANK`;
`metalab.run` sets it before joining), gloo on the CPU.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from typing import Iterable

import torch
import torch.distributed as dist

__all__ = [
    "DistributedError",
    "setup",
    "teardown",
    "rank",
    "world_size",
    "is_main",
    "average_gradients",
    "agree",
    "gather_objects",
    "launch",
    "local_rank",
]

# Where this process's collectives put their tensors (NCCL takes GPU tensors only).
_device = torch.device("cpu")


class DistributedError(RuntimeError):
    """A peer process failed or stopped answering; the run stops instead of hanging."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def local_rank() -> int | None:
    """This process's rank on its machine under torchrun (its GPU's index), else None."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else None


def setup(timeout_seconds: float = 300.0, device: torch.device | str = "cpu") -> bool:
    """Join the process group if launched by torchrun; returns whether training is distributed.

    `device` is this process's device: NCCL for a GPU (set as the current CUDA device first), gloo
    otherwise. `timeout_seconds` bounds every collective: a rank that dies makes the others fail
    with a `DistributedError` after at most this long instead of waiting forever.
    """
    global _device
    if not launched_by_torchrun():
        return False
    _device = torch.device(device)
    if not dist.is_initialized():
        backend = "nccl" if _device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return True


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def _collective(fn, what: str):
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {rank()}: {what} failed, a peer process stopped or timed out ({first})"
        ) from None


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average `.grad` across ranks in place, with one all-reduce of a flat buffer."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    _collective(lambda: dist.all_reduce(flat), "gradient all-reduce")
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


def agree(flag: bool) -> bool:
    """Whether rank 0's `flag` is true, on every rank (so that all ranks stop at the same step)."""
    if world_size() == 1:
        return flag
    box = torch.tensor([1.0 if flag else 0.0], device=_device)
    _collective(lambda: dist.broadcast(box, src=0), "broadcast")
    return bool(box.item())


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (e.g. the task samplers' RNG states for a checkpoint)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    _collective(lambda: dist.all_gather_object(out, obj), "gather")
    return out


def broadcast_object(obj):
    if world_size() == 1:
        return obj
    box = [obj]
    _collective(lambda: dist.broadcast_object_list(box, src=0), "broadcast")
    return box[0]


def launch(nproc: int, argv: list[str], extra: list[str] | None = None) -> int:
    """Run `metalab <argv>` under torchrun with `nproc` processes on this machine."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        *(extra or []),
        "-m",
        "metalab.cli",
        *argv,
    ]
    return subprocess.call(cmd)
