"""Matching Networks: attention over the support set with softmax-normalised cosine similarities.

References:
    Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, "Matching Networks for One Shot
    Learning": eq. 1, y_hat = sum_i a(x_hat, x_i) y_i, a weighted sum of the one-hot support labels;
    eq. 2, a(x_hat, x_i) = softmax_i(c(f(x_hat), g(x_i))) with c the cosine similarity. Full context
    embeddings (section 2.1.2 and appendix A): g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i), a bidirectional
    LSTM over the embedded support set with a skip connection (A.2), and f(x_hat, S) = attLSTM(f'(x_hat),
    g(S), K), an LSTM that reads the support set K times with content-based attention (A.1, eq. 3-6).
    Training maximises log P(y | x_hat, S) of the query labels.

    Eq. 2 feeds the cosine itself to the softmax. Behind a ReLU embedding (Conv-4) every cosine lies
    in [0, 1], so in a 5-way 1-shot episode the true class gets at most e / (e + 4) = 0.40 of the
    attention, the loss never falls below 0.90, and the gradient on the true class's cosine,
    1 - P(true), stays above 0.6: well classified queries keep pulling on the embedding almost as hard
    as misclassified ones. The options `cosine_scale` and `learn_cosine_scale` (not in the
    paper) multiply the cosine by a fixed or learned factor before the softmax, as in Baseline++'s
    cosine classifier and in later cosine-attention learners; benchmarks/results/omniglot_notes.md
    compares them with the paper's formula on Omniglot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, BuildContext, Needs, OptionError, Options, option, register
from .common import EVAL_CHUNK, check_embedding, embed_tasks, num_ways, one_hot_support

__all__ = ["MatchingNet", "MatchingOptions", "FullContextEmbedding"]


@dataclass
class MatchingOptions(Options):
    fce: bool = option(
        False,
        "full-context embeddings: a bidirectional LSTM over the support set, an attention LSTM for queries",
    )
    cosine_scale: float = option(
        1.0,
        "factor on the cosine similarities before the attention softmax; 1 is the paper's eq. 2, "
        "larger values sharpen the attention (not in the paper)",
        maximum=1000.0,  # the attention is an argmax there already; far beyond, float32 logits overflow
        allowed="> 0 and <= 1000",
    )
    learn_cosine_scale: bool = option(
        False,
        "learn the factor on the cosines with the embedding, starting from cosine_scale (not in the paper)",
    )

    def check(self, config) -> None:
        super().check(config)
        if not (self.cosine_scale > 0 and math.isfinite(self.cosine_scale)):
            raise OptionError(
                f"config key 'cosine_scale' must be a finite number > 0, got {self.cosine_scale}"
            )


# P(y | x_hat, S) is a weighted sum of one-hot labels and can be exactly 0 in float arithmetic;
# its log is taken after clamping here.
_EPS = 1e-8


class FullContextEmbedding(nn.Module):
    """g (bidirectional LSTM, A.2) and f (attention LSTM over K reads, A.1) of the paper.

    Args:
        dim: d, the size of the embeddings g'(x) and f'(x) (64 for Conv-4 on 28x28 Omniglot).
        steps: K, the number of attention reads ("processing steps"); the paper does not give the
            value it used, 5 is ours.

    The attention LSTM's recurrent state is the concatenation [h_{k-1}, r_{k-1}] (eq. 3). An LSTM
    cell whose input is [f'(x_hat), r_{k-1}] and whose hidden state is h_{k-1} computes exactly the
    same gates (W [x; r] + U h = W' x + U' [h; r]), so a stock `nn.LSTMCell(2d, d)` implements it.
    """

    def __init__(self, dim: int, steps: int = 5) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.dim, self.steps = dim, steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def embed_support(self, support_z: Tensor) -> Tensor:
        """g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i) over the support set in its given order.

        Args:
            support_z: g'(x_i), of shape (T, n_support, d).

        Returns:
            of shape (T, n_support, d).
        """
        out, _ = self.support_lstm(support_z)  # (T, S, 2d): forward and backward outputs
        return out[..., : self.dim] + out[..., self.dim :] + support_z

    def embed_query(self, query_z: Tensor, support_g: Tensor) -> Tensor:
        """f(x_hat, S) = attLSTM(f'(x_hat), g(S), K), eq. 3-6 of appendix A.1.

        Args:
            query_z: f'(x_hat), of shape (T, n_query, d).
            support_g: g(x_i, S), of shape (T, n_support, d).

        Returns:
            h_K, of shape (T, n_query, d).
        """
        t, q, d = query_z.shape
        x = query_z.reshape(t * q, d)
        # h_0 = c_0 = 0 (the paper leaves the initial state open), so the first read r_0 is the
        # mean of g(S).
        h = torch.zeros_like(x)
        c = torch.zeros_like(x)
        for _ in range(self.steps):
            attention = torch.softmax(h.reshape(t, q, d) @ support_g.transpose(1, 2), dim=-1)  # eq. 6
            r = (attention @ support_g).reshape(t * q, d)  # eq. 5, r_{k-1}
            h_hat, c = self.query_cell(torch.cat([x, r], dim=-1), (h, c))  # eq. 3
            h = h_hat + x  # eq. 4, the skip connection
        return h.reshape(t, q, d)


class MatchingNet(MetaLearner):
    """Matching Networks around any embedding network.

    Args:
        encoder: the shared embedding g' = f' of the images, (n, *input_shape) -> (n, d); the paper's
            is Conv-4 with standard BatchNorm (`Conv4(norm="batch")`).
        fce: use full context embeddings (the paper uses them on miniImageNet, not on Omniglot).
        feature_dim: d, needed with `fce`.
        fce_steps: K, the attention LSTM's number of reads.
        cosine_scale: s in softmax_i(s * c(f(x_hat), g(x_i))); 1 is the paper's eq. 2.
        learn_cosine_scale: make s a parameter (stored as log s, so that it stays positive),
            trained with the embedding from `cosine_scale`.

    Example:
        >>> from metalab.models import Conv4
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=2).sample(3)
        >>> net = MatchingNet(Conv4(norm="batch"), fce=True, feature_dim=64)
        >>> tuple(net.predict(batch.support_x, batch.support_y, batch.query_x).shape)
        (3, 10, 5)

    References: Vinyals et al. 2016, eq. 1-2; appendix A.1-A.2 for `fce`.
    """

    kind = "classification"

    def __init__(
        self,
        encoder: nn.Module,
        *,
        fce: bool = False,
        feature_dim: int | None = None,
        fce_steps: int = 5,
        cosine_scale: float = 1.0,
        learn_cosine_scale: bool = False,
    ) -> None:
        super().__init__()
        if fce and feature_dim is None:
            raise ValueError("full context embeddings need feature_dim, the size of the encoder's output")
        if not (cosine_scale > 0 and math.isfinite(cosine_scale)):
            raise ValueError(f"cosine_scale must be a finite number > 0, got {cosine_scale}")
        self.encoder = encoder
        self.fce = FullContextEmbedding(feature_dim, fce_steps) if fce else None
        # A fixed scale stays a plain number, so that the paper's model keeps its state dict.
        self.cosine_scale = cosine_scale
        self.log_cosine_scale = (
            nn.Parameter(torch.tensor(math.log(cosine_scale))) if learn_cosine_scale else None
        )

    def scale(self) -> Tensor | float:
        """s, the factor on the cosines before the softmax (a tensor when learned)."""
        return self.log_cosine_scale.exp() if self.log_cosine_scale is not None else self.cosine_scale

    def attention(self, support_x: Tensor, query_x: Tensor) -> Tensor:
        """a(x_hat, x_i) of eq. 2 (with the cosines times `scale()`), of shape (T, n_query, n_support);
        each row sums to 1."""
        chunk = None if self.training else EVAL_CHUNK
        support_z, query_z = embed_tasks(self.encoder, support_x, query_x, chunk=chunk)
        g, f = support_z.flatten(2), query_z.flatten(2)
        if self.fce is not None:
            g = self.fce.embed_support(g)
            f = self.fce.embed_query(f, g)
        cosine = F.normalize(f, dim=-1) @ F.normalize(g, dim=-1).transpose(1, 2)
        return torch.softmax(self.scale() * cosine, dim=-1)

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """log P(y = k | x_hat, S) for every query and class (eq. 1), usable as logits.

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support), labels 0..N-1.
            query_x: of shape (T, n_query, *input_shape).
            steps: ignored (there is no inner loop); accepted so that evaluation treats every learner alike.

        Returns:
            of shape (T, n_query, N): the log of the attention-weighted label distribution, clamped
            at log(1e-8). The rows are (up to the clamp) normalised log-probabilities, so
            cross-entropy on them is the paper's negative log-likelihood.
        """
        attention = self.attention(support_x, query_x)
        probs = attention @ one_hot_support(support_y, num_ways(support_y)).to(attention.dtype)
        return probs.clamp_min(_EPS).log()

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean negative log-likelihood of the queries' labels over all tasks of the batch."""
        log_probs = self.predict(batch.support_x, batch.support_y, batch.query_x)
        loss = F.nll_loss(log_probs.flatten(0, 1), batch.query_y.flatten())
        accuracy = (log_probs.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


def _build(ctx: BuildContext) -> MatchingNet:
    encoder, feature_dim = check_embedding(ctx)
    o = ctx.options
    return MatchingNet(
        encoder,
        fce=o.fce,
        feature_dim=feature_dim,
        cosine_scale=o.cosine_scale,
        learn_cosine_scale=o.learn_cosine_scale,
    )


register(
    AlgorithmSpec(
        name="matching",
        family="metric",
        summary=(
            "Matching Networks (Vinyals et al. 2016): attention over the support set, cosine similarities"
        ),
        learner=MatchingNet,
        options=MatchingOptions,
        needs=Needs(kinds=("classification",)),
        build=_build,
    )
)
