"""Prototypical Networks: classify a query by the nearest class mean in a learned embedding space.

References:
    Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning", section 2.2:
    eq. 1, the prototype c_k = 1/|S_k| sum_{(x_i, y_i) in S_k} f_phi(x_i), the mean embedded support
    example of class k; eq. 2, p(y = k | x) = softmax_k(-d(f_phi(x), c_k)) with d the squared
    Euclidean distance. The loss is the negative log-probability of the true class of each query,
    averaged over the queries of the episode.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, Needs, register
from .common import EVAL_CHUNK, check_embedding, embed_tasks, num_ways, one_hot_support

__all__ = ["ProtoNet", "class_prototypes", "squared_distances"]


def class_prototypes(support_z: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """Eq. 1: the mean embedding of each class's support examples.

    Args:
        support_z: of shape (T, n_support, d).
        support_y: of shape (T, n_support), labels 0..N-1 (any order, any number per class >= 1).
        ways: N.

    Returns:
        prototypes of shape (T, N, d).
    """
    onehot = one_hot_support(support_y, ways).to(support_z.dtype)  # (T, S, N)
    sums = onehot.transpose(1, 2) @ support_z  # (T, N, d)
    counts = onehot.sum(1).clamp_min(1.0)  # (T, N)
    return sums / counts[..., None]


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ||a_i - b_j||^2 of shape (T, n, m), from (T, n, d) and (T, m, d).

    Expanded as |a|^2 + |b|^2 - 2 a.b (a batched matmul, no (T, n, m, d) intermediate), clamped at 0
    against rounding.
    """
    a2 = a.pow(2).sum(-1, keepdim=True)  # (T, n, 1)
    b2 = b.pow(2).sum(-1)[:, None, :]  # (T, 1, m)
    return (a2 + b2 - 2.0 * (a @ b.transpose(1, 2))).clamp_min(0.0)


class ProtoNet(MetaLearner):
    """Prototypical Networks around any embedding network.

    The training episodes may have more classes than the test episodes (the paper trains Omniglot
    models on 60-way episodes and tests 5- and 20-way): nothing here depends on N.

    Args:
        encoder: f_phi, maps images (n, *input_shape) to embeddings (n, d); the paper's is Conv-4
            with standard BatchNorm (`Conv4(norm="batch")`), so eval mode uses running statistics.

    Example:
        >>> from metalab.models import Conv4
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=2).sample(3)
        >>> net = ProtoNet(Conv4(norm="batch"))
        >>> loss, metrics = net.meta_loss(batch)
        >>> tuple(net.predict(batch.support_x, batch.support_y, batch.query_x).shape)
        (3, 10, 5)

    References: Snell et al. 2017, eq. 1-2.
    """

    kind = "classification"

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Logits -d(f(x), c_k) of every query for every class (eq. 2 before the softmax).

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support), labels 0..N-1.
            query_x: of shape (T, n_query, *input_shape).
            steps: ignored (there is no inner loop); accepted so that evaluation treats every learner alike.

        Returns:
            logits of shape (T, n_query, N): minus the squared Euclidean distance to each prototype.
        """
        chunk = None if self.training else EVAL_CHUNK
        support_z, query_z = embed_tasks(self.encoder, support_x, query_x, chunk=chunk)
        prototypes = class_prototypes(support_z.flatten(2), support_y, num_ways(support_y))
        return -squared_distances(query_z.flatten(2), prototypes)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean cross-entropy of the queries' true classes over all tasks of the batch."""
        logits = self.predict(batch.support_x, batch.support_y, batch.query_x)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


register(
    AlgorithmSpec(
        name="protonet",
        family="metric",
        summary="Prototypical Networks (Snell et al. 2017): nearest class mean in a learned embedding",
        learner=ProtoNet,
        needs=Needs(kinds=("classification",)),
        build=lambda ctx: ProtoNet(check_embedding(ctx)[0]),
    )
)
