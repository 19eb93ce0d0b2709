"""Memory-augmented neural network (MANN): an LSTM controller with an external memory written by
least-recently-used access (LRUA), fed an episode as a sequence with every label shown one step late.

References:
    Santoro, Bartunov, Botvinick, Wierstra & Lillicrap 2016, "One-shot Learning with Memory-Augmented
    Neural Networks", section 3 (task setup: at step t the input is (x_t, y_{t-1}), labels shuffled
    per episode, one-hot for 5 classes) and section 3.1 (LRUA):
    read weights w^r_t(i) = softmax_i(K(k_t, M_t(i))), K the cosine similarity, read r_t = sum_i
    w^r_t(i) M_t(i) (eqs. 2-4); usage w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t (eq. 5); least-used
    weights w^lu_t(i) = 0 if w^u_t(i) > m(w^u_t, n) else 1, m(v, n) the n-th smallest element of v and
    n the number of reads; write weights w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha))
    w^lu_{t-1} (eq. 6); before writing the least-used location (from w^u_{t-1}) is set to zero, then
    M_t(i) = M_{t-1}(i) + w^w_t(i) k_t (eq. 7). Experimental settings (section 4.1): an LSTM
    controller of 200 units, 128 memory slots of width 40, 4 read heads, 20x20 Omniglot images.

Choices where the paper leaves room (said here so they can be judged): the controller also sees
the previous read vectors (as in NTMs) and the output is a linear map of [h_t, r_t] to N logits;
keys are tanh(W_k h_t) and the gate alpha is a linear map of h_t, one of each per head; ties in
"least used" are broken by slot index, so w^lu has exactly n ones; images are downsampled from
28x28 to 20x20 inside the learner by area averaging (`F.interpolate(mode="area")`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tasks.episode import TaskBatch
from ..base import MetaLearner
from ..spec import AlgorithmSpec, BuildContext, Needs, Options, option, register

__all__ = ["MANN", "MANNOptions", "LRUAState", "lrua_init", "lrua_step", "least_used_weights"]


@dataclass
class MANNOptions(Options):
    mann_labels: str = option(
        "onehot",
        "how labels are fed back: one-hot, or the paper's 5-character strings (for 15 classes)",
        choices=("onehot", "string"),
    )


@dataclass
class LRUAState:
    """The LRUA memory of a batch of B sequences after step t-1.

    Attributes:
        memory: M_{t-1}, of shape (B, slots, width).
        usage: w^u_{t-1}, of shape (B, slots).
        read_weights: w^r_{t-1}, of shape (B, heads, slots).
        least_used: w^lu_{t-1}, of shape (B, slots), n = heads ones.
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    least_used: Tensor

    def repeat_interleave(self, repeats: int) -> "LRUAState":
        """Each sequence's memory copied `repeats` times (to continue it with several candidates)."""
        return LRUAState(
            *(
                t.repeat_interleave(repeats, dim=0)
                for t in (self.memory, self.usage, self.read_weights, self.least_used)
            )
        )


def least_used_weights(usage: Tensor, n: int) -> Tensor:
    """w^lu: 1 at the n least-used slots, 0 elsewhere, of shape (B, slots); ties go to the lower index."""
    idx = usage.argsort(dim=-1, stable=True)[..., :n]
    return torch.zeros_like(usage).scatter_(-1, idx, 1.0)


def lrua_init(batch: int, slots: int, width: int, heads: int, *, like: Tensor) -> LRUAState:
    """An empty memory (zeros; the cosine similarity of a key with an empty slot is 0)."""
    usage = like.new_zeros(batch, slots)
    return LRUAState(
        like.new_zeros(batch, slots, width),
        usage,
        like.new_zeros(batch, heads, slots),
        least_used_weights(usage, heads),
    )


