"""`metalab train` beside busy processes: how the thread choice holds up when the cores are shared.

Runs the README's main command (`metalab train`: MAML on sine waves; `--iterations` shortens it)
with the default threads and with explicit `--threads N`, first alone and then beside 2, 4, ...
CPU-bound processes of its own (a Python busy loop each, killed at the end), the variants
alternated and repeated so that drifts in the machine's other load hit them alike. `--threads C`
for the C cores this process may use is torch's own default, one intra-op thread per core, against
the choice of `metalab.threads`.

Beside each time it records the machine's background: the 1-minute load average and the runnable
threads sampled during the run (the command's own threads and the busy processes included), and,
just before the run, the runnable threads that are neither (other people's work on a shared machine).
Prints a table and writes benchmarks/results/load.json.

    python benchmarks/load.py                                   # 2,000 iterations; 0, 2 and 4 busy
    python benchmarks/load.py --iterations 1000 --busy 0 2 --repeats 2 --variants default 1 2
    python benchmarks/load.py --iterations 10000 --busy 0 4 --repeats 1   # the README's full command
    python benchmarks/load.py --iterations 1000 --busy 0 2 --variants 1 2 2:passive default:passive
    python benchmarks/load.py --args "--config configs/omniglot/protonet_5w1s.yaml
        --data-dir ../shared/data/omniglot --val-every 0 --no-eval" --iterations 40 --name protonet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from metalab.parallel import available_cores
from metalab.threads import runnable_threads

ROOT = Path(__file__).resolve().parent.parent
# CPU-bound, and gone within a fraction of a second of this script, however it ends.
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(10**6): pass"


class Sampler(threading.Thread):
    """Samples the machine's runnable threads every `every` seconds until stopped."""

    def __init__(self, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._done = every, [], threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            n = runnable_threads()
            if n is not None:
                self.samples.append(n - 1)  # not this sampler

    def stop(self) -> float | None:
        self._done.set()
        self.join()
        return round(statistics.mean(self.samples), 2) if self.samples else None


def variant_args(variant: str) -> list[str]:
    threads = variant.split(":")[0]
    return [] if threads == "default" else ["--threads", threads]


def variant_env(variant: str) -> dict[str, str]:
    """A ':passive' suffix runs the variant with OpenMP's passive wait policy (threads sleep at the
    end of a parallel operation instead of spinning); it must be set before torch starts."""
    env = dict(os.environ)
    if variant.endswith(":passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def variant_label(variant: str) -> str:
    threads, _, policy = variant.partition(":")
    suffix = " OMP_WAIT_POLICY=PASSIVE" if policy == "passive" else ""
    if threads == "default":
        return "default" + suffix
    note = " (torch's default)" if int(threads) == available_cores() and not suffix else ""
    return f"--threads {threads}{suffix}{note}"


def one_run(variant: str, args, busy: int) -> dict:
    """One `metalab train` in a fresh run folder: its wall-clock, training seconds and background."""
    with tempfile.TemporaryDirectory(prefix="metalab-load-") as tmp:
        command = [sys.executable, "-m", "metalab.cli", "train", "--iterations", str(args.iterations)]
        command += ["--run-dir", str(Path(tmp) / "run"), *shlex.split(args.args), *variant_args(variant)]
        before = runnable_threads()
        load1 = os.getloadavg()[0]
        sampler = Sampler()
        sampler.start()
        t = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=args.timeout,
                cwd=ROOT,
                env=variant_env(variant),
            )
            wall, code = time.perf_counter() - t, done.returncode
        except subprocess.TimeoutExpired:
            wall, code = None, "timeout"
        row = {
            "variant": variant,
            "busy": busy,
            "wall_s": None if wall is None else round(wall, 2),
            "train_s": None,
            "iterations_per_s": None,
            "load1_before": round(load1, 2),
            "background_runnable_before": None if before is None else max(0, before - busy - 1),
            "runnable_during": sampler.stop(),
            "exit": code,
        }
        metrics = Path(tmp) / "run" / "metrics.jsonl"
        if code == 0 and metrics.exists():
            last = json.loads(metrics.read_text().splitlines()[-1])
            row["train_s"] = round(last["seconds"], 2)
            row["iterations_per_s"] = round(last["iteration"] / last["seconds"], 1)
        elif code != "timeout":
            row["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:]
    return row


def summarise(rows: list[dict], variants: list[str], levels: list[int]) -> list[dict]:
    table = []
    for busy in levels:
        for v in variants:
            mine = [r for r in rows if r["busy"] == busy and r["variant"] == v]
            walls = [r["wall_s"] for r in mine if r["wall_s"] is not None and r["exit"] == 0]
            trains = [r["train_s"] for r in mine if r["train_s"] is not None]
            entry = {
                "busy": busy,
                "variant": v,
                "runs": len(mine),
                "timeouts": sum(r["exit"] == "timeout" for r in mine),
                "wall_s_median": round(statistics.median(walls), 1) if walls else None,
                "wall_s_range": [min(walls), max(walls)] if walls else None,
                "train_s_median": round(statistics.median(trains), 1) if trains else None,
                "background_runnable_before": [r["background_runnable_before"] for r in mine],
                "runnable_during": [r["runnable_during"] for r in mine],
                "load1_before": [r["load1_before"] for r in mine],
            }
            table.append(entry)
    quiet = {e["variant"]: e["wall_s_median"] for e in table if e["busy"] == levels[0]}
    for e in table:
        q = quiet.get(e["variant"])
        e["x_first_level"] = round(e["wall_s_median"] / q, 2) if q and e["wall_s_median"] else None
    return table


def markdown(table: list[dict], levels: list[int]) -> str:
    lines = [
        f"| busy processes | threads | wall s (median, range) | training s | x the {levels[0]}-busy time "
        "| background runnable before | runnable during |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in table:
        wall = (
            "-"
            if e["wall_s_median"] is None
            else f"{e['wall_s_median']} ({e['wall_s_range'][0]}-{e['wall_s_range'][1]})"
        )
        if e["timeouts"]:
            wall += f", {e['timeouts']} timed out"
        lines.append(
            f"| {e['busy']} | {variant_label(e['variant'])} | {wall} | {e['train_s_median']} | "
            f"{e['x_first_level']} | {', '.join(map(str, e['background_runnable_before']))} | "
            f"{', '.join(map(str, e['runnable_during']))} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2, 4], help="busy processes beside the command")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="'default' and thread counts (default: default 1 2 ... cores)",
    )
    p.add_argument("--args", default="", help="more arguments for `metalab train` (one string)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a run counts as timed out")
    p.add_argument("--name", default="sine_maml", help="the entry of the results file to write")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/load.json"))
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still kill the busy processes
    variants = args.variants or ["default"] + [str(n) for n in range(1, available_cores() + 1)]
    rows = []
    for busy in args.busy:
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)
            for r in range(args.repeats):
                shift = r % len(variants)  # alternate the order: no variant always runs first
                for v in variants[shift:] + variants[:shift]:
                    row = one_run(v, args, busy)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for h in hogs:
                h.kill()
            for h in hogs:
                h.wait()
    table = summarise(rows, variants, args.busy)
    print(markdown(table, args.busy))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[args.name] = {
        "command": "python benchmarks/load.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "train_command": f"metalab train --iterations {args.iterations} {args.args}".strip(),
        "cores": available_cores(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "nice": os.nice(0),
        "date": time.strftime("%Y-%m-%d"),
        "table": table,
        "runs": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
