"""The performance benchmarks' smoke runs (CI runs only these; the timed comparisons are benchmarks)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# one step and five steps in the inner loop (the 20-way workload), and a metric-based workload
WORKLOADS = ["maml_5w1s_second_order", "maml_20w1s_5steps_second_order", "matching_fce_5w1s"]


def test_perf_benchmark_smoke_checks_gradients_and_writes_results(tmp_path):
    out = tmp_path / "perf.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "perf.py"),
        "--smoke",
        "--repeats",
        "1",
        "--workloads",
        *WORKLOADS,
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for workload in WORKLOADS:
        check(workload, json.loads(out.read_text())["workloads"][workload])


def check(workload: str, rows: dict) -> None:
    fp32 = [name for name in rows if name.startswith("metalab") and "bf16" not in name]
    # MAML: the task-parallel engine and the plain loop, checked against each other
    assert len(fp32) == (2 if workload.startswith("maml") else 1), rows
    for name, row in rows.items():
        assert "excluded" not in row, f"{name}: {row}"
        assert row["steps_per_second"] > 0 and row["peak_rss_mb"] > 0
        if "bf16" not in name and workload.startswith("maml"):  # bf16: other arithmetic by choice
            assert row["max_grad_diff"] <= 1e-4


def test_scaling_benchmark_smoke_writes_every_curve(tmp_path):
    out = tmp_path / "scaling.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "scaling.py"),
        "--smoke",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    curves = json.loads(out.read_text())["curves"]
    assert set(curves) == {"meta-batch", "inner steps", "ways", "order"}
    steps = {r["implementation"] for r in curves["inner steps"]["rows"]}
    assert {
        "metalab",
        "metalab inner_checkpoint",
    } <= steps  # the memory-bounding option beside the plain loop
    for c in curves.values():
        for r in c["rows"]:
            assert r["seconds"] > 0 and r["peak_rss_mb"] > 0
