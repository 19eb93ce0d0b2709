"""Meta Networks: fast weights generated from loss gradients, read from a memory by attention.

References:
    Munkhdalai & Yu 2017, "Meta Networks", section 3 and algorithm 1. Slow weights are learned
    across tasks by the outer optimizer; fast weights are generated per task from the gradients of
    a loss on the support set (the "meta information"):

    1. representation learner u (slow weights Q): an embedding loss on the support set gives
       gradients nabla_Q, from which the dynamic representation learning function d generates the
       task-level fast weights Q* = d(G, nabla_Q);
    2. base learner b (slow weights W): the task loss of every support example i gives
       nabla_i = nabla_W loss(b(W, x'_i), y'_i), from which the meta learner m generates the
       example-level fast weights W*_i = m(Z, nabla_i), stored in a memory M; its key is the
       representation r'_i = u(Q, Q*, x'_i), stored in an index memory R;
    3. for a query x: r = u(Q, Q*, x), attention a = softmax(cos(R, r)), fast weights
       W* = a^T M, output b(W, W*, x); the loss of the queries' true classes trains W, Q, Z, G.

    Layer augmentation: a layer with slow and fast weights computes both outputs and sums them,
    after the ReLU for hidden layers (u's conv blocks: relu(conv_Q(x)) + relu(conv_Q*(x))), before
    the softmax for the output layer of b. m and d act on every coordinate of the gradient after the
    preprocessing of Andrychowicz et al. 2016 (log-magnitude and sign), as in the paper.

Fitted to this library (deviations from the paper):
    - Conv-4 blocks (conv 3x3, batch-statistics normalisation without affine, ReLU, max-pool) for u
      and for the trunk of b (with `backbone: resnet12` or `resnet18`, b's trunk is that ResNet);
      in b only the output layer has fast weights, so the per-example gradients nabla_i have the
      closed form (softmax(z_i) - onehot(y_i)) [h_i, 1]^T (exactly what autograd gives for that
      layer) and stay differentiable at no cost.
    - u's embedding loss is a contrastive loss over all pairs of support examples (on unit-length
      embeddings, margin 1); d receives the gradient of the mean pair loss (one backward pass), not
      one gradient per pair, and that gradient is detached (an input, not differentiated through).
    - The tasks of a meta-batch are processed in a per-task loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models import Conv4
from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, BuildContext, Needs, register

__all__ = ["MetaNet", "preprocess_gradient", "attention_read"]

_P = 10.0  # Andrychowicz et al.'s preprocessing constant


def preprocess_gradient(g: Tensor, p: float = _P) -> Tensor:
    """(log|g| / p, sign g) where |g| >= e^-p, else (-1, e^p g); of shape (*g.shape, 2).

    Differentiable everywhere (the log is taken of |g| clamped at e^-p).
    """
    big = g.abs() >= math.exp(-p)
    magnitude = torch.where(big, g.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(g))
    direction = torch.where(big, torch.sign(g), math.exp(p) * g)
    return torch.stack([magnitude, direction], dim=-1)


def attention_read(keys: Tensor, memory: Tensor, queries: Tensor) -> Tensor:
    """Read the memory by cosine attention: softmax_i(cos(r, R_i)) weighted sum of M_i.

    Args:
        keys: R, of shape (n_support, d).
        memory: M, of shape (n_support, *value_shape).
        queries: r, of shape (n_query, d).

    Returns:
        of shape (n_query, *value_shape).
    """
    attention = torch.softmax(
        F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T, dim=-1
    )  # (n_query, n_support)
    return (attention @ memory.flatten(1)).reshape(queries.shape[0], *memory.shape[1:])


class FastWeightGenerator(nn.Module):
    """A coordinate-wise MLP from a preprocessed gradient to a fast weight of the same shape."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, gradient: Tensor) -> Tensor:
        return self.net(preprocess_gradient(gradient)).squeeze(-1)


