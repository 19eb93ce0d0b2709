"""The 2D-navigation figure of Finn et al. 2017 (figure 4, top left) from meta-tested run folders:
mean return after 0-3 inner steps with 95% intervals, one line per run.

    python benchmarks/rl_figure.py --runs MAML=RUN1 pretrained=RUN2 random=RUN3 --out docs/rl_returns.png

Each RUN folder holds the results.json that `metalab train` writes after meta-testing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="LABEL=RUN_DIR pairs")
    parser.add_argument("--out", default="docs/rl_returns.png")
    parser.add_argument("--title", default="2D navigation")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for pair in args.runs:
        label, run = pair.split("=", 1)
        tests = json.loads((Path(run) / "results.json").read_text())["test"]
        steps = [t["steps"] for t in tests]
        means = [t["mean"] for t in tests]
        ci = [t["ci95"] for t in tests]
        ax.errorbar(steps, means, yerr=ci, marker="o", capsize=3, label=label)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return (95% CI)")
    ax.set_xticks([0, 1, 2, 3])
    ax.set_title(args.title)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
