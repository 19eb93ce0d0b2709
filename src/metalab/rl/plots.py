"""Figures of the RL learners: 2D-navigation trajectories before and after adaptation (figure 4 of
Finn et al. 2017, bottom) and learning curves from a run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..builders import SPLIT_SEEDS  # noqa: E402
from .tasks import RLTasks  # noqa: E402

__all__ = ["rl_figure", "read_curve"]


def read_curve(run_dir: str | Path) -> list[dict]:
    """The training records of a run folder's metrics.jsonl (empty where there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rl_figure(learners: dict, run_dirs: dict, out: str | Path, *, steps: int = 3, seed: int = 0) -> Path:
    """One held-out task per figure: for navigation, each learner's trajectory before adaptation
    and after `steps` inner steps, with the goal; then every run's learning curve (mean return of
    the meta-batch before and after the inner step, per iteration).

    Args:
        learners: title -> an RL learner (`metalab.rl.MAMLRL`).
        run_dirs: title -> its run folder (for metrics.jsonl).
        out: the PNG to write.
        steps: inner steps of the adapted trajectory.
        seed: which held-out task to draw.
    """
    first = next(iter(learners.values()))
    benchmark = "navigation" if first.env.obs_dim == 2 else "halfcheetah"
    source = RLTasks(
        "navigation" if benchmark == "navigation" else _cheetah(first), SPLIT_SEEDS["test"] + seed
    )
    batch = source.sample(1)
    panels = (len(learners) if benchmark == "navigation" else 0) + 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.4), squeeze=False)
    if benchmark == "navigation":
        for ax, (title, learner) in zip(axes[0], learners.items()):
            learner.eval()
            returns, episodes = learner.adaptation(batch, steps)
            for k, style in ((0, ":"), (steps, "-")):
                path = episodes[k].obs[0, 0].cpu()
                live = episodes[k].mask[0, 0].cpu() > 0
                path = torch.cat([path[live], _last(episodes[k]).unsqueeze(0)])
                label = "pre-update" if k == 0 else f"{k} step{'s' if k > 1 else ''}"
                ax.plot(path[:, 0], path[:, 1], style, lw=2, label=f"{label} (return {returns[k][0]:.1f})")
            goal = batch.tasks[0]
            ax.plot([goal[0]], [goal[1]], "r*", ms=16, label="goal position")
            ax.plot([0], [0], "k.", ms=6)
            ax.set_title(title)
            ax.set_xlim(-0.6, 0.6)
            ax.set_ylim(-0.6, 0.6)
            ax.set_aspect("equal")
            ax.legend(fontsize=8, loc="upper left")
    curve_ax = axes[0][-1]
    for title, run_dir in run_dirs.items():
        records = [r for r in read_curve(run_dir) if "return" in r]
        if not records:
            continue
        its = [r["iteration"] for r in records]
        adapted = any(r.get("return_pre") != r["return"] for r in records)
        label = f"{title}: after the inner step" if adapted else title
        (line,) = curve_ax.plot(its, [r["return"] for r in records], lw=1.5, label=label)
        if adapted:
            curve_ax.plot(
                its, [r["return_pre"] for r in records], ":", color=line.get_color(), label=f"{title}: before"
            )
    curve_ax.set_xlabel("meta-iteration")
    curve_ax.set_ylabel("mean return of the meta-batch")
    curve_ax.set_title("learning curves")
    curve_ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _last(episodes) -> torch.Tensor:
    """Where the first trajectory of the first task ends: its last observation plus its last move
    (the observations are those before each action)."""
    live = episodes.mask[0, 0].cpu() > 0
    obs, actions = episodes.obs[0, 0].cpu()[live], episodes.actions[0, 0].cpu()[live]
    return obs[-1] + (0.1 * actions[-1]).clamp(-0.1, 0.1)


def _cheetah(learner) -> str:
    return "halfcheetah_vel" if learner.env.task == "vel" else "halfcheetah_dir"
