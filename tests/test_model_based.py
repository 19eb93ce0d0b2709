"""The memory-augmented neural network (Santoro et al. 2016) and the LSTM meta-learner (Ravi &
Larochelle 2017): the LRUA memory's arithmetic by hand, shapes, the LSTM update reducing to SGD,
and short learning runs on real Omniglot (marked `data`)."""

import math

import pytest
import torch
import torch.nn.functional as F

from metalab.algorithms.model.mann import MANN, LRUAState, least_used_weights, lrua_init, lrua_step
from metalab.algorithms.optimization.lstm_meta import LSTMMetaLearner, preprocess
from metalab.functional import forward, named_params
from metalab.models import MLP, Conv4
from metalab.tasks import EpisodeSampler

torch.set_num_threads(1)  # the CPU cores are shared with long benchmark runs


def fake_batch(ways=5, shots=1, queries=9, tasks=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(12 * 20, 1, 28, 28, generator=g), torch.arange(12).repeat_interleave(20)
    return EpisodeSampler(x, y, ways=ways, shots=shots, queries=queries, seed=seed).sample(tasks)


# --- MANN: the LRUA memory -------------------------------------------------------------------


def test_least_used_weights_marks_the_n_smallest_and_breaks_ties_by_index():
    usage = torch.tensor([[0.9, 0.2, 0.5, 0.2]])
    assert least_used_weights(usage, 1).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert least_used_weights(usage, 2).tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert lrua_init(1, 3, 2, 1, like=usage).least_used.tolist() == [[1.0, 0.0, 0.0]]


def test_lrua_write_then_read_by_hand():
    # 3 slots of width 2, one head. Before the step: usage w^u_{t-1} = (0.9, 0.2, 0.5), so slot 1 is
    # the least used (w^lu_{t-1} = (0, 1, 0)) and is zeroed before writing.
    state = LRUAState(
        memory=torch.tensor([[[1.0, 0.0], [2.0, 2.0], [0.0, 1.0]]]),
        usage=torch.tensor([[0.9, 0.2, 0.5]]),
        read_weights=torch.tensor([[[0.6, 0.3, 0.1]]]),
        least_used=torch.tensor([[0.0, 1.0, 0.0]]),
    )
    key, gamma = torch.tensor([[[1.0, 1.0]]]), 0.5
    new, reads = lrua_step(state, key, alpha=torch.zeros(1, 1), gamma=gamma)
    # w^w = sigmoid(0) w^r_{t-1} + (1 - sigmoid(0)) w^lu_{t-1} = 0.5 (0.6, 0.3, 0.1) + 0.5 (0, 1, 0)
    write = [0.3, 0.65, 0.05]
    # M_t(i) = M_{t-1}(i) (slot 1 zeroed) + w^w(i) k, k = (1, 1)
    memory = [[1.3, 0.3], [0.65, 0.65], [0.05, 1.05]]
    assert torch.allclose(new.memory, torch.tensor([memory]))
    # Cosine similarity of k with each slot, then softmax.
    cosine = [(m[0] + m[1]) / (math.sqrt(2) * math.hypot(*m)) for m in memory]
    assert cosine[1] == pytest.approx(1.0)
    z = sum(math.exp(c) for c in cosine)
    read = [math.exp(c) / z for c in cosine]
    assert torch.allclose(new.read_weights, torch.tensor([[read]]))
    r = [sum(read[i] * memory[i][d] for i in range(3)) for d in range(2)]
    assert torch.allclose(reads, torch.tensor([[r]]))
    # w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t; the new least used is its smallest entry.
    usage = [gamma * u + read[i] + write[i] for i, u in enumerate([0.9, 0.2, 0.5])]
    assert torch.allclose(new.usage, torch.tensor([usage]))
    lowest = min(range(3), key=usage.__getitem__)
    assert new.least_used.tolist() == [[float(i == lowest) for i in range(3)]]


def test_lrua_write_gate_one_writes_where_it_last_read():
    state = lrua_init(1, 4, 2, 1, like=torch.zeros(1))
    state = LRUAState(
        state.memory,
        torch.tensor([[0.5, 0.1, 0.7, 0.3]]),
        torch.tensor([[[0.0, 0.0, 1.0, 0.0]]]),
        torch.tensor([[0.0, 1.0, 0.0, 0.0]]),
    )
    new, _ = lrua_step(state, torch.tensor([[[0.0, 2.0]]]), alpha=torch.full((1, 1), 50.0), gamma=0.9)
    assert torch.allclose(new.memory[0], torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))


# --- MANN: shapes and the episode sequence ---------------------------------------------------


