"""An algorithm of your own, registered from outside metalab: Prototypical Networks scored by the
cosine similarity to each prototype, times a temperature (a key of its own).

    metalab train --plugins examples/cosine_protonet.py --algorithm cosine_protonet --temperature 10 ...

docs/extending.md walks through this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms import AlgorithmSpec, MetaLearner, Needs, OptionError, Options, option, register
from metalab.algorithms.metric.common import embed_tasks, num_ways, one_hot_support
from metalab.tasks import TaskBatch


@dataclass
class CosineOptions(Options):
    temperature: float = option(10.0, "scale of the cosine logits (softmax temperature)", allowed="> 0")

    def check(self, config) -> None:
        if self.temperature <= 0:
            raise OptionError(f"config key 'temperature' must be > 0, got {self.temperature}")


class CosinePrototypes(MetaLearner):
    """Logits temperature * cos(f(x), c_k) against the class means c_k of the embedded support set."""

    kind = "classification"

    def __init__(self, encoder: nn.Module, temperature: float) -> None:
        super().__init__()
        self.encoder, self.temperature = encoder, temperature

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        support_z, query_z = (z.flatten(2) for z in embed_tasks(self.encoder, support_x, query_x))
        onehot = one_hot_support(support_y, num_ways(support_y)).to(support_z.dtype)  # (T, S, N)
        prototypes = onehot.transpose(1, 2) @ support_z / onehot.sum(1)[..., None]  # (T, N, d)
        return (
            self.temperature * F.normalize(query_z, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
        )

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        logits = self.predict(batch.support_x, batch.support_y, batch.query_x)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


register(
    AlgorithmSpec(
        name="cosine_protonet",
        family="metric",
        summary="Prototypical Networks with scaled cosine similarity (an example plugin)",
        learner=CosinePrototypes,
        options=CosineOptions,
        needs=Needs(kinds=("classification",)),
        build=lambda ctx: CosinePrototypes(ctx.embedding()[0], ctx.options.temperature),
    )
)
