"""Relation Networks: a learned comparison of feature maps, scored in [0, 1] and regressed with MSE.

References:
    Sung, Yang, Zhang, Xiang, Torr & Hospedales 2018, "Learning to Compare: Relation Network for
    Few-Shot Learning", section 3.2: eq. 1, r_{i,j} = g_phi(C(f_varphi(x_i), f_varphi(x_j))), the
    relation score of a support class i (for K > 1 shots its embedded feature maps summed element-wise)
    and a query j, with C the concatenation of the feature maps along the channels; the objective
    function that follows it, sum_i sum_j (r_{i,j} - 1(y_i == y_j))^2, a squared error against one-hot
    targets (averaged here, as in the authors' code, instead of summed).
    Architecture (section 3.4, figure 2, Omniglot): the embedding module is 4 blocks of
    [conv 3x3, 64 filters, BatchNorm, ReLU], the first two followed by 2x2 max-pooling; the relation
    module 2 such blocks with pooling, then fully connected layers of 8 units (ReLU) and 1 (sigmoid).
    Paddings follow the authors' Omniglot code (floodsung/LearningToCompare_FSL): the first two
    embedding convolutions unpadded, the others padded, so 28x28 -> 64x5x5 feature maps -> 64x1x1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, BuildContext, Needs, register
from .common import EVAL_CHUNK, embed_tasks, num_ways, one_hot_support

__all__ = ["RelationNet", "RelationEmbedding", "RelationModule"]

# Query-class pairs per relation-module forward in eval mode (see `RelationNet.predict`).
_EVAL_PAIRS = 4096


def _block(cin: int, cout: int, padding: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=padding), nn.BatchNorm2d(cout), nn.ReLU()]
    return layers + [nn.MaxPool2d(2)] if pool else layers


class RelationEmbedding(nn.Sequential):
    """The paper's embedding module f_varphi for Omniglot, keeping the feature maps.

    Input of shape (n, in_channels, 28, 28) -> feature maps of shape (n, hidden, 5, 5).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64) -> None:
        super().__init__(
            *_block(in_channels, hidden, 0, True),
            *_block(hidden, hidden, 0, True),
            *_block(hidden, hidden, 1, False),
            *_block(hidden, hidden, 1, False),
        )


class RelationModule(nn.Module):
    """The relation module g_phi: 2 conv blocks with pooling, FC (ReLU) and FC (sigmoid). A block
    pools only a map of at least 2x2 (the paper's 5x5 maps pool twice).

    Args:
        channels: C of each feature map; the input has 2C channels (class map and query map).
        map_size: (H, W) of the feature maps, to size the first fully connected layer.
        hidden: units of the first fully connected layer (8 in the paper).

    Input of shape (n, 2C, H, W) -> relation scores in [0, 1] of shape (n,).
    """

    def __init__(self, channels: int = 64, map_size: tuple[int, int] = (5, 5), hidden: int = 8) -> None:
        super().__init__()
        # Each block pools 2x2 where the map is at least 2x2; a smaller map (a ResNet's at small
        # image sizes) goes through the block unpooled, an identity in the pool's place.
        layers: list[nn.Module] = []
        h, w = map_size
        if h < 1 or w < 1:
            raise ValueError(f"feature maps of size {map_size} are empty")
        for cin in (2 * channels, channels):
            pool = h >= 2 and w >= 2
            layers += _block(cin, channels, 1, pool) + ([] if pool else [nn.Identity()])
            if pool:
                h, w = h // 2, w // 2
        self.convs = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * h * w, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, pairs: Tensor) -> Tensor:
        z = self.convs(pairs).flatten(1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z)))).squeeze(-1)