def test_mann_shapes_and_instance_accuracy():
    batch = fake_batch(ways=5, shots=1, queries=9, tasks=3)
    mann = MANN(5, slots=16, width=8, hidden=32)
    loss, metrics = mann.meta_loss(batch)
    loss.backward()
    assert math.isfinite(metrics["loss"]) and set(metrics) == {"loss", "accuracy"}
    assert all(p.grad is not None for p in mann.parameters())
    logits = mann.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape == (3, 45, 5)
    by_instance = mann.accuracy_by_instance(batch)
    assert sorted(by_instance) == list(range(1, 11)) and all(0.0 <= a <= 1.0 for a in by_instance.values())


def test_mann_labels_arrive_one_step_late_and_queries_do_not_see_each_other():
    batch = fake_batch(ways=3, shots=2, queries=2, tasks=2)
    mann = MANN(3, slots=8, width=4, hidden=16).eval()
    with torch.no_grad():
        x = mann._inputs(batch.support_x)
        # Changing the last example's label changes nothing at its own step (it is fed one step later).
        y2 = batch.support_y.clone()
        y2[:, -1] = (y2[:, -1] + 1) % 3
        a, _ = mann._sequence(x, batch.support_y)
        b, _ = mann._sequence(x, y2)
        assert torch.equal(a, b)
        # A query's answer does not depend on the other queries.
        full = mann.predict(batch.support_x, batch.support_y, batch.query_x)
        one = mann.predict(batch.support_x, batch.support_y, batch.query_x[:, :1])
        assert torch.allclose(full[:, :1], one, atol=1e-6)
    # Training episodes are shuffled anew at every call, reproducibly from the iteration.
    mann.set_iteration(5)
    first = mann._episode_sequence(batch, 5)[1]
    assert not torch.equal(first, mann._episode_sequence(batch, 6)[1])
    assert torch.equal(first, mann._episode_sequence(batch, 5)[1])


def test_mann_string_labels_as_in_the_paper():
    """15 classes named by 5-character strings over 5 symbols (Santoro et al. 2016, section 4.1)."""
    batch = fake_batch(ways=12, shots=1, queries=1, tasks=2)
    mann = MANN(12, slots=16, width=8, hidden=32, labels="string")
    assert mann.controller.input_size == 400 + 25 + 4 * 8 and mann.out.out_features == 25
    codes = mann._codes(2, seed=3)
    assert codes.shape == (2, 12, 5) and codes.min() >= 0 and codes.max() <= 4
    numbers = (codes * torch.tensor([625, 125, 25, 5, 1])).sum(-1)
    assert all(len(set(n.tolist())) == 12 for n in numbers)  # distinct strings within an episode
    assert not torch.equal(codes, mann._codes(2, seed=4)) and torch.equal(codes, mann._codes(2, seed=3))
    # The label input is the characters' one-hots side by side.
    enc = mann._encode(torch.tensor([[0, 1]]), codes[:1], torch.float32)
    assert enc.shape == (1, 2, 25) and torch.equal(enc[0, 0].view(5, 5).argmax(-1), codes[0, 0])
    loss, metrics = mann.meta_loss(batch)
    loss.backward()
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
    # A class's score is its string's log-probability: logits that spell class 7's string pick it.
    logits = torch.full((1, 1, 25), -10.0)
    for i, d in enumerate(codes[0, 7]):
        logits[0, 0, 5 * i + d] = 10.0
    scores = mann.class_logits(logits, codes[:1])
    assert scores.shape == (1, 1, 12) and scores.argmax(-1).item() == 7
    assert mann.predict(batch.support_x, batch.support_y, batch.query_x).shape == (2, 12, 12)
    with pytest.raises(ValueError, match="cannot name"):
        MANN(40, labels="string", string_length=2, alphabet=5)


def test_mann_downsamples_images_to_20x20():
    mann = MANN(5, slots=8, width=4, hidden=16)
    assert mann.controller.input_size == 400 + 5 + 4 * 4
    assert mann._inputs(torch.rand(2, 3, 1, 28, 28)).shape == (2, 3, 400)


# --- LSTM meta-learner -----------------------------------------------------------------------


def test_preprocess_matches_andrychowicz():
    out = preprocess(torch.tensor([1.0, -math.e, 0.0, -math.exp(-20.0)]))
    expected = torch.tensor([[0.0, 1.0], [0.1, -1.0], [-1.0, 0.0], [-1.0, -math.exp(-10.0)]])
    assert torch.allclose(out, expected, atol=1e-7)