def lrua_step(
    state: LRUAState, keys: Tensor, alpha: Tensor, gamma: float, eps: float = 1e-8
) -> tuple[LRUAState, Tensor]:
    """One LRUA write then read (Santoro et al. 2016, eqs. 2-7).

    Args:
        state: the memory after the previous step.
        keys: k_t, of shape (B, heads, width): written to memory and used to read it.
        alpha: the write gates before the sigmoid, of shape (B, heads).
        gamma: the usage decay.

    Returns:
        the new state and the read vectors r_t of shape (B, heads, width).
    """
    # The least-used location by w^u_{t-1} is zeroed before writing.
    lowest = least_used_weights(state.usage, 1)
    memory = state.memory * (1.0 - lowest)[..., None]
    gate = torch.sigmoid(alpha)[..., None]  # (B, heads, 1)
    write = (
        gate * state.read_weights + (1.0 - gate) * state.least_used[:, None, :]
    )  # (B, heads, slots), eq. 6
    memory = memory + write.transpose(1, 2) @ keys  # eq. 7, summed over the heads
    # Cosine similarity of every key with every slot (eq. 2), softmax over the slots (eq. 3).
    similarity = (keys @ memory.transpose(1, 2)) / (
        keys.norm(dim=-1)[..., None] * memory.norm(dim=-1)[:, None, :] + eps
    )
    read = similarity.softmax(dim=-1)
    reads = read @ memory  # eq. 4
    usage = gamma * state.usage + read.sum(1) + write.sum(1)  # eq. 5
    return LRUAState(memory, usage, read, least_used_weights(usage, keys.shape[1])), reads


