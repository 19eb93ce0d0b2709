"""A training process killed with SIGKILL, even while it writes a checkpoint, resumes to exactly the
weights and optimizer state of an uninterrupted run; a diverging run stops with one line naming the
iteration and the quantity, and keeps a checkpoint of finite weights."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from helpers import REPO, run
from metalab.checkpoint import load_checkpoint

CONFIG = ["--iterations", "150", "--meta-batch", "4", "--checkpoint-every", "3", "--log-every", "1"]
CONFIG += ["--val-every", "0", "--threads", "1", "--quiet", "--no-eval"]

# The child's checkpoint writes are held open for 50 ms after their data is written (before the
# rename), so that the kill can be aimed at a write in flight.
SLOW_FSYNC = (
    "import os, sys, time\n"
    "fsync = os.fsync\n"
    "os.fsync = lambda fd: (time.sleep(0.05), fsync(fd))[1]\n"
    "from metalab.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _kill_during_a_checkpoint_write(run_dir, deadline_s=60.0) -> tuple[bool, int]:
    """Start `metalab train` into `run_dir` and SIGKILL it while a checkpoint's temporary file
    exists (after at least 30 iterations were logged); (whether it was caught in flight, the
    iterations logged when it died)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_FSYNC, "train", *CONFIG, "--run-dir", str(run_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    metrics, started, in_flight = run_dir / "metrics.jsonl", time.monotonic(), False
    try:
        while time.monotonic() - started < deadline_s:
            assert child.poll() is None, f"training ended before it was killed: {child.stderr.read()}"
            if metrics.exists() and metrics.read_text().count("\n") >= 30:
                if any(p.name.startswith(".checkpoint.pt.") for p in run_dir.iterdir()):
                    in_flight = True
                    break
                if metrics.read_text().count("\n") >= 100:
                    break  # no write caught in flight: kill it anyway
            time.sleep(0.002)
        else:
            raise AssertionError("training did not get going within the deadline")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return in_flight, metrics.read_text().count("\n")


def test_a_run_killed_mid_checkpoint_resumes_bit_identical(tmp_path, capsys, one_thread):
    killed = tmp_path / "killed"
    killed.mkdir()
    in_flight, logged = _kill_during_a_checkpoint_write(killed)
    assert in_flight, "the kill was meant to land while a checkpoint was being written"
    assert any(p.name.endswith(".tmp") for p in killed.iterdir())  # the write it interrupted
    interrupted_at = load_checkpoint(killed / "checkpoint.pt", resuming=True)["iteration"]
    assert 0 < interrupted_at < 150 and interrupted_at <= logged

    code, out, err = run(capsys, "train", "--run-dir", killed, "--resume", "--quiet", "--no-eval")
    assert code == 0, err
    assert f"resuming {killed} at iteration {interrupted_at}" in out
    code, _, err = run(capsys, "train", *CONFIG, "--run-dir", tmp_path / "whole")
    assert code == 0, err

    resumed = torch.load(killed / "checkpoint.pt", weights_only=True)
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert resumed["iteration"] == whole["iteration"] == 150
    for key in ("learner", "optimizer", "schedule", "rng"):
        _assert_identical(resumed[key], whole[key], key)

    def records(run_dir):  # the metrics log, but for the wall-clock
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if k not in ("seconds", "cpu_seconds")}
            for line in lines
        ]

    assert records(killed) == records(tmp_path / "whole")


def _assert_identical(a, b, where):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_diverging_run_stops_through_the_command_line(tmp_path, capsys, one_thread):
    """`--outer-lr 1e6` takes the weights to inf / nan within a few iterations: exit status 2, one
    line naming the iteration and what is not finite, the last checkpoint of finite weights kept
    and still usable."""
    run_dir = tmp_path / "run"
    code, _, err = run(
        capsys,
        "train",
        "--outer-lr",
        "1e6",
        "--iterations",
        "40",
        "--meta-batch",
        "5",
        "--checkpoint-every",
        "1",
        "--val-every",
        "0",
        "--run-dir",
        run_dir,
        "--quiet",
        "--no-eval",
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("metalab: error: training diverged at iteration ")
    diverged = int(lines[0].split("iteration ")[1].split(":")[0])
    assert (
        "the meta-loss is nan" in lines[0]
        or "the meta-loss is inf" in lines[0]
        or "is not finite" in lines[0]
    )
    state = load_checkpoint(run_dir / "checkpoint.pt", resuming=True)
    assert f"keeps iteration {state['iteration']}" in lines[0]
    assert 0 < state["iteration"] < diverged
    assert all(v.isfinite().all() for v in state["learner"].values())
    code, out, err = run(capsys, "eval", run_dir / "checkpoint.pt", "--tasks", "5")
    assert code == 0 and f"iteration {state['iteration']}" in out, err