def test_lstm_meta_with_fixed_gates_is_sgd():
    # Input gate forced to a constant (weights 0: i = sigmoid(b_I)) and forget gate to 1
    # (weights 0, a huge bias): theta_t = theta_{t-1} - i * grad, plain SGD with step size i.
    torch.manual_seed(0)
    model = MLP(4, [8], 3)
    learner = LSTMMetaLearner(model, inner_steps=3, inner_lr=0.1)
    with torch.no_grad():
        for gate in (learner.input_gate, learner.forget_gate):
            gate.weight.zero_()
        learner.forget_gate.bias.fill_(100.0)
    lr = torch.sigmoid(learner.input_gate.bias).item()
    assert lr == pytest.approx(0.1)
    x, y = torch.randn(2, 6, 4), torch.randint(0, 3, (2, 6))
    theta = learner.adapt(x, y, steps=3)
    for task in range(2):
        params = {k: v.detach().clone() for k, v in named_params(model).items()}
        for _ in range(3):
            names = list(params)
            loss = F.cross_entropy(
                forward(model, {k: params[k].requires_grad_() for k in names}, x[task]), y[task]
            )
            grads = torch.autograd.grad(loss, [params[k] for k in names])
            params = {k: (params[k] - lr * g).detach() for k, g in zip(names, grads)}
        adapted = learner.unflatten(theta[task])
        for k in params:
            assert torch.allclose(adapted[k], params[k], atol=1e-6), k


def test_lstm_meta_shapes_and_meta_gradients():
    batch = fake_batch(ways=5, shots=1, queries=2, tasks=2)
    learner = LSTMMetaLearner(
        Conv4(hidden=8, out_features=5, norm="batch_stats"), inner_steps=2, inner_lr=0.1
    )
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    assert set(metrics) == {"loss", "accuracy"}
    # The meta-gradient reaches the LSTM, both gates and theta_0; the first conv's bias has a true
    # gradient of 0 (a batch-statistics norm follows it), which the first block computes exactly.
    grads = {n: p.grad for n, p in learner.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if not n.endswith("features.0.bias")), [
        n for n, g in grads.items() if g.abs().sum() == 0
    ]
    out = learner.predict(batch.support_x, batch.support_y, batch.query_x, steps=1)
    assert out.shape == (2, 10, 5) and not out.requires_grad


# --- learning on real data -------------------------------------------------------------------


@pytest.mark.data
def test_mann_learns_label_sequence_statistics_on_omniglot(omniglot):
    # The paper's network (200 LSTM units, 128 x 40 memory, 4 heads) on 3-way episodes of 10
    # instances per class (3 ways, not 5: 5-way showed nothing measurable in 40 s): 150 Adam steps
    # of 8 episodes, about 30 s at 1 thread. Such a short run learns the label-sequence statistics
    # (at a class's first showing, guess a label not yet seen), measured on 200 test episodes:
    # 46% at the 1st instance and 39% at the 2nd against chance 33% (standard errors 2% and 2%);
    # true one-shot binding takes far longer (the paper trains 100,000 episodes).
    torch.manual_seed(0)
    mann = MANN(3)
    opt = torch.optim.Adam(mann.parameters(), lr=3e-3)
    source = omniglot.sampler("train", 3, 1, 9, seed=0)
    for it in range(150):
        mann.set_iteration(it)
        loss, _ = mann.meta_loss(source.sample(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = mann.accuracy_by_instance(omniglot.sampler("test", 3, 1, 9, seed=1).sample(200))
    assert acc[1] > 0.40 and acc[2] > 0.355, acc


@pytest.mark.data
def test_lstm_meta_adapts_above_chance_on_omniglot(omniglot):
    # 5-way 5-shot, 5 updates of a 32-filter Conv-4 per episode, 12 meta-batches of 2 episodes
    # (about 20 s at 1 thread): measured 81% on these 20 test episodes (78% before meta-training:
    # the LSTM starts as near-SGD with step 0.1 from a random theta_0, already far above chance 20%;
    # 87% on 40 episodes after 28 meta-batches).
    torch.manual_seed(0)
    learner = LSTMMetaLearner(
        Conv4(hidden=32, out_features=5, norm="batch_stats"), inner_steps=5, inner_lr=0.1
    )
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    source = omniglot.sampler("train", 5, 5, 5, seed=0)
    for _ in range(12):
        loss, _ = learner.meta_loss(source.sample(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    batch = omniglot.sampler("test", 5, 5, 5, seed=1).sample(20)
    accuracy = (
        (learner.predict(batch.support_x, batch.support_y, batch.query_x).argmax(-1) == batch.query_y)
        .float()
        .mean()
        .item()
    )
    assert accuracy > 0.6, accuracy
