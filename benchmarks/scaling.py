"""How the time and peak memory of one MAML meta-iteration grow, for metalab and learn2learn.

    python benchmarks/scaling.py            # the curves (about 10 minutes on 2 cores)
    python benchmarks/scaling.py --smoke    # tiny sizes, one point per curve: what CI runs

Conv-4 on 28x28 Omniglot episodes (random images where the shared data is absent), N-way 1-shot
with 15 queries per class, SGD inner steps (lr 0.4 for one step, 0.1 for more, as in the MAML paper),
Adam outer step, second order unless stated. Four curves, each varying one thing from the base point
(5-way, one inner step, meta-batch 32):

- meta-batch 1 to 64;
- inner steps 1 to 10 (meta-batch 8, to keep ten second-order steps affordable), with metalab's
  `inner_checkpoint` beside the plain inner loop: the option that bounds second-order memory;
- ways 5 and 20 (meta-batch 16);
- first against second order.

Every point runs in a fresh process (its peak RSS is the process's peak while it builds the model
and steps, torch and the episodes already in memory) and reports the median seconds over the timed
meta-iterations after one warm-up. metalab runs its default engine (task threads, one per core);
learn2learn its default 2 intra-op threads, the fastest peer in benchmarks/perf.py. Results go to
benchmarks/results/scaling.json, docs/scaling.md and docs/scaling.png.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402  (the implementations and the workload, shared with the speed benchmark)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
BASE = {"ways": 5, "tasks": 32, "steps": 1, "first_order": False}
CURVES = {
    # name: (the key varied, its values, the base point's other changes, the values in --smoke)
    "meta-batch": ("tasks", [1, 2, 4, 8, 16, 32, 64], {}, [2]),
    "inner steps": ("steps", [1, 2, 5, 10], {"tasks": 8}, [2]),
    "ways": ("ways", [5, 20], {"tasks": 16}, [5]),
    "order": ("first_order", [False, True], {}, [True]),
}
METALAB, CHECKPOINTED, PEER = "metalab", "metalab inner_checkpoint", "learn2learn"


def implementations(point: dict, smoke: bool) -> dict:
    """Our names -> perf.py's factories for this point (learn2learn only where it imports)."""
    hidden, size = (8, 16) if smoke else (64, 28)
    lr = 0.4 if point["steps"] == 1 else 0.1
    impls = perf.maml_impls(
        hidden, point["ways"], size, point["first_order"], point["steps"], lr, checkpoint_variant=True
    )
    cores = perf.available_cores()
    names = {
        METALAB: f"metalab ({cores} task threads)",
        CHECKPOINTED: f"metalab inner_checkpoint ({cores} task threads)",
        PEER: "learn2learn",
    }
    return {ours: impls[theirs] for ours, theirs in names.items() if theirs in impls}


