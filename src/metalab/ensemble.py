"""Ensembles of trained learners: several checkpoints answering each task as one model.

A classifier ensemble adapts every member to the task's support set and averages the members'
class probabilities (its logits are the log of that mean); a regression ensemble averages the
members' predictions. The usual members are the checkpoints of one run at its best validation
figures (`keep_top`), the test protocol of MAML++'s authors (Antoniou et al. 2019 score an ensemble
of the five models best on validation):

    learner, configs, states = ensemble_from_checkpoints(sorted(Path("runs/mamlpp/top").glob("*.pt")))
    evaluate(learner, build_source(configs[0], "test"), 1000)

`metalab eval A.pt B.pt ...` does the same from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .algorithms.base import MetaLearner
from .config import Config, ConfigError
from .tasks.episode import TaskBatch

__all__ = ["Ensemble", "ensemble_from_checkpoints", "TASK_KEYS"]

# The config keys that make two checkpoints' test episodes the same: members must agree on them.
TASK_KEYS = ("benchmark", "split", "data_dir", "test_ways", "test_shots", "test_queries")


class Ensemble(MetaLearner):
    """Trained learners answering together; for evaluation and prediction, not for training.

    `steps` reaches the members with an inner loop; the others ignore it, as `MetaLearner.predict`
    says. Members must be of one kind (classification or regression) and answer in one shape."""

    def __init__(self, members: Sequence[MetaLearner]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        kinds = {m.kind for m in members}
        if len(kinds) != 1:
            raise ConfigError(f"an ensemble's members must be of one kind, got {sorted(kinds)}")
        (self.kind,) = kinds
        if self.kind not in ("classification", "regression"):
            raise ConfigError(f"{self.kind} learners cannot form an ensemble (they are scored by returns)")
        self.members = nn.ModuleList(members)
        self.inner_loop = any(m.inner_loop for m in members)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        raise TypeError("an ensemble is evaluated, not trained: train its members")

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        outs = []
        for m in self.members:
            kwargs = {"steps": steps} if steps is not None and m.inner_loop else {}
            outs.append(m.predict(support_x, support_y, query_x, **kwargs))
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) != 1:
            raise ConfigError(f"an ensemble's members answered in different shapes: {sorted(shapes)}")
        if self.kind == "classification":
            return torch.stack([o.float().softmax(-1) for o in outs]).mean(0).log()
        return torch.stack([o.float() for o in outs]).mean(0)


def ensemble_from_checkpoints(
    paths: Sequence[str | Path], device: str | None = None
) -> tuple[Ensemble, list[Config], list[dict]]:
    """The ensemble of the checkpoints (or `zoo:NAME`s) at `paths` on `device`, their configs (the
    first one's test settings make the ensemble's test episodes) and their states. Members whose
    test episodes would differ (`TASK_KEYS`) are a `ConfigError` naming the key."""
    from .train import learner_on_device

    loaded = [learner_on_device(p, device) for p in paths]
    if not loaded:
        raise ConfigError("an ensemble needs at least one checkpoint")
    first = loaded[0][1].to_dict()
    for path, (_, config, _) in zip(paths[1:], loaded[1:]):
        theirs = config.to_dict()
        for k in TASK_KEYS:
            if first.get(k) != theirs.get(k):
                raise ConfigError(
                    f"{path} tests on other episodes than {paths[0]}: {k} is {theirs.get(k)!r} there, "
                    f"{first.get(k)!r} here; an ensemble's members must agree on {', '.join(TASK_KEYS)}"
                )
    devices = {next(m.parameters()).device for m, _, _ in loaded if next(m.parameters(), None) is not None}
    if len(devices) > 1:
        raise ConfigError(f"an ensemble's members are on different devices: {sorted(map(str, devices))}")
    return Ensemble([m for m, _, _ in loaded]), [c for _, c, _ in loaded], [s for _, _, s in loaded]
