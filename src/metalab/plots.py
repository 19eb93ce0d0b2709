"""Figures drawn with matplotlib (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .tasks import SineTasks  # noqa: E402

__all__ = ["sine_adaptation_figure", "SINE_TEST_SEED"]

# The figure's task is drawn from seed SINE_TEST_SEED + seed: far from the training seeds.
SINE_TEST_SEED = 10_000_000


def sine_adaptation_figure(
    learners: dict, out: str | Path, *, shots: int = 5, steps=(1, 10), seed: int = 0
) -> Path:
    """Figure 2 of Finn et al. 2017: one held-out sine task, its K support points, and each learner's
    prediction before adaptation and after each number of gradient steps in `steps`.

    Args:
        learners: title -> a trained sine-wave learner with `predict(..., steps=n)`, on any device
            (the task is drawn on the CPU and moved to each learner's).
        out: the PNG to write.
    """
    source = SineTasks(shots, 1, seed=SINE_TEST_SEED + seed)
    amplitude, phase = source.sample_functions(1)
    support_x = source._uniform((1, shots, 1), source.x_range)
    support_y = SineTasks.evaluate(amplitude, phase, support_x)
    grid = torch.linspace(-5, 5, 200).reshape(1, -1, 1)
    truth = SineTasks.evaluate(amplitude, phase, grid)
    fig, axes = plt.subplots(1, len(learners), figsize=(5.5 * len(learners), 4), squeeze=False)
    for ax, (title, learner) in zip(axes[0], learners.items()):
        learner.eval()
        device = next(learner.parameters()).device
        ax.plot(grid[0, :, 0], truth[0, :, 0], color="tab:red", lw=2, label="ground truth")
        for n, style in zip([0, *steps], [":", "--", "-", "-."]):
            with torch.no_grad():
                pred = learner.predict(
                    support_x.to(device), support_y.to(device), grid.to(device), steps=n
                ).cpu()
            label = "pre-update" if n == 0 else f"{n} grad step{'s' if n > 1 else ''}"
            ax.plot(grid[0, :, 0], pred[0, :, 0], style, lw=1.5, label=label)
        ax.scatter(
            support_x[0, :, 0],
            support_y[0, :, 0],
            marker="^",
            color="purple",
            s=60,
            zorder=5,
            label=f"{shots} points used for grad",
        )
        ax.set_title(f"{title}, K={shots}")
        ax.set_ylim(-6, 6)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
