"""How far metalab's fp32 MAML meta-gradient is from the float64 one, beside stock NCHW layers.

    python benchmarks/fp32_accuracy.py

The performance benchmark (perf.py) checks in float64 that every implementation computes the same
meta-gradient; this measures what fp32 rounding does to it on the same real Omniglot workloads:
the meta-gradient of Conv-4 (same weights, same task batch) in float64 with stock NCHW layers is the
reference, and the fp32 meta-gradients of metalab's channels-last Conv-4 (what training runs) and of
the same Conv-4 in NCHW (stock PyTorch kernels, what the peer libraries run) are compared with it.
Writes benchmarks/results/fp32_accuracy.json; docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import episode_source  # noqa: E402  (real Omniglot episodes when ../shared has them)

from metalab import MAML  # noqa: E402
from metalab.models import Conv4, FastConv4  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# (name, ways, inner steps, inner lr, tasks): perf.py's MAML workloads, on fewer tasks.
WORKLOADS = [("maml_5w1s_second_order", 5, 1, 0.4, 8), ("maml_20w1s_5steps_second_order", 20, 5, 0.1, 2)]


def meta_gradient(model: Conv4, batch, dtype: torch.dtype, steps: int, lr: float) -> torch.Tensor:
    learner = MAML(model, "classification", inner_lr=lr, inner_steps=steps, strategy="loop")
    model.zero_grad()
    learner.meta_loss(batch.map_x(lambda x: x.to(dtype)))[0].backward()
    return torch.cat([p.grad.double().flatten() for p in model.parameters()])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fp32_accuracy.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    report = {
        "command": "python benchmarks/fp32_accuracy.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "workloads": {},
    }
    for name, ways, steps, lr, tasks in WORKLOADS:
        batch = episode_source(ways, 1, 15, 28)(tasks)
        torch.manual_seed(0)
        exact = Conv4(out_features=ways, channels_last=False).double()
        truth = meta_gradient(exact, batch, torch.float64, steps, lr)
        rows = {}
        for label, channels_last in (("metalab (channels-last)", True), ("stock NCHW layers", False)):
            model = (FastConv4 if channels_last else Conv4)(out_features=ways, channels_last=channels_last)
            model.load_state_dict(exact.state_dict())
            g = meta_gradient(model, batch, torch.float32, steps, lr)
            rows[label] = {
                "max_abs_error": (g - truth).abs().max().item(),
                "relative_norm_error": ((g - truth).norm() / truth.norm()).item(),
                "cosine": F.cosine_similarity(g, truth, dim=0).item(),
            }
            r = rows[label]
            print(
                f"{name} ({tasks} tasks): {label}: max |error| {r['max_abs_error']:.2e}, "
                f"relative {r['relative_norm_error']:.2e}, cosine {r['cosine']:.10f}"
            )
        report["workloads"][name] = {"tasks": tasks, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