class RelationNet(MetaLearner):
    """Relation Networks: embedding module + relation module, trained with MSE on one-hot targets.

    Args:
        encoder: f_varphi, images (n, *input_shape) -> feature maps (n, C, H, W); default
            `RelationEmbedding()` (the paper's Omniglot module: C=64, 5x5 maps for 28x28 inputs);
            `backbone: resnet12` / `resnet18` give a ResNet without its global pool.
        relation: g_phi; default `RelationModule(C, (H, W))`, sized from the encoder's output.
        input_shape: of one example, used to size the default relation module.

    Example:
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=2, queries=2).sample(3)
        >>> net = RelationNet()
        >>> scores = net.predict(batch.support_x, batch.support_y, batch.query_x)
        >>> tuple(scores.shape), bool(((scores >= 0) & (scores <= 1)).all())
        ((3, 10, 5), True)

    References: Sung et al. 2018, section 3.2 (eq. 1 and the objective), section 3.4 (architecture).
    """

    kind = "classification"

    def __init__(
        self,
        encoder: nn.Module | None = None,
        relation: nn.Module | None = None,
        *,
        input_shape: tuple[int, ...] = (1, 28, 28),
    ) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else RelationEmbedding(input_shape[0])
        if relation is None:
            was_training = self.encoder.training
            self.encoder.eval()  # eval mode: sizing the module must not touch the running statistics
            with torch.no_grad():
                c, h, w = self.encoder(torch.zeros(1, *input_shape)).shape[1:]
            self.encoder.train(was_training)
            relation = RelationModule(c, (h, w))
        self.relation = relation

    def scores(self, class_maps: Tensor, query_maps: Tensor) -> Tensor:
        """Relation scores of every (query, class) pair.

        In eval mode BatchNorm treats every pair on its own, so the pairs are scored one task and
        at most `_EVAL_PAIRS` pairs at a time, with the same result: 25 tasks of 20-way 15-query
        would otherwise be 150,000 concatenated 128x5x5 maps (2 GB).

        Args:
            class_maps: of shape (T, N, C, H, W); query_maps: of shape (T, n_query, C, H, W).

        Returns:
            of shape (T, n_query, N), in [0, 1].
        """
        if self.training:
            return self._pair_scores(class_maps, query_maps)
        per_piece = max(1, _EVAL_PAIRS // class_maps.shape[1])  # queries per piece
        return torch.cat(
            [
                torch.cat([self._pair_scores(c, part) for part in q.split(per_piece, dim=1)], dim=1)
                for c, q in zip(class_maps.split(1), query_maps.split(1))
            ]
        )

    def _pair_scores(self, class_maps: Tensor, query_maps: Tensor) -> Tensor:
        t, n = class_maps.shape[:2]
        q = query_maps.shape[1]
        pairs = torch.cat(
            [
                class_maps[:, None].expand(t, q, *class_maps.shape[1:]),
                query_maps[:, :, None].expand(t, q, n, *query_maps.shape[2:]),
            ],
            dim=3,
        ).flatten(0, 2)  # (T*Q*N, 2C, H, W), the class map first as in C(f(x_i), f(x_j))
        return self.relation(pairs).reshape(t, q, n)

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Relation scores of every query with every class; the argmax is the prediction.

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support), labels 0..N-1.
            query_x: of shape (T, n_query, *input_shape).
            steps: ignored (there is no inner loop); accepted so that evaluation treats every learner alike.

        Returns:
            scores in [0, 1] of shape (T, n_query, N), usable as logits for accuracy (not normalised).
        """
        chunk = None if self.training else EVAL_CHUNK
        support_maps, query_maps = embed_tasks(self.encoder, support_x, query_x, chunk=chunk)
        onehot = one_hot_support(support_y, num_ways(support_y)).to(support_maps.dtype)  # (T, S, N)
        # The class feature map is the element-wise sum over the class's K shots (section 3.2).
        class_maps = torch.einsum("tsn,tschw->tnchw", onehot, support_maps)
        return self.scores(class_maps, query_maps)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """The objective of section 3.2, averaged: MSE of the relation scores against one-hot query labels."""
        scores = self.predict(batch.support_x, batch.support_y, batch.query_x)
        target = F.one_hot(batch.query_y, scores.shape[-1]).to(scores.dtype)
        loss = F.mse_loss(scores, target)
        accuracy = (scores.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


def _build(ctx: BuildContext) -> RelationNet:
    # Conv-4 (the default backbone) is the paper's embedding module; a ResNet's feature maps are
    # taken before its global pool, as Chen et al. 2019 pair Relation Networks with ResNets.
    if ctx.config.backbone == "conv4":
        return RelationNet(input_shape=ctx.input_shape)
    return RelationNet(ctx.feature_maps(), input_shape=ctx.input_shape)


register(
    AlgorithmSpec(
        name="relation",
        family="metric",
        summary=(
            "Relation Networks (Sung et al. 2018): a learned comparison of feature maps, regressed with MSE"
        ),
        learner=RelationNet,
        # Its own embedding keeps feature maps, and the relation module pools them twice more.
        needs=Needs(kinds=("classification",), images=True, equal_shots=True, min_image_size=22),
        build=_build,
    )
)
