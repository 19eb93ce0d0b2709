"""Training speed of the image backbones on the CPU: forward + backward images per second of
ResNet-12, ResNet-18 and Conv-4 at 32x32 and 84x84 (3 channels), in fp32 with the NCHW and the
channels-last layout, and under bf16 autocast (channels-last).

    nice -n 10 python benchmarks/backbones.py [--threads 1] [--seconds 3] [--sizes 32 84]

Each step is one training step of a classifier: backbone in training mode (running-statistics
batch norm, as the metric learners and transfer baselines train it), a 64-way linear head,
cross-entropy, backward. Steps repeat for `--seconds` after a warm-up step; the median step
gives images/s. The load average is recorded before and after: on a shared machine other work
slows every figure. Writes benchmarks/results/backbones.json and prints a table; docs/performance.md
quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from metalab.models.backbones import image_backbone

ROOT = Path(__file__).resolve().parent.parent
# Images per step: ResNet-12 at 84x84 costs ~3.5 GFLOPs a forward, so it gets a smaller batch.
BATCH = {("resnet12", 84): 16}
DEFAULT_BATCH = 64
VARIANTS = ("fp32", "fp32_channels_last", "bf16_channels_last")


def step_seconds(name: str, size: int, batch: int, variant: str, seconds: float) -> list[float]:
    torch.manual_seed(0)
    model = image_backbone(name, in_channels=3, image_size=size, norm="batch", out_features=64, fast=True)
    channels_last = variant != "fp32"
    # Conv-4 keeps its own layout flag (FastConv4's fused paths read it); the ResNets are moved.
    if hasattr(model, "channels_last"):
        model.channels_last = channels_last
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.train()
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 64, (batch,))

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.startswith("bf16")):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()  # warm-up: allocations, oneDNN primitives, the Conv-4 kernels' first use
    times, begin = [], time.perf_counter()
    while len(times) < 2 or time.perf_counter() - begin < seconds:
        times.append(step())
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 84])
    p.add_argument("--backbones", nargs="+", default=["resnet12", "resnet18", "conv4"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backbones.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    record = {
        "command": "nice -n 10 python benchmarks/backbones.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": args.threads,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "step": "train-mode backbone (running-statistics batch norm), 64-way head, cross-entropy, backward",
        "results": [],
    }
    print(
        f"{'backbone':<9} {'size':>4} {'batch':>5} " + " ".join(f"{v:>20}" for v in VARIANTS) + "  (images/s)"
    )
    for size in args.sizes:
        for name in args.backbones:
            batch = BATCH.get((name, size), DEFAULT_BATCH)
            row = {"backbone": name, "image_size": size, "batch": batch}
            for variant in VARIANTS:
                times = step_seconds(name, size, batch, variant, args.seconds)
                median = statistics.median(times)
                row[variant] = {"images_per_s": round(batch / median, 1), "steps": len(times)}
            base = row["fp32"]["images_per_s"]
            for variant in VARIANTS[1:]:
                row[variant]["speedup"] = round(row[variant]["images_per_s"] / base, 2)
            record["results"].append(row)
            cells = " ".join(f"{row[v]['images_per_s']:>20,.1f}" for v in VARIANTS)
            print(f"{name:<9} {size:>4} {batch:>5} {cells}", flush=True)
    record["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average before {record['load_average_before']}, after {record['load_average_after']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
