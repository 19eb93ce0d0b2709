"""Siamese networks: a learned same/different verifier, used for N-way K-shot classification.

References:
    Koch, Zemel & Salakhutdinov 2015, "Siamese Neural Networks for One-shot Image Recognition":
    section 3.1, the twin networks joined by a weighted L1 distance, p = sigmoid(sum_j alpha_j
    |h_1^(j) - h_2^(j)|) (plus a bias, as in a dense output unit); section 3.2, the binary
    cross-entropy y log p + (1 - y) log(1 - p) over same (y = 1) / different (y = 0) pairs;
    section 4.3 (one-shot classification), a test image gets the class of the support image the
    verifier finds most similar.

Deviations from the paper: the twins are a Conv-4 embedding (28x28 inputs, 64 features) instead of
the paper's larger network for 105x105 images (4 conv layers of 64-256 filters and a 4096-unit
sigmoid layer), trained with Adam instead of per-layer SGD with momentum and L2 weight penalties;
pairs come from each episode's support and query examples (all pairs, the same-class and the
different-class ones weighted equally) rather than from a fixed set of sampled pairs with affine
distortions. For K > 1 shots a class scores as its most similar support example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, BuildContext, Needs, register
from .common import EVAL_CHUNK, check_embedding, embed_tasks, num_ways, one_hot_support

__all__ = ["SiameseNet"]


class SiameseNet(MetaLearner):
    """A twin embedding network with a weighted-L1 similarity head.

    Args:
        encoder: the twin, images (n, *input_shape) -> embeddings (n, d), shared by both inputs of a
            pair (e.g. `Conv4(norm="batch")`).
        feature_dim: d.

    Example:
        >>> from metalab.models import Conv4
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=2).sample(3)
        >>> net = SiameseNet(Conv4(norm="batch"), feature_dim=64)
        >>> loss, metrics = net.meta_loss(batch)
        >>> tuple(net.predict(batch.support_x, batch.support_y, batch.query_x).shape)
        (3, 10, 5)

    References: Koch et al. 2015, sections 3.1-3.2 and 4.3.
    """

    kind = "classification"

    def __init__(self, encoder: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.distance = nn.Linear(feature_dim, 1)  # the alpha_j of the weighted L1 distance, and a bias

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """The logit of p(same) for every pair of embeddings of a and b, symmetric in its arguments.

        Args:
            a: of shape (T, n, d); b: of shape (T, m, d).

        Returns:
            of shape (T, n, m): sum_j alpha_j |a_i^(j) - b_k^(j)| + bias (sigmoid gives p).
        """
        return self.distance((a[:, :, None] - b[:, None]).abs()).squeeze(-1)

    def _class_scores(self, pair_logits: Tensor, support_y: Tensor, ways: int) -> Tensor:
        """(T, n_query, n_support) pair logits -> (T, n_query, N): the best support example per class."""
        member = one_hot_support(support_y, ways).bool()  # (T, S, N)
        masked = pair_logits[..., None].masked_fill(~member[:, None], float("-inf"))  # (T, Q, S, N)
        return masked.amax(dim=2)

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Score every query against every class by its most similar support example.

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support), labels 0..N-1.
            query_x: of shape (T, n_query, *input_shape).
            steps: ignored (there is no inner loop); accepted so that evaluation treats every learner alike.

        Returns:
            of shape (T, n_query, N): the logit of p(same) of the best support example of each class.
        """
        chunk = None if self.training else EVAL_CHUNK
        support_z, query_z = embed_tasks(self.encoder, support_x, query_x, chunk=chunk)
        if self.training:
            pair_logits = self.similarity(query_z.flatten(2), support_z.flatten(2))
        else:  # one task at a time: the (T, Q, S, d) differences of a whole evaluation batch are large
            pair_logits = torch.cat(
                [
                    self.similarity(q, s)
                    for q, s in zip(query_z.flatten(2).split(1), support_z.flatten(2).split(1))
                ]
            )
        return self._class_scores(pair_logits, support_y, num_ways(support_y))

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Balanced binary cross-entropy over all pairs of distinct examples of each episode.

        The support and query examples of an episode (N classes, K + Q of each) are pooled and every
        unordered pair of distinct examples is a training pair; the same-class and the
        different-class pairs each contribute half of the loss (there are about N - 1 times more
        different-class pairs). The accuracy is the N-way accuracy of the queries, as in `predict`.
        """
        support_z, query_z = embed_tasks(self.encoder, batch.support_x, batch.query_x)
        z = torch.cat([support_z, query_z], dim=1).flatten(2)  # (T, M, d)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)  # (T, M)
        logits = self.similarity(z, z)  # (T, M, M)
        m = z.shape[1]
        upper = torch.ones(m, m, dtype=torch.bool, device=z.device).triu(1).expand_as(logits)
        same = (y[:, :, None] == y[:, None, :]) & upper
        different = (y[:, :, None] != y[:, None, :]) & upper
        if not same.any() or not different.any():
            raise ValueError(
                "a siamese episode needs at least two examples of some class (shots + queries >= 2) "
                "and at least two classes, to form both same-class and different-class pairs"
            )
        target = same.to(logits.dtype)
        losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        # Masked sums rather than losses[same]: boolean indexing has a data-dependent size, which
        # makes a GPU wait for the mask's count before it can go on.
        loss = 0.5 * (losses * same).sum() / same.sum() + 0.5 * (losses * different).sum() / different.sum()
        s = batch.support_x.shape[1]
        scores = self._class_scores(logits[:, s:, :s], batch.support_y, num_ways(batch.support_y))
        accuracy = (scores.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


def _build(ctx: BuildContext) -> SiameseNet:
    encoder, feature_dim = check_embedding(ctx)
    return SiameseNet(encoder, feature_dim=feature_dim)


register(
    AlgorithmSpec(
        name="siamese",
        family="metric",
        summary=(
            "Siamese networks (Koch et al. 2015): a same/different verifier, the most similar support wins"
        ),
        learner=SiameseNet,
        needs=Needs(kinds=("classification",)),
        build=_build,
    )
)
