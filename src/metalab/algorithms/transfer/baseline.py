"""Baseline and Baseline++: pre-train a classifier over all meta-train classes, then fit a new
classifier on each test task's support features, the backbone frozen.

References:
    Chen, Liu, Kira, Wang & Huang 2019, "A Closer Look at Few-shot Classification", section 3.1.
    Training stage: a feature extractor f_theta and a classifier C(.|W_b) over the base classes are
    trained from scratch with the cross-entropy loss by ordinary mini-batch training. Fine-tuning
    stage: f_theta is frozen and a new classifier C(.|W_n) is trained on the novel support set
    (section 4.1: SGD, lr 0.01, momentum 0.9, weight decay 1e-3, batch size 4, "100 iterations";
    the authors' code makes that 100 passes over the shuffled support set in mini-batches of 4,
    with dampening 0.9, which is what is done here).
    Baseline: C is linear, W^T f(x). Baseline++: C computes cosine similarities between f(x) and
    the class weight vectors w_j, times a scale factor, before the softmax; the authors' code keeps
    a class-wise learnable norm on w_j (weight normalisation) and a fixed scale of 2 for <= 200
    classes, 10 above ("in Omniglot a larger scale factor is required to handle > 1000 classes").

In this library the training stage runs through the one training loop: the learner asks for plain
mini-batches (`training_source = "batches"`), so `meta_loss` reads a `TaskBatch` from
`ClassBatchSampler` (`FewShotDataset.batches`), whose support labels are global class ids remapped
to 0..C-1 and whose query part is empty; validation and test use episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..metric.common import EVAL_CHUNK, embed_tasks, num_ways
from ..spec import AlgorithmSpec, BuildContext, Needs, OptionError, Options, option, register

__all__ = ["Baseline", "BaselineOptions", "CosineClassifier", "cosine_scale"]


@dataclass
class BaselineOptions(Options):
    base_classes: Optional[int] = option(
        None, "classes of the pre-training classifier (default: the data's meta-train classes)", minimum=1
    )

    def bind(self, dataset) -> BaselineOptions:
        if self.base_classes is None and dataset is not None:
            return replace(self, base_classes=len(dataset.splits.train))
        return self


def cosine_scale(num_classes: int) -> float:
    """The fixed scale of Baseline++'s cosine logits in the authors' code: 2 up to 200 classes, else 10."""
    return 2.0 if num_classes <= 200 else 10.0


class CosineClassifier(nn.Module):
    """Baseline++'s classifier: logits_j = scale * g_j * cos(x, v_j), of shape (..., C) from (..., d).

    g_j is the class-wise learnable norm of the authors' weight normalisation, initialised to 1, so
    that a fresh classifier computes exactly scale * cos(x, v_j).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float | None = None) -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.randn(num_classes, in_features) / in_features**0.5)
        self.norm = nn.Parameter(torch.ones(num_classes))
        self.scale = cosine_scale(num_classes) if scale is None else scale

    def forward(self, x: Tensor) -> Tensor:
        w = F.normalize(self.direction, dim=-1) * self.norm[:, None]
        return self.scale * F.normalize(x, dim=-1) @ w.T


