"""metalab on one CUDA GPU: the CUDA tests, then meta-gradients checked and episodes timed.

    python benchmarks/gpu.py [--repeats 20] [--skip-tests] [--out PATH]

On a CUDA machine (about 2 minutes on an H200: 15 s of tests, 111 s of checks and timings):

1. runs the test cases parametrized over devices on `cuda` (`pytest -q -k cuda`: the conformance
   test of every algorithm, the seeded meta-gradients of every learner, MAML's hand-written
   references);
2. for each workload and precision (fp32, bf16, and fp16 with loss scaling for MAML), checks the
   meta-gradient of one meta-batch on the GPU against the CPU's float64 meta-gradient of the same
   weights and tasks (cosine, and the largest entry's error relative to the largest entry), then
   times full outer steps (episodes drawn on the GPU from the data set kept there, meta-gradient,
   Adam step) and records the peak GPU memory;
3. prints a table and writes benchmarks/results/gpu.json (or --out).

Workloads: MAML 5-way 1-shot second order (meta-batch 32), MAML 20-way 1-shot with 5 inner steps
second order (meta-batch 16), Prototypical Networks 5-way 1-shot (one episode per step); 15
queries per class, Conv-4, as benchmarks/perf.py. Real Omniglot episodes from
../shared/data/omniglot when it is there, else random images.

Without a CUDA device it says so and exits 0; it writes a results file only when --out is given,
so a CPU run never replaces the committed GPU figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from metalab import __version__, builders  # noqa: E402
from metalab.config import Config  # noqa: E402
from metalab.devices import autocast_context, autocast_dtype, resolve_device  # noqa: E402
from metalab.tasks import TaskBatch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"
# name: (algorithm, ways, meta-batch, inner steps, inner lr, precisions)
WORKLOADS = {
    "maml_5w1s_second_order": ("maml", 5, 32, 1, 0.4, ("fp32", "bf16", "fp16")),
    "maml_20w1s_5steps_second_order": ("maml", 20, 16, 5, 0.1, ("fp32", "bf16", "fp16")),
    "protonet_5w1s": ("protonet", 5, 1, None, None, ("fp32", "bf16")),
}


def config(algorithm: str, ways: int, tasks: int, steps, lr, device: str, precision: str) -> Config:
    own = {"inner_steps": steps, "inner_lr": lr} if steps is not None else {}
    data = {"data_dir": str(OMNIGLOT)} if OMNIGLOT.is_dir() else {"data_dir": "unused"}
    return Config(
        algorithm=algorithm,
        benchmark="omniglot",
        ways=ways,
        shots=1,
        queries=15,
        meta_batch=tasks,
        device=device,
        precision=precision,
        **data,
        **own,
    ).resolved()


def episode_source(c: Config, device: torch.device):
    """`sample(T)` of meta-training episodes on `device`: real Omniglot (kept on the GPU) or random."""
    if OMNIGLOT.is_dir():
        dataset = builders.load_dataset(c).to(device)
        return builders.build_source(c, "train", dataset).sample, "omniglot"
    g = torch.Generator().manual_seed(0)

    def sample(tasks: int) -> TaskBatch:
        n, q = c.ways, c.queries
        sy = torch.arange(n).repeat_interleave(1).expand(tasks, -1).contiguous()
        qy = torch.arange(n).repeat_interleave(q).expand(tasks, -1).contiguous()
        batch = TaskBatch(
            torch.rand(tasks, n, 1, 28, 28, generator=g),
            sy,
            torch.rand(tasks, n * q, 1, 28, 28, generator=g),
            qy,
        )
        return batch.to(device)

    return sample, "random images"


def meta_gradient(learner, batch: TaskBatch, device_type: str, precision: str) -> torch.Tensor:
    params = [p for p in learner.parameters() if p.requires_grad]
    with autocast_context(device_type, autocast_dtype(precision)):
        loss, _ = learner.meta_loss(batch)
    scale = 2.0**12 if precision == "fp16" else 1.0  # what a GradScaler does, at a fixed scale
    grads = torch.autograd.grad(loss * scale, params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g / scale).flatten() for p, g in zip(params, grads)]
    )


def check(c: Config, batch: TaskBatch, device: torch.device) -> dict:
    """The GPU meta-gradient in `c.precision` against the CPU's float64 one (same weights, tasks)."""
    torch.manual_seed(0)
    reference = builders.build_learner(c).double()
    exact = TaskBatch(
        batch.support_x.double().cpu(),
        batch.support_y.cpu(),
        batch.query_x.double().cpu(),
        batch.query_y.cpu(),
    )
    want = meta_gradient(reference, exact, "cpu", "fp32")
    torch.manual_seed(0)
    learner = builders.build_learner(c).to(device)
    got = meta_gradient(learner, batch, device.type, c.precision).double().cpu()
    return {
        "cosine": F.cosine_similarity(got, want, dim=0).item(),
        "max_rel_error": ((got - want).abs().max() / want.abs().max()).item(),
        "finite": bool(torch.isfinite(got).all()),
    }