class AugmentedConv4(nn.Module):
    """u: Conv-4 whose blocks take optional fast weights, summed after the ReLU (layer augmentation)."""

    def __init__(self, in_channels: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(c, hidden, 3, padding=1) for c in (in_channels, hidden, hidden, hidden)
        )

    def slow_parameters(self) -> list[Tensor]:
        return [p for conv in self.convs for p in (conv.weight, conv.bias)]

    def forward(self, x: Tensor, fast: list[Tensor] | None = None) -> Tensor:
        def block(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
            return F.relu(F.batch_norm(F.conv2d(x, weight, bias, padding=1), None, None, training=True))

        for i, conv in enumerate(self.convs):
            h = block(x, conv.weight, conv.bias)
            if fast is not None:
                h = h + block(x, fast[2 * i], fast[2 * i + 1])
            x = F.max_pool2d(h, 2)
        return x.flatten(1)


class MetaNet(MetaLearner):
    """Meta Networks (Munkhdalai & Yu 2017) on Conv-4, for N-way classification.

    Args:
        ways: N, the outputs of the base learner (fixed by meta-training).
        in_channels, image_size: of the images.
        hidden: filters of the conv blocks of u and b (64 in Conv-4).
        generator_hidden: width of the coordinate-wise generators d and m.
        margin: of u's contrastive embedding loss (unit-length embeddings).
        trunk: b's feature extractor (images -> (n, d) features with a `feature_dim` attribute, e.g.
            a ResNet with batch-statistics norm); default Conv-4 of `hidden` filters. u stays the
            augmented Conv-4 whatever the trunk: its fast weights are generated coordinate by
            coordinate for every one of its convolutions.

    Example:
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=2).sample(3)
        >>> net = MetaNet(ways=5, hidden=16)
        >>> loss, metrics = net.meta_loss(batch)
        >>> tuple(net.predict(batch.support_x, batch.support_y, batch.query_x).shape)
        (3, 10, 5)

    References: Munkhdalai & Yu 2017, algorithm 1.
    """

    kind = "classification"

    def __init__(
        self,
        ways: int,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        generator_hidden: int = 20,
        margin: float = 1.0,
        trunk: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.ways, self.margin = ways, margin
        self.representation = AugmentedConv4(in_channels, hidden)  # u, slow weights Q
        self.rep_generator = FastWeightGenerator(generator_hidden)  # d, generates Q*
        if trunk is None:
            trunk = Conv4(
                in_channels=in_channels,
                hidden=hidden,
                image_size=image_size,
                norm="batch_stats",
                channels_last=False,
            )
        self.base_trunk = trunk  # b's conv blocks (slow weights only)
        self.base_head = nn.Linear(trunk.feature_dim, ways)  # b's output layer, slow W
        self.base_generator = FastWeightGenerator(generator_hidden)  # m, generates W*_i

    def embedding_loss(self, r: Tensor, y: Tensor) -> Tensor:
        """Contrastive loss over all pairs of support embeddings r (n, d) with labels y (n,)."""
        r = F.normalize(r, dim=-1)
        distance = torch.cdist(r, r)
        same = (y[:, None] == y[None, :]).to(r.dtype)
        pairs = torch.triu(torch.ones_like(distance), diagonal=1)
        loss = same * distance.pow(2) + (1 - same) * F.relu(self.margin - distance).pow(2)
        return (loss * pairs).sum() / pairs.sum().clamp_min(1.0)

    def task_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Algorithm 1 for one task: logits of shape (n_query, N) from support (n_s, ...), (n_s,) and
        query (n_q, ...)."""
        slow_q = self.representation.slow_parameters()
        # 1. Task-level fast weights of u from its embedding-loss gradient (detached meta information).
        with torch.enable_grad():
            loss_emb = self.embedding_loss(self.representation(support_x), support_y)
            grads = torch.autograd.grad(loss_emb, slow_q, allow_unused=True)
        fast_q = [
            self.rep_generator(torch.zeros_like(p) if g is None else g.detach())
            for p, g in zip(slow_q, grads)
        ]
        # 2. Example-level fast weights of b: per-example output-layer gradients, in closed form.
        n_s = support_x.shape[0]
        h = self.base_trunk(torch.cat([support_x, query_x]))
        h = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)  # [features, 1]: the bias as a weight column
        slow_w = torch.cat([self.base_head.weight, self.base_head.bias[:, None]], dim=1)  # (N, d+1)
        h_s, h_q = h[:n_s], h[n_s:]
        error = torch.softmax(h_s @ slow_w.T, dim=-1) - F.one_hot(support_y, self.ways).to(
            h.dtype
        )  # (n_s, N)
        gradients = (
            error[:, :, None] * h_s[:, None, :]
        )  # nabla_i of cross-entropy w.r.t. [W, b], (n_s, N, d+1)
        memory = self.base_generator(gradients)  # M: W*_i, (n_s, N, d+1)
        # 3. Keys and queries from u with slow and fast weights; read W* for every query.
        r = self.representation(torch.cat([support_x, query_x]), fast_q)
        fast_w = attention_read(r[:n_s], memory, r[n_s:])  # (n_q, N, d+1)
        # Output layer augmentation: slow and fast outputs summed before the softmax.
        return h_q @ slow_w.T + torch.einsum("qnd,qd->qn", fast_w, h_q)

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Logits of shape (T, n_query, N), one task at a time (`steps` is ignored)."""
        return torch.stack(
            [self.task_logits(sx, sy, qx) for sx, sy, qx in zip(support_x, support_y, query_x)]
        )

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean cross-entropy of the queries' true classes over all tasks of the batch."""
        logits = self.predict(batch.support_x, batch.support_y, batch.query_x)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


def _build(ctx: BuildContext) -> MetaNet:
    channels, size, _ = ctx.input_shape
    c = ctx.config
    # b's trunk is the config's backbone (batch statistics, as the Conv-4 default); u stays Conv-4.
    trunk = None if c.backbone == "conv4" else ctx.embedding(norm="batch_stats")[0]
    hidden = c.filters or 64
    return MetaNet(ways=ctx.ways, in_channels=channels, image_size=size, hidden=hidden, trunk=trunk)


register(
    AlgorithmSpec(
        name="metanet",
        family="model",
        summary=(
            "Meta Networks (Munkhdalai & Yu 2017): fast weights generated from gradients, read by attention"
        ),
        learner=MetaNet,
        needs=Needs(kinds=("classification",), images=True, fixed_head=True),
        build=_build,
    )
)
