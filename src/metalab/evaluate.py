"""Meta-test: the mean figure over many test tasks with its 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from .algorithms.base import MetaLearner
from .losses import task_metric

__all__ = ["EvalResult", "evaluate", "confidence_interval"]


@dataclass(frozen=True)
class EvalResult:
    """Mean accuracy (or MSE, or an RL learner's return) over `tasks` test tasks, with the half-width
    of its 95% interval."""

    metric: str
    mean: float
    ci95: float
    tasks: int
    steps: int | None = None
    diverged: int = 0  # tasks whose predictions were not finite (an inner loop that diverged)

    def __str__(self) -> str:
        value = (
            f"{100 * self.mean:.2f}% +/- {100 * self.ci95:.2f}%"
            if self.metric == "accuracy"
            else f"{self.mean:.3f} +/- {self.ci95:.3f}"
        )
        steps = f" after {self.steps} step{'s' if self.steps != 1 else ''}" if self.steps is not None else ""
        warning = (
            f"; not finite on {self.diverged} of {self.tasks} tasks: the adaptation diverged"
            if self.diverged
            else ""
        )
        return f"{self.metric}{steps}: {value} (95% CI, {self.tasks} tasks{warning})"

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "mean": self.mean,
            "ci95": self.ci95,
            "tasks": self.tasks,
            "steps": self.steps,
            "diverged": self.diverged,
        }


def confidence_interval(values: Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width (normal approximation, 1.96 standard errors)."""
    values = values.double()
    n = values.numel()
    if n == 0:
        raise ValueError("no values to average")
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def _device_of(learner: MetaLearner) -> torch.device:
    """The device of the learner's parameters (the CPU for a learner without any)."""
    first = next(learner.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def evaluate(
    learner: MetaLearner,
    source,
    tasks: int,
    *,
    batch_size: int = 25,
    steps: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """Adapt to `tasks` tasks drawn from `source` and score each on its queries.

    Args:
        source: anything with `sample(T) -> TaskBatch` (a `SineTasks`, an `EpisodeSampler`); its
            episodes are moved to the learner's device where they come from elsewhere.
        steps: inner steps for gradient-based learners (default: the learner's own).
        progress: show a progress bar over the tasks (tqdm, as training shows; only on a terminal).
    """
    device = _device_of(learner)
    was_training = learner.training
    learner.eval()
    kwargs = {} if steps is None else {"steps": steps}
    scores, diverged = [], 0
    what = "meta-test" + (f", {steps} step{'s' if steps != 1 else ''}" if steps is not None else "")
    # disable=None: tqdm stays quiet where stderr is not a terminal (a log file, a pipe).
    bar = tqdm(
        total=tasks,
        desc=what,
        unit="task",
        leave=False,
        dynamic_ncols=True,
        disable=None if progress else True,
    )
    try:
        done = 0
        while done < tasks:
            batch = source.sample(min(batch_size, tasks - done))
            if learner.kind == "rl":  # scored by the returns of episodes after adapting
                score = learner.evaluate_batch(batch, **kwargs)
                scores.append(score)
                diverged += int((~score.isfinite()).sum())
                done += batch.num_tasks
                continue
            if batch.support_x.device != device:
                batch = batch.to(device)
            with torch.no_grad():
                out = learner.predict(batch.support_x, batch.support_y, batch.query_x, **kwargs)
            scores.append(task_metric(learner.kind, out, batch.query_y))
            diverged += int((~out.flatten(1).isfinite().all(1)).sum())
            done += batch.num_tasks
            bar.update(batch.num_tasks)
    finally:
        bar.close()
        learner.train(was_training)
    mean, ci = confidence_interval(torch.cat(scores).cpu())
    return EvalResult(learner.metric_name(), mean, ci, tasks, steps, diverged)