def time_steps(c: Config, sample, device: torch.device, repeats: int, warmup: int = 3) -> dict:
    """Full outer steps: draw the episodes, meta-gradient under autocast (fp16: GradScaler), Adam."""
    torch.manual_seed(0)
    learner = builders.build_learner(c).to(device)
    optimizer = builders.build_optimizer(c, learner)
    scaler = torch.amp.GradScaler(device.type) if c.precision == "fp16" else None
    dtype = autocast_dtype(c.precision)

    def step():
        batch = sample(c.meta_batch)
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device.type, dtype):
            loss, _ = learner.meta_loss(batch)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    for _ in range(warmup):
        step()
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        if gpu:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {
        "seconds_per_step": median,
        "steps_per_second": 1.0 / median,
        "episodes_per_second": c.meta_batch / median,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if gpu else None,
    }


def run_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda"]
    cmd += ["tests/test_conformance.py", "tests/test_reference_gradients.py", "tests/test_functional.py"]
    cmd += ["tests/test_devices.py"]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    print(f"tests (pytest -k cuda): {summary} [{time.perf_counter() - t:.0f} s]")
    if done.returncode != 0:
        print(done.stdout[-4000:])
    return {"returncode": done.returncode, "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="timed steps per workload and precision")
    p.add_argument("--skip-tests", action="store_true", help="skip the CUDA test cases")
    p.add_argument("--out", help=f"results file (default on a CUDA machine: {RESULTS.relative_to(ROOT)})")
    p.add_argument(
        "--smoke-on-cpu",
        action="store_true",
        help="run the checks and timings on the CPU, 2 repeats, no file unless --out (tests this script)",
    )
    args = p.parse_args()
    record = {
        "metalab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }
    if args.smoke_on_cpu:
        return measure(record, torch.device("cpu"), 2, args.out)
    if not torch.cuda.is_available():
        print(
            f"no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda}): nothing measured"
        )
        if args.out:
            record["note"] = "no CUDA device: nothing measured"
            Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
            print(f"wrote {args.out}")
        return 0
    device = resolve_device("cuda:0")  # IEEE fp32 convolutions (no TF32), as training uses
    record.update(
        gpu=torch.cuda.get_device_name(device),
        torch_cuda=torch.version.cuda,
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
    )
    if not args.skip_tests:
        record["tests"] = run_tests()
    return measure(record, device, args.repeats, args.out or RESULTS)


def measure(record: dict, device: torch.device, repeats: int, out) -> int:
    record["workloads"] = {}
    print(
        f"{'workload':34} {'precision':9} {'cosine':>8} {'max rel err':>11} {'steps/s':>8} {'episodes/s':>10}"
    )
    for name, (algorithm, ways, tasks, steps, lr, precisions) in WORKLOADS.items():
        rows = record["workloads"][name] = {}
        for precision in precisions:
            if device.type == "cpu" and precision == "fp16":
                continue
            c = config(algorithm, ways, tasks, steps, lr, str(device), precision)
            sample, source = episode_source(c, device)
            checked = check(c, sample(min(tasks, 4)), device)
            timed = time_steps(c, sample, device, repeats)
            rows[precision] = {"data": source, "meta_batch": tasks, **checked, **timed}
            print(
                f"{name:34} {precision:9} {checked['cosine']:8.5f} {checked['max_rel_error']:11.2e} "
                f"{timed['steps_per_second']:8.2f} {timed['episodes_per_second']:10.1f}"
            )
    if out:
        Path(out).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
