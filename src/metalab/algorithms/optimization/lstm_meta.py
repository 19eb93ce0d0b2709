"""The LSTM meta-learner: a coordinate-wise LSTM whose cell state is the learner's parameters.

References:
    Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning", section 3:
    eq. 2, the cell update c_t = f_t * c_{t-1} + i_t * c~_t with c_t = theta_t and c~_t = -grad L_t, so
    SGD is the special case f_t = 1, i_t = alpha; eq. 3, the learned learning rate
    i_t = sigmoid(W_I [grad L_t, L_t, theta_{t-1}, i_{t-1}] + b_I); eq. 4, the learned decay
    f_t = sigmoid(W_F [grad L_t, L_t, theta_{t-1}, f_{t-1}] + b_F); c_0 = theta_0, the learner's
    meta-learned initial parameters (section 3.2). Section 3.3: the LSTM's parameters are shared
    across coordinates, the gradients and losses are preprocessed as in Andrychowicz et al. 2016
    (appendix A: x -> (log|x|/p, sign(x)) if |x| >= e^-p else (-1, e^p x), p = 10), and second
    derivatives through the learner's gradient are ignored (the gradients are constants).
    Section 4 (experiments): a 2-layer meta-learner, a normal LSTM of 20 units over the
    preprocessed [gradient, loss], whose output stands in for [grad L_t, L_t] in eqs. 3-4 (the
    modified LSTM); the forget-gate bias starts large (f ~ 1) and the input-gate bias small.

Deviations: every inner step uses the whole support set (the paper draws minibatches from it when
it is larger than the batch size; with Omniglot's 5 or 25 support images the two coincide for its
batch sizes 5 and 25); the initial input-gate bias is set so that i_0 = `inner_lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...functional import Params, forward, named_params
from ...losses import task_loss, task_metric
from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, BuildContext, Needs, OptionError, option, register
from .options import InnerLoop

__all__ = ["LSTMMetaLearner", "LSTMMetaOptions", "preprocess"]


@dataclass
class LSTMMetaOptions(InnerLoop):
    """The LSTM meta-learner's keys: its updates, and the learned rate's starting value."""

    inner_lr: float = option(
        0.01,
        "the input gate's initial value i_0, the learned rate at the start (its bias is logit(inner_lr))",
        allowed="0 < inner_lr < 1",
    )

    def check(self, config) -> None:
        super().check(config)
        if not 0.0 < self.inner_lr < 1.0:
            raise OptionError(
                "for lstm_meta, 'inner_lr' is the input gate's initial value (a learned learning rate, a "
                "sigmoid): "
                f"it must be in (0, 1), got {self.inner_lr}"
            )


def preprocess(x: Tensor, p: float = 10.0, dim: int = -1) -> Tensor:
    """Andrychowicz et al. 2016's input scaling, of shape (*x.shape, 2) (the pair stacked at `dim`).

    (log|x| / p, sign(x)) if |x| >= e^-p, else (-1, e^p x): magnitudes and signs on a common scale.
    """
    big = x.abs() >= math.exp(-p)
    log = x.abs().clamp_min(math.exp(-p)).log() / p
    return torch.stack(
        [torch.where(big, log, -torch.ones_like(x)), torch.where(big, x.sign(), math.exp(p) * x)], dim
    )


class LSTMMetaLearner(MetaLearner):
    """The meta-learner LSTM training a learner (e.g. Conv-4 with an N-way head) on each support set.

    The update rule is the pair `init_state` / `update` (eq. 2-4): where MAML's inner loop steps by
    SGD, this one steps by the LSTM's learned input and forget gates, with the learner's gradients
    and losses as constants.

    Args:
        model: the learner; its parameters are theta_0 = c_0, meta-learned.
        kind: "classification" or "regression".
        inner_steps: T, the updates on the support set in meta-training (the paper: 12 for 1-shot,
            5 for 5-shot).
        eval_inner_steps: updates at test time (default: `inner_steps`).
        inner_lr: the input gate's initial value (its bias is logit(inner_lr), its weights near 0).
        hidden: units of the first, ordinary LSTM layer (20).
        forget_bias: the forget gate's initial bias (5: f ~ 0.993, nearly plain SGD at first).

    Example:
        >>> from metalab.models import Conv4
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=2).sample(2)
        >>> learner = LSTMMetaLearner(Conv4(out_features=5, norm="batch_stats"), inner_steps=2)
        >>> loss, metrics = learner.meta_loss(batch)
        >>> tuple(learner.predict(batch.support_x, batch.support_y, batch.query_x).shape)
        (2, 10, 5)

    References: Ravi & Larochelle 2017, eqs. 2-4, section 3.3.
    """

    inner_loop = True

    def __init__(
        self,
        model: nn.Module,
        kind: str = "classification",
        *,
        inner_steps: int = 5,
        eval_inner_steps: int | None = None,
        inner_lr: float = 0.01,
        hidden: int = 20,
        forget_bias: float = 5.0,
    ) -> None:
        super().__init__()
        if inner_steps < 0 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise ValueError("inner steps must be >= 0")
        if not 0.0 < inner_lr < 1.0:
            raise ValueError(
                "the LSTM meta-learner's inner_lr is its input gate's initial value, in (0, 1); got "
                f"{inner_lr}"
            )
        self.model, self.kind = model, kind
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.lstm = nn.LSTMCell(4, hidden)  # layer 1 over the preprocessed (gradient, loss)
        self.input_gate = nn.Linear(hidden + 2, 1)  # eq. 3 on [h_t, theta_{t-1}, i_{t-1}]
        self.forget_gate = nn.Linear(hidden + 2, 1)  # eq. 4 on [h_t, theta_{t-1}, f_{t-1}]
        with torch.no_grad():
            for gate in (self.input_gate, self.forget_gate):
                gate.weight.uniform_(-0.01, 0.01)
            self.input_gate.bias.fill_(math.log(inner_lr / (1.0 - inner_lr)))
            self.forget_gate.bias.fill_(forget_bias)
        params = named_params(model)
        self._names = list(params)
        self._shapes = [p.shape for p in params.values()]
        self._sizes = [p.numel() for p in params.values()]

    def initial_parameters(self) -> Tensor:
        """theta_0 = c_0, the learner's parameters as one flat vector of shape (n,)."""
        params = named_params(self.model)
        return torch.cat([params[k].reshape(-1) for k in self._names])

    def unflatten(self, theta: Tensor) -> Params:
        """A flat parameter vector (n,) as the learner's parameter dict."""
        return {k: v.view(s) for k, v, s in zip(self._names, theta.split(self._sizes), self._shapes)}

    def init_state(self, theta: Tensor) -> tuple[Tensor, ...]:
        """(h, c, f, i) before the first update: zeros; h and c of shape (..., hidden, n), the
        coordinates of theta (..., n) last, f and i of theta's shape."""
        h = theta.new_zeros(*theta.shape[:-1], self.lstm.hidden_size, theta.shape[-1])
        return h, h.clone(), theta.new_zeros(theta.shape), theta.new_zeros(theta.shape)

    @staticmethod
    def _gate(linear: nn.Linear, h: Tensor, theta: Tensor, previous: Tensor) -> Tensor:
        """W [h, theta, previous] + b without concatenating: the inputs hold one column per coordinate
        of theta (~10^5), and a concatenated copy of them would be written and read once more per gate.
        h is of shape (T, hidden, n), theta and previous (T, n)."""
        w = linear.weight[0]
        hidden = h.shape[-2]
        return (w[:hidden] @ h) + theta * w[hidden] + previous * w[hidden + 1] + linear.bias[0]

    def update(
        self, theta: Tensor, grad: Tensor, loss: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One step of the meta-learner LSTM: theta_t = f_t * theta_{t-1} - i_t * grad (eq. 2).

        Args:
            theta: theta_{t-1}, of shape (T, n).
            grad: the learner's support-loss gradient at theta_{t-1} (a constant), of shape (T, n).
            loss: the support losses (constants), of shape (T,).
            state: (h, c) of layer 1, of shape (T, hidden, n), and (f_{t-1}, i_{t-1}) of shape (T, n).

        Returns:
            theta_t and the new state.

        Layer 1 is `self.lstm`'s cell (gates i, f, g, o) over the input [preprocessed gradient,
        preprocessed loss] of every coordinate, computed with the coordinates on the last, contiguous
        axis: each gate is then one contiguous block, where `nn.LSTMCell`'s (n, 4 hidden) layout
        hands every elementwise op a strided quarter of each row (measured 8x slower per element
        for the sigmoid on one core, docs/performance.md). The loss is the same for every
        coordinate of a task, so its part of the input enters as a per-task bias.
        """
        h, c, f, i = state
        w_ih, w_hh = self.lstm.weight_ih, self.lstm.weight_hh  # (4 hidden, 4), (4 hidden, hidden)
        bias = self.lstm.bias_ih + self.lstm.bias_hh + preprocess(loss) @ w_ih[:, 2:].T  # (T, 4 hidden)
        # One product per task, [W_ih (gradient part), W_hh] @ [preprocessed gradient; h], written
        # straight into the (4 hidden, n) layout with the bias added (a broadcast `matmul` would
        # compute it as (n, 4 hidden) and copy it transposed).
        weight = torch.cat([w_ih[:, :2], w_hh], dim=1)  # (4 hidden, 2 + hidden)
        x = torch.cat([preprocess(grad, dim=-2), h], dim=-2)  # (T, 2 + hidden, n)
        gates = torch.baddbmm(bias[..., None], weight.expand(x.shape[0], -1, -1), x)  # (T, 4 hidden, n)
        in_gate, forget, cell, out = gates.chunk(4, dim=-2)
        c = torch.sigmoid(forget) * c + torch.sigmoid(in_gate) * torch.tanh(cell)
        h = torch.sigmoid(out) * torch.tanh(c)
        f = torch.sigmoid(self._gate(self.forget_gate, h, theta, f))
        i = torch.sigmoid(self._gate(self.input_gate, h, theta, i))
        return f * theta - i * grad, (h, c, f, i)

    def _support_gradients(
        self, theta: Tensor, support_x: Tensor, support_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The learner's support loss and its gradient at each task's theta, both constants: (T,), (T, n)."""
        losses, grads = [], []
        with torch.enable_grad():
            for k in range(theta.shape[0]):
                p = theta[k].detach().requires_grad_(True)
                loss = task_loss(
                    self.kind, forward(self.model, self.unflatten(p), support_x[k]), support_y[k]
                )
                (g,) = torch.autograd.grad(loss, p)
                losses.append(loss.detach())
                grads.append(g)
        return torch.stack(losses), torch.stack(grads)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> Tensor:
        """theta_T for every task after `steps` updates on its support set, of shape (T, n)."""
        theta = self.initial_parameters().expand(support_x.shape[0], -1)
        state = self.init_state(theta)
        for _ in range(steps):
            loss, grad = self._support_gradients(theta, support_x, support_y)
            theta, state = self.update(theta, grad, loss, state)
        return theta

    def _answer(self, theta: Tensor, query_x: Tensor) -> Tensor:
        return torch.stack(
            [forward(self.model, self.unflatten(theta[k]), query_x[k]) for k in range(theta.shape[0])]
        )

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """The query loss after `inner_steps` updates, averaged over tasks, differentiated into the
        meta-learner LSTM and theta_0 through the updates (not through the learner's gradients)."""
        theta = self.adapt(batch.support_x, batch.support_y, self.inner_steps)
        out = self._answer(theta, batch.query_x)
        loss = torch.stack(
            [task_loss(self.kind, out[k], batch.query_y[k]) for k in range(out.shape[0])]
        ).mean()
        metric = task_metric(self.kind, out.detach(), batch.query_y).mean()
        return loss, {"loss": loss.item(), self.metric_name(): metric.item()}

    def predict(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, *, steps: int | None = None
    ) -> Tensor:
        """Train the learner on each support set with `steps` updates (default `eval_inner_steps`),
        then answer the queries.

        Returns:
            logits of shape (T, n_query, N) (or values, for regression).
        """
        steps = self.eval_inner_steps if steps is None else steps
        with torch.no_grad():
            return self._answer(self.adapt(support_x, support_y, steps), query_x)


def _build(ctx: BuildContext) -> LSTMMetaLearner:
    # Ravi & Larochelle's learner: Conv-4 with 32 filters per layer (4x fewer coordinates for the
    # coordinate-wise LSTM than 64 filters; the LSTM over them dominates the cost).
    model = ctx.backbone(hidden=32) if ctx.images else ctx.backbone()
    return LSTMMetaLearner(model, ctx.kind, **ctx.options.to_dict())


register(
    AlgorithmSpec(
        name="lstm_meta",
        family="optimization",
        summary=(
            "the LSTM meta-learner (Ravi & Larochelle 2017): a learned update rule for the learner's weights"
        ),
        learner=LSTMMetaLearner,
        options=LSTMMetaOptions,
        needs=Needs(fixed_head=True),
        build=_build,
    )
)