class MANN(MetaLearner):
    """A memory-augmented neural network for N-way episodes.

    `meta_loss` concatenates each task's support and query examples, shuffles them (a seeded
    permutation per task, new every call) and feeds the sequence (x_t, y_{t-1}) with a
    cross-entropy loss at every step, as the paper trains. `predict` feeds the support examples in a
    fixed shuffled order with their labels one step late, then answers every query as the next step
    of that sequence (each query separately, from a copy of the memory: queries do not see each other).

    Args:
        ways: N, the number of output classes (and of label inputs).
        input_shape: one example's shape, e.g. (1, 28, 28); images are downsampled to
            `image_size` x `image_size` and flattened, other inputs are flattened.
        image_size: 20, the paper's Omniglot resolution.
        hidden: controller LSTM units (200).
        slots, width: the memory's shape (128 x 40).
        heads: read heads n (4), each with its own key and write gate.
        gamma: usage decay (0.95).
        labels: "onehot" (the paper's 5-class setting) or "string": every class of an episode gets
            a random distinct string of `string_length` characters over an alphabet of
            `alphabet` symbols (the paper's 15-class setting: 5 characters from 5 symbols, so the
            output size does not grow with the classes); the label input is the characters'
            one-hots side by side, the output one softmax per character, the loss their summed
            cross-entropies, and a step counts as correct when every character is.
        seed: seeds the training permutations (and the label strings).

    Example:
        >>> from metalab.tasks import EpisodeSampler
        >>> x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat_interleave(20)
        >>> batch = EpisodeSampler(x, y, ways=5, shots=1, queries=9).sample(2)
        >>> mann = MANN(5)
        >>> loss, metrics = mann.meta_loss(batch)
        >>> tuple(mann.predict(batch.support_x, batch.support_y, batch.query_x).shape)
        (2, 45, 5)

    References: Santoro et al. 2016, eqs. 2-7.
    """

    kind = "classification"

    def __init__(
        self,
        ways: int,
        input_shape: tuple[int, ...] = (1, 28, 28),
        *,
        image_size: int = 20,
        hidden: int = 200,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        gamma: float = 0.95,
        labels: str = "onehot",
        string_length: int = 5,
        alphabet: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if heads > slots:
            raise ValueError(f"MANN needs at least as many memory slots as read heads, got {slots} < {heads}")
        if labels not in ("onehot", "string"):
            raise ValueError(f"labels must be 'onehot' or 'string', got {labels!r}")
        if labels == "string" and alphabet**string_length < ways:
            raise ValueError(f"{alphabet}^{string_length} label strings cannot name {ways} classes")
        self.labels, self.string_length, self.alphabet = labels, string_length, alphabet
        label_dim = ways if labels == "onehot" else string_length * alphabet
        self.ways, self.input_shape = ways, tuple(input_shape)
        self.image_size = image_size if len(self.input_shape) == 3 else None
        features = (
            self.input_shape[0] * image_size * image_size
            if self.image_size
            else int(torch.tensor(self.input_shape).prod())
        )
        self.slots, self.width, self.heads, self.gamma, self.seed = slots, width, heads, gamma, seed
        self.controller = nn.LSTMCell(features + label_dim + heads * width, hidden)
        self.key = nn.Linear(hidden, heads * width)
        self.alpha = nn.Linear(hidden, heads)
        self.out = nn.Linear(hidden + heads * width, label_dim)
        self._episode = 0  # counts meta_loss calls: a new shuffle every call; set_iteration resets it

    def set_iteration(self, iteration: int) -> None:
        self._episode = iteration

    def _inputs(self, x: Tensor) -> Tensor:
        """(T, n, *input_shape) -> (T, n, features): downsampled (images) and flattened."""
        t, n = x.shape[:2]
        x = x.flatten(0, 1)
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
        return x.reshape(t, n, -1)

    def _init(self, batch: int, like: Tensor):
        h = like.new_zeros(batch, self.controller.hidden_size)
        return (
            (h, h.clone()),
            lrua_init(batch, self.slots, self.width, self.heads, like=like),
            like.new_zeros(batch, self.heads * self.width),
        )

    def _step(self, x: Tensor, prev_label: Tensor, carry):
        """One time step for B sequences: x (B, features), prev_label (B, N) -> logits (B, N), carry."""
        (h, c), memory, reads = carry
        h, c = self.controller(torch.cat([x, prev_label, reads], -1), (h, c))
        keys = torch.tanh(self.key(h)).view(-1, self.heads, self.width)
        memory, read = lrua_step(memory, keys, self.alpha(h), self.gamma)
        reads = read.flatten(1)
        return self.out(torch.cat([h, reads], -1)), ((h, c), memory, reads)

    # --- labels: one-hot, or the paper's strings --------------------------------------------------
    def _codes(self, tasks: int, seed: int, device: torch.device | str = "cpu") -> Tensor | None:
        """Each task's class -> string, as digits of shape (T, N, string_length) on `device`; None for
        one-hot. Drawn on the CPU from `seed`, so every device gets the same strings."""
        if self.labels == "onehot":
            return None
        g = torch.Generator().manual_seed(seed)
        numbers = torch.stack(
            [
                torch.randperm(self.alphabet**self.string_length, generator=g)[: self.ways]
                for _ in range(tasks)
            ]
        )
        powers = self.alphabet ** torch.arange(self.string_length - 1, -1, -1)
        return (numbers[..., None] // powers % self.alphabet).to(device)

    def _encode(self, y: Tensor, codes: Tensor | None, dtype) -> Tensor:
        """Label inputs for classes y (T, L): (T, L, N) one-hots or (T, L, length * alphabet)."""
        if codes is None:
            return F.one_hot(y, self.ways).to(dtype)
        digits = codes.gather(1, y[..., None].expand(*y.shape, self.string_length))  # (T, L, length)
        return F.one_hot(digits, self.alphabet).flatten(-2).to(dtype)

    def _char_logits(self, logits: Tensor) -> Tensor:
        return logits.unflatten(-1, (self.string_length, self.alphabet))

    def _loss_and_correct(self, logits: Tensor, y: Tensor, codes: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mean loss over steps and per-step correctness (T, L) of the outputs logits (T, L, D)."""
        if codes is None:
            return F.cross_entropy(logits.flatten(0, 1), y.flatten()), logits.argmax(-1) == y
        digits = codes.gather(1, y[..., None].expand(*y.shape, self.string_length))
        chars = self._char_logits(logits)
        loss = F.cross_entropy(chars.flatten(0, 2), digits.flatten()) * self.string_length
        return loss, (chars.argmax(-1) == digits).all(-1)

    def class_logits(self, logits: Tensor, codes: Tensor | None) -> Tensor:
        """Scores of the N classes from the outputs (T, n, D): the logits themselves (one-hot), or
        each class string's log-probability (sum over its characters)."""
        if codes is None:
            return logits
        logp = self._char_logits(logits).log_softmax(-1)  # (T, n, length, alphabet)
        index = codes[:, None].expand(-1, logp.shape[1], -1, -1)  # (T, n, N, length)
        picked = logp[:, :, None].expand(-1, -1, self.ways, -1, -1).gather(-1, index[..., None]).squeeze(-1)
        return picked.sum(-1)

    def _sequence(self, x: Tensor, y: Tensor, codes: Tensor | None = None):
        """Feed (x_t, y_{t-1}) for t = 1..L: x (T, L, features), y (T, L) -> outputs (T, L, D), carry."""
        t, length = y.shape
        labels = self._encode(y, codes, x.dtype)
        prev = torch.cat([labels.new_zeros(t, 1, labels.shape[-1]), labels[:, :-1]], 1)
        carry, logits = self._init(t, x), []
        for step in range(length):
            out, carry = self._step(x[:, step], prev[:, step], carry)
            logits.append(out)
        return torch.stack(logits, 1), carry

    @staticmethod
    def _shuffle(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """The same seeded random order of the examples within each task: x (T, L, ...), y (T, L)."""
        g = torch.Generator().manual_seed(seed)
        order = torch.rand(y.shape, generator=g).argsort(dim=1).to(y.device)
        return x.gather(1, order.view(*order.shape, *([1] * (x.dim() - 2))).expand_as(x)), y.gather(1, order)

    def _episode_sequence(self, batch: TaskBatch, seed: int) -> tuple[Tensor, Tensor]:
        x = torch.cat([self._inputs(batch.support_x), self._inputs(batch.query_x)], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        return self._shuffle(x, y, seed)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy at every step of the shuffled support + query sequence, averaged over steps
        and tasks."""
        seed = self.seed * 1_000_003 + self._episode
        x, y = self._episode_sequence(batch, seed)
        self._episode += 1
        codes = self._codes(y.shape[0], seed, y.device)
        logits, _ = self._sequence(x, y, codes)
        loss, correct = self._loss_and_correct(logits, y, codes)
        return loss, {"loss": loss.item(), "accuracy": correct.float().mean().item()}

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Feed the support sequence, then answer each query as its next step.

        Args:
            support_x: of shape (T, n_support, *input_shape).
            support_y: of shape (T, n_support), labels 0..N-1.
            query_x: of shape (T, n_query, *input_shape).

        Returns:
            logits of shape (T, n_query, N).
        """
        # A fixed order (not the sampler's class-by-class one, never seen in training), so that
        # predictions are deterministic.
        sx, sy = self._shuffle(self._inputs(support_x), support_y, seed=0)
        codes = self._codes(sy.shape[0], seed=0, device=sy.device)
        _, carry = self._sequence(sx, sy, codes)
        t, q = query_x.shape[:2]
        (h, c), memory, reads = carry
        carry = (
            (h.repeat_interleave(q, 0), c.repeat_interleave(q, 0)),
            memory.repeat_interleave(q),
            reads.repeat_interleave(q, 0),
        )
        last = self._encode(sy[:, -1:], codes, sx.dtype)[:, 0].repeat_interleave(q, 0)
        logits, _ = self._step(self._inputs(query_x).flatten(0, 1), last, carry)
        return self.class_logits(logits.view(t, q, -1), codes)

    @torch.no_grad()
    def accuracy_by_instance(self, batch: TaskBatch, seed: int = 0) -> dict[int, float]:
        """Accuracy at the k-th presentation of a class within the episode sequences, as the paper's
        table 1 reports it (1st, 2nd, 3rd, 4th, 5th, 10th instance).

        Returns:
            {k: accuracy over all steps showing the k-th example of its class}, for every k present.
        """
        was_training = self.training
        self.eval()
        try:
            x, y = self._episode_sequence(batch, seed)
            codes = self._codes(y.shape[0], seed, y.device)
            logits, _ = self._sequence(x, y, codes)
        finally:
            self.train(was_training)
        onehot = F.one_hot(y, self.ways)
        instance = (onehot.cumsum(1) * onehot).sum(-1)  # (T, L): 1 at a class's first showing, ...
        correct = self._loss_and_correct(logits, y, codes)[1].float()
        return {int(k): correct[instance == k].mean().item() for k in instance.unique().tolist()}


def _build(ctx: BuildContext) -> MANN:
    return MANN(ctx.ways, ctx.input_shape, labels=ctx.options.mann_labels, seed=ctx.config.seed)


register(
    AlgorithmSpec(
        name="mann",
        family="model",
        summary=(
            "memory-augmented network (Santoro et al. 2016): an LSTM with an LRUA memory, labels fed "
            "back late"
        ),
        learner=MANN,
        options=MANNOptions,
        # Its model is the paper's LSTM controller on the raw pixels: no backbone to choose.
        needs=Needs(kinds=("classification",), fixed_head=True, backbone=False),
        build=_build,
    )
)