class Baseline(MetaLearner):
    """Baseline (linear classifier) and Baseline++ (`cosine=True`) of Chen et al. 2019.

    Args:
        encoder: f_theta, images (n, *input_shape) -> features (n, feature_dim); Conv-4 with standard
            BatchNorm, used in eval mode (running statistics) while fine-tuning.
        feature_dim: the encoder's output size.
        num_classes: C, the base (meta-train) classes of the pre-training classifier.
        cosine: Baseline++'s cosine classifier (pre-training and fine-tuning) instead of a linear one.
        finetune_epochs, finetune_batch, finetune_lr, momentum, dampening, weight_decay: the
            fine-tuning stage, as in the authors' code: 100 passes over the support set in shuffled
            mini-batches of 4 (the last one smaller), SGD with lr 0.01, momentum 0.9, dampening 0.9,
            weight decay 1e-3.

    `predict` trains one new classifier per task, all tasks at once: the classifiers are stacked
    into (T, N, d) tensors and every step is one batched matmul; the tasks' losses are summed, so
    each classifier gets its own task's gradient. Mini-batches and initial weights come from a
    generator seeded in every call, so a prediction is deterministic.

    Example:
        >>> from metalab.models import Conv4
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> net = Baseline(Conv4(norm="batch"), 64, num_classes=10, cosine=True, finetune_epochs=5)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=2).sample(3)
        >>> tuple(net.eval().predict(batch.support_x, batch.support_y, batch.query_x).shape)
        (3, 10, 5)

    References: Chen et al. 2019, section 3.1 and figure 2.
    """

    kind = "classification"
    training_source = "batches"

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        cosine: bool = False,
        finetune_epochs: int = 100,
        finetune_batch: int = 4,
        finetune_lr: float = 0.01,
        momentum: float = 0.9,
        dampening: float = 0.9,
        weight_decay: float = 1e-3,
    ) -> None:
        super().__init__()
        self.encoder, self.feature_dim, self.cosine = encoder, feature_dim, cosine
        self.classifier = (
            CosineClassifier(feature_dim, num_classes) if cosine else nn.Linear(feature_dim, num_classes)
        )
        self.finetune_epochs, self.finetune_batch = finetune_epochs, finetune_batch
        self.finetune_lr, self.momentum, self.dampening, self.weight_decay = (
            finetune_lr,
            momentum,
            dampening,
            weight_decay,
        )

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the pre-training classifier over all base classes on one mini-batch.

        Args:
            batch: from `ClassBatchSampler`: support_x (T, B, ...) with global labels support_y
                (T, B) in 0..C-1; the T rows together are the mini-batch, the query part is unused.
        """
        x, y = batch.support_x.flatten(0, 1), batch.support_y.flatten()
        if int(y.max()) >= self.classifier_classes:
            raise ValueError(
                f"label {int(y.max())} is outside the {self.classifier_classes} classes of the pre-training "
                "classifier: "
                "Baseline trains on global class labels (FewShotDataset.batches), not on episodes"
            )
        logits = self.classifier(self.encoder(x))
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(-1) == y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}

    @property
    def classifier_classes(self) -> int:
        return self.classifier.norm.numel() if self.cosine else self.classifier.out_features

    def _logits(self, weight: Tensor, bias: Tensor, z: Tensor) -> Tensor:
        """The new classifiers on features z (T, n, d); weight (T, N, d), bias (T, N) (Baseline++:
        bias holds the class-wise norms g_j)."""
        if self.cosine:
            w = F.normalize(weight, dim=-1) * bias[..., None]
            return cosine_scale(weight.shape[1]) * F.normalize(z, dim=-1) @ w.transpose(1, 2)
        return z @ weight.transpose(1, 2) + bias[:, None, :]

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Fit a new N-way classifier on each task's frozen support features; its query logits.

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support), labels 0..N-1.
            query_x: of shape (T, n_query, *input_shape).
            steps: ignored (the fine-tuning length is `finetune_epochs`); accepted so that evaluation
                treats every learner alike.

        Returns:
            logits of shape (T, n_query, N).
        """
        chunk = None if self.training else EVAL_CHUNK
        with torch.no_grad():
            support_z, query_z = (
                z.flatten(2) for z in embed_tasks(self.encoder, support_x, query_x, chunk=chunk)
            )
        t, n_support, d = support_z.shape
        ways = num_ways(support_y)
        # The classifiers' initial weights and the shuffles are drawn on the CPU from a fixed seed (the
        # same fine-tuning on every device), then moved to the embeddings' device.
        g, device = torch.Generator("cpu").manual_seed(0), support_z.device
        bound = 1.0 / d**0.5  # nn.Linear's default initialisation
        weight = ((torch.rand(t, ways, d, generator=g, device="cpu") * 2 - 1) * bound).to(support_z)
        bias = (
            torch.ones(t, ways, device="cpu")
            if self.cosine
            else (torch.rand(t, ways, generator=g, device="cpu") * 2 - 1) * bound
        )
        params = [weight.requires_grad_(), bias.to(support_z).requires_grad_()]
        velocity: list[Tensor | None] = [None, None]
        rows = torch.arange(t, device=device)[:, None]
        with torch.enable_grad():
            for _ in range(self.finetune_epochs):
                order = torch.rand(t, n_support, generator=g, device="cpu").argsort(1).to(device)
                for pick in order.split(self.finetune_batch, dim=1):  # (T, <= batch)
                    logits = self._logits(params[0], params[1], support_z[rows, pick])
                    # Summed over tasks: each task's classifier gets exactly its own mean loss's gradient.
                    loss = (
                        F.cross_entropy(
                            logits.flatten(0, 1), support_y[rows, pick].flatten(), reduction="sum"
                        )
                        / pick.shape[1]
                    )
                    grads = torch.autograd.grad(loss, params)
                    with torch.no_grad():
                        for i, (p, grad) in enumerate(zip(params, grads)):
                            # torch.optim.SGD: weight decay into the gradient; the momentum buffer
                            # starts as the first gradient, then buf = momentum buf + (1 - dampening) grad.
                            grad = grad + self.weight_decay * p
                            v = velocity[i]
                            velocity[i] = (
                                grad.clone()
                                if v is None
                                else v.mul_(self.momentum).add_(grad, alpha=1 - self.dampening)
                            )
                            p.sub_(self.finetune_lr * velocity[i])
        with torch.no_grad():
            return self._logits(params[0], params[1], query_z)


def _build(ctx: BuildContext, *, cosine: bool) -> Baseline:
    classes = ctx.options.base_classes or ctx.train_classes()
    if classes is None:
        raise OptionError(
            f"{ctx.config.algorithm} needs base_classes, the meta-train classes of the data "
            "(bound from the data set by metalab.builders.bind_dataset; train does it)"
        )
    encoder, feature_dim = ctx.embedding()
    return Baseline(encoder, feature_dim, classes, cosine=cosine)


for _name, _cosine, _summary in (
    ("baseline", False, "Baseline (Chen et al. 2019): pre-train a classifier, fit a linear one per task"),
    ("baseline_pp", True, "Baseline++ (Chen et al. 2019): as Baseline with cosine-similarity classifiers"),
):
    register(
        AlgorithmSpec(
            name=_name,
            family="transfer",
            summary=_summary,
            learner=Baseline,
            options=BaselineOptions,
            needs=Needs(kinds=("classification",), images=True),
            build=lambda ctx, cosine=_cosine: _build(ctx, cosine=cosine),
        )
    )