def measure(point: dict, name: str, repeats: int, smoke: bool) -> dict:
    """In this process: one warm-up meta-iteration, then `repeats` timed ones."""
    size = 16 if smoke else 28
    batch = perf.episode_source(point["ways"], 1, 15 if not smoke else 2, size)(point["tasks"])
    perf.reset_peak_rss()  # the data's loading is not the step's memory
    impl = implementations(point, smoke)[name]()
    torch.set_num_threads(impl.threads)
    impl.step(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        impl.step(batch)
        times.append(time.perf_counter() - t)
    return {"seconds": round(statistics.median(times), 4), "peak_rss_mb": round(perf.peak_rss_mb())}


def run_point(point: dict, name: str, repeats: int, smoke: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--point",
        json.dumps(point),
        "--impl",
        name,
        "--repeats",
        str(repeats),
    ] + (["--smoke"] if smoke else [])
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{name} at {point} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one point per curve (CI)")
    p.add_argument("--repeats", type=int, default=3, help="timed meta-iterations per point (default 3)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--point", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.point:
        print(json.dumps(measure(json.loads(args.point), args.impl, args.repeats, args.smoke)))
        return 0
    report = {
        "command": " ".join(["python benchmarks/scaling.py"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {perf.available_cores()} cores, torch {torch.__version__}",
        "repeats": args.repeats,
        "curves": {},
    }
    for curve, (key, values, changes, smoke_values) in CURVES.items():
        rows = []
        for value in smoke_values if args.smoke else values:
            point = {**BASE, **changes, key: value}
            if args.smoke:
                point["tasks"] = min(point["tasks"], 2)
            names = list(implementations(point, args.smoke))
            if curve != "inner steps":
                names = [n for n in names if n != CHECKPOINTED]
            for name in names:
                if name == CHECKPOINTED and point["first_order"]:
                    continue
                r = run_point(point, name, args.repeats, args.smoke)
                rows.append({"implementation": name, key: value, **r})
                print(
                    f"{curve:12s} {key}={value!s:5s} {name:26s} "
                    f"{r['seconds']:8.3f} s/iteration {r['peak_rss_mb']:6d} MB",
                    flush=True,
                )
        report["curves"][curve] = {"key": key, "base": {**BASE, **changes}, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.smoke and out == RESULTS:
        write_doc(report, ROOT / "docs")
    return 0


def plot(report: dict, path: Path) -> None:
    from metalab.plots import plt  # the Agg backend, set up once

    curves = report["curves"]
    # One colour per implementation across all panels.
    names = list(dict.fromkeys(r["implementation"] for c in curves.values() for r in c["rows"]))
    colour = {n: f"C{i}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(2, len(curves), figsize=(4 * len(curves), 7), squeeze=False)
    for col, (curve, c) in enumerate(curves.items()):
        key = c["key"]
        for name in dict.fromkeys(r["implementation"] for r in c["rows"]):
            rows = [r for r in c["rows"] if r["implementation"] == name]
            xs = [("first" if r[key] else "second") if key == "first_order" else r[key] for r in rows]
            axes[0][col].plot(xs, [r["seconds"] for r in rows], marker="o", label=name, color=colour[name])
            axes[1][col].plot(
                xs, [r["peak_rss_mb"] for r in rows], marker="o", label=name, color=colour[name]
            )
        axes[0][col].set_title(
            f"{curve} ({', '.join(f'{k}={v}' for k, v in c['base'].items() if k != key)})", fontsize=9
        )
        axes[1][col].set_xlabel(curve)
        if key == "tasks":
            for row in axes:
                row[col].set_xscale("log", base=2)
    axes[0][0].set_ylabel("seconds per meta-iteration")
    axes[1][0].set_ylabel("peak RSS (MB)")
    axes[0][0].legend(fontsize=8)
    axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_doc(report: dict, docs: Path) -> None:
    plot(report, docs / "scaling.png")
    lines = [
        "# Scaling: time and memory per MAML meta-iteration",
        "",
        f"Measured by `{report['command']}` on {report['date']} ({report['machine']}); each point is a fresh",
        f"process: median seconds over {report['repeats']} meta-iterations after one warm-up, "
        "and the process's",
        "peak RSS while building and stepping (torch and the episodes already loaded). "
        "Conv-4, 28x28 Omniglot, N-way 1-shot, 15 queries per class,",
        "second order unless stated. The benchmark's docstring (`benchmarks/scaling.py`) gives the settings.",
        "",
        "![time and peak memory per meta-iteration](scaling.png)",
    ]
    for curve, c in report["curves"].items():
        key = c["key"]
        names = list(dict.fromkeys(r["implementation"] for r in c["rows"]))
        values = list(dict.fromkeys(r[key] for r in c["rows"]))
        base = ", ".join(f"{k} {v}" for k, v in c["base"].items() if k != key)
        lines += [
            "",
            f"## {curve} ({base})",
            "",
            f"| {key} | " + " | ".join(f"{n}: s / MB" for n in names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for v in values:
            cells = []
            for n in names:
                r = next((r for r in c["rows"] if r["implementation"] == n and r[key] == v), None)
                cells.append("-" if r is None else f"{r['seconds']:.2f} / {r['peak_rss_mb']}")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    (docs / "scaling.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {docs / 'scaling.md'} and {docs / 'scaling.png'}")


if __name__ == "__main__":
    sys.exit(main())
