"""The metric-based family: Prototypical, Matching, Relation and Siamese networks.

Unit tests check each learner's shapes and one property that can be worked out by hand; the tests
marked `data` meta-train each learner briefly on real Omniglot (5-way 1-shot) and require held-out
test accuracy well above the 20% of chance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import episode_batch as image_batch
from metalab import MatchingNet, ProtoNet, RelationNet, SiameseNet
from metalab.algorithms.metric import relation as relation_module
from metalab.builders import build_learner, build_optimizer, build_schedule
from metalab.config import Config, ConfigError
from metalab.evaluate import evaluate
from metalab.tasks import TaskBatch

METRIC = ("protonet", "matching", "relation", "siamese")


def vector_task():
    """One task of 2-d points: 3 classes with 1, 2 and 3 support points (shuffled), 4 queries."""
    support_x = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [4.0, 4.0], [0.0, 3.0], [3.0, 1.0]])[None]
    support_y = torch.tensor([2, 1, 2, 0, 2, 1])[None]
    query_x = torch.tensor([[0.5, 2.0], [3.5, 3.0], [2.5, 0.0], [1.0, -1.0]])[None]
    return support_x, support_y, query_x


# --------------------------------------------------------------------------------------------
# Shared conformance: built from configs, train and eval modes, gradients, checkpoints
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METRIC + ("matching_fce",))
def test_builds_trains_and_predicts_any_number_of_ways(name):
    torch.manual_seed(0)
    c = Config(
        benchmark="omniglot",
        algorithm=name.removesuffix("_fce"),
        fce=name.endswith("_fce"),
        ways=6,
        test_ways=4,
    ).resolved()
    learner = build_learner(c)
    batch = image_batch(ways=6, shots=2, queries=2)
    loss, metrics = learner.meta_loss(batch)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert {"loss", "accuracy"} <= set(metrics) and 0.0 <= metrics["accuracy"] <= 1.0
    loss.backward()
    missing = [n for n, p in learner.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"
    # Eval mode (BatchNorm running statistics), fewer ways than in training, `steps` accepted.
    test = image_batch(ways=4, shots=1, queries=3, tasks=3, seed=1)
    learner.eval()
    with torch.no_grad():
        out = learner.predict(test.support_x, test.support_y, test.query_x, steps=1)
        alone = learner.predict(test.support_x[1:2], test.support_y[1:2], test.query_x[1:2])
    assert out.shape == (3, 12, 4) and torch.isfinite(out).all()
    # With running statistics a task's answers do not depend on the other tasks of the batch.
    torch.testing.assert_close(out[1:2], alone, rtol=1e-4, atol=1e-5)
    # A checkpoint's weights load into a learner rebuilt from the same config.
    rebuilt = build_learner(c)
    rebuilt.load_state_dict(learner.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.predict(test.support_x, test.support_y, test.query_x), out)


def test_metric_learners_refuse_the_sine_benchmark():
    with pytest.raises(ConfigError, match="image benchmark"):
        Config(benchmark="sine", algorithm="protonet").resolved()


def test_step_schedule_halves_the_learning_rate():
    c = Config(
        benchmark="omniglot",
        algorithm="protonet",
        outer_lr=1e-3,
        lr_schedule="step",
        lr_decay_every=3,
        lr_decay_factor=0.5,
    ).resolved()
    learner = build_learner(c)
    optimizer = build_optimizer(c, learner)
    schedule = build_schedule(c, optimizer)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1e-3] * 3 + [5e-4] * 3 + [2.5e-4])
    with pytest.raises(ConfigError, match="lr_decay_every"):
        Config(benchmark="omniglot", algorithm="protonet", lr_schedule="step", lr_decay_every=0).resolved()


# --------------------------------------------------------------------------------------------
# Prototypical Networks
# --------------------------------------------------------------------------------------------


def test_protonet_logits_are_minus_squared_distances_to_class_means():
    support_x, support_y, query_x = vector_task()
    logits = ProtoNet(nn.Identity()).predict(support_x, support_y, query_x)
    means = torch.stack([support_x[0][support_y[0] == k].mean(0) for k in range(3)])  # by hand, eq. 1
    expected = -((query_x[0][:, None, :] - means[None]) ** 2).sum(-1)  # eq. 2 before the softmax
    assert logits.shape == (1, 4, 3)
    torch.testing.assert_close(logits[0], expected)
    # class 0 = (4, 4), class 1 = mean of (2, 0), (3, 1) = (2.5, 0.5), class 2 = mean of three points
    torch.testing.assert_close(logits[0, 1, 0], torch.tensor(-(0.5**2 + 1.0**2)))


def test_protonet_loss_is_cross_entropy_of_the_logits():
    support_x, support_y, query_x = vector_task()
    query_y = torch.tensor([[2, 0, 1, 1]])
    net = ProtoNet(nn.Linear(2, 2))
    loss, metrics = net.meta_loss(TaskBatch(support_x, support_y, query_x, query_y))
    logits = net.predict(support_x, support_y, query_x)
    torch.testing.assert_close(loss, F.cross_entropy(logits[0], query_y[0]))
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == query_y).float().mean().item())


# --------------------------------------------------------------------------------------------
# Matching Networks
# --------------------------------------------------------------------------------------------


def test_matching_output_is_log_of_cosine_attention_over_one_hot_labels():
    support_x, support_y, query_x = vector_task()
    out = MatchingNet(nn.Identity()).predict(support_x, support_y, query_x)
    cosine = F.normalize(query_x[0], dim=-1) @ F.normalize(support_x[0], dim=-1).T
    attention = torch.softmax(cosine, dim=-1)  # eq. 2
    expected = attention @ F.one_hot(support_y[0], 3).float()  # eq. 1
    torch.testing.assert_close(out[0].exp(), expected)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(1, 4))  # a distribution over the classes


def test_matching_paper_attention_is_bounded_on_non_negative_embeddings_and_a_scale_sharpens_it():
    # Embeddings behind a ReLU (Conv-4's last block) are >= 0, so every cosine lies in [0, 1]: with
    # the paper's eq. 2, even a query identical to its class's single support example and orthogonal
    # to the 4 others gets P(true) = e / (e + 4), and the NLL cannot fall below -log of that.
    support_x = torch.eye(5)[None]  # 5-way 1-shot, orthogonal non-negative embeddings
    support_y = torch.arange(5)[None]
    query_x = torch.eye(5)[None]  # each query equal to its class's support example
    bound = math.e / (math.e + 4)
    paper = MatchingNet(nn.Identity()).predict(support_x, support_y, query_x).exp()
    torch.testing.assert_close(paper.diagonal(dim1=1, dim2=2), torch.full((1, 5), bound))
    sharp = MatchingNet(nn.Identity(), cosine_scale=10.0).predict(support_x, support_y, query_x).exp()
    torch.testing.assert_close(
        sharp.diagonal(dim1=1, dim2=2), torch.full((1, 5), math.exp(10) / (math.exp(10) + 4))
    )
    # On the shuffled 3-way task: softmax of s * cos, then eq. 1, rows still distributions.
    support_x, support_y, query_x = vector_task()
    out = MatchingNet(nn.Identity(), cosine_scale=3.0).predict(support_x, support_y, query_x)
    cosine = F.normalize(query_x[0], dim=-1) @ F.normalize(support_x[0], dim=-1).T
    expected = torch.softmax(3.0 * cosine, dim=-1) @ F.one_hot(support_y[0], 3).float()
    torch.testing.assert_close(out[0].exp(), expected)


def test_matching_learned_cosine_scale_is_trained_and_a_fixed_one_keeps_the_state_dict():
    torch.manual_seed(0)
    paper = MatchingNet(nn.Linear(2, 4))
    fixed = MatchingNet(nn.Linear(2, 4), cosine_scale=5.0)
    learned = MatchingNet(nn.Linear(2, 4), cosine_scale=5.0, learn_cosine_scale=True)
    # A fixed scale adds nothing to the weights: checkpoints of the paper's model load either way.
    assert set(fixed.state_dict()) == set(paper.state_dict())
    assert set(learned.state_dict()) == set(paper.state_dict()) | {"log_cosine_scale"}
    learned.load_state_dict(paper.state_dict(), strict=False)
    fixed.load_state_dict(paper.state_dict())
    support_x, support_y, query_x = vector_task()
    # Starting from cosine_scale, the learned model computes what the fixed one does.
    torch.testing.assert_close(
        learned.predict(support_x, support_y, query_x), fixed.predict(support_x, support_y, query_x)
    )
    batch = TaskBatch(support_x, support_y, query_x, torch.tensor([[2, 0, 1, 1]]))
    optimizer = torch.optim.SGD(learned.parameters(), lr=0.5)
    loss, _ = learned.meta_loss(batch)
    loss.backward()
    assert learned.log_cosine_scale.grad is not None and learned.log_cosine_scale.grad.abs() > 0
    optimizer.step()
    assert learned.scale().item() != pytest.approx(5.0)
    with pytest.raises(ValueError, match="cosine_scale"):
        MatchingNet(nn.Identity(), cosine_scale=0.0)


@pytest.mark.parametrize("value", [0.0, -2.0, float("nan"), 1e39, "sharp"])
def test_matching_cosine_scale_must_be_a_positive_number(value):
    with pytest.raises(ConfigError, match="cosine_scale"):
        Config(benchmark="omniglot", algorithm="matching", cosine_scale=value).resolved()


def test_matching_fce_reads_the_whole_support_set():
    torch.manual_seed(0)
    support_x, support_y, query_x = vector_task()
    net = MatchingNet(nn.Identity(), fce=True, feature_dim=2, fce_steps=3)
    out = net.predict(support_x, support_y, query_x)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(1, 4))
    # Full context: changing one support example changes the embedding of the other ones (the
    # bidirectional LSTM), which a plain Matching Network would not do.
    moved = support_x.clone()
    moved[0, 3] = torch.tensor([-4.0, 1.0])
    g = net.fce.embed_support(support_x)
    g_moved = net.fce.embed_support(moved)
    assert not torch.allclose(g[0, 0], g_moved[0, 0])
    with pytest.raises(ValueError, match="feature_dim"):
        MatchingNet(nn.Identity(), fce=True)


# --------------------------------------------------------------------------------------------
# Relation Networks
# --------------------------------------------------------------------------------------------


def test_relation_scores_in_unit_interval_and_kshot_maps_are_summed():
    torch.manual_seed(0)
    net = RelationNet()
    batch = image_batch(ways=5, shots=3, queries=2)
    maps = net.encoder(batch.support_x[0])
    assert maps.shape == (15, 64, 5, 5)  # the paper's Omniglot embedding keeps 64x5x5 feature maps
    scores = net.predict(batch.support_x, batch.support_y, batch.query_x)
    assert scores.shape == (2, 10, 5) and ((scores >= 0) & (scores <= 1)).all()
    # The class feature map is the sum over the class's shots: scoring the summed maps directly
    # (in eval mode, so that the batch composition does not matter) gives the same scores.
    net.eval()
    with torch.no_grad():
        support_maps = net.encoder(batch.support_x[0])
        class_maps = torch.stack([support_maps[batch.support_y[0] == k].sum(0) for k in range(5)])
        direct = net.scores(class_maps[None], net.encoder(batch.query_x[0])[None])
        torch.testing.assert_close(
            net.predict(batch.support_x[:1], batch.support_y[:1], batch.query_x[:1]), direct
        )


def test_relation_loss_is_mse_against_one_hot_and_eval_chunks_are_exact(monkeypatch):
    torch.manual_seed(0)
    net = RelationNet()
    batch = image_batch(ways=4, shots=1, queries=3)
    loss, _ = net.meta_loss(batch)
    scores = net.predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(loss, ((scores - F.one_hot(batch.query_y, 4).float()) ** 2).mean())
    net.eval()
    with torch.no_grad():
        whole = net.predict(batch.support_x, batch.support_y, batch.query_x)
        monkeypatch.setattr(relation_module, "_EVAL_PAIRS", 5)
        chunked = net.predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(whole, chunked)


# --------------------------------------------------------------------------------------------
# Siamese networks
# --------------------------------------------------------------------------------------------


def test_siamese_similarity_is_symmetric_and_weighted_l1():
    torch.manual_seed(0)
    net = SiameseNet(nn.Identity(), feature_dim=3)
    a, b = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    ab, ba = net.similarity(a, b), net.similarity(b, a)
    torch.testing.assert_close(ab, ba.transpose(1, 2))
    w, bias = net.distance.weight[0], net.distance.bias[0]
    torch.testing.assert_close(ab[1, 2, 3], ((a[1, 2] - b[1, 3]).abs() * w).sum() + bias)


def test_siamese_predicts_by_the_most_similar_support_example():
    support_x, support_y, query_x = vector_task()
    net = SiameseNet(nn.Identity(), feature_dim=2)
    with torch.no_grad():
        net.distance.weight.fill_(-1.0)  # similarity = -L1 distance
        net.distance.bias.zero_()
    scores = net.predict(support_x, support_y, query_x)
    l1 = (query_x[0][:, None] - support_x[0][None]).abs().sum(-1)  # (4, 6)
    expected = torch.stack([(-l1[:, support_y[0] == k]).amax(1) for k in range(3)], dim=1)
    torch.testing.assert_close(scores[0], expected)


def test_siamese_loss_balances_same_and_different_pairs():
    support_x, support_y, query_x = vector_task()
    query_y = torch.tensor([[2, 0, 1, 1]])
    net = SiameseNet(nn.Identity(), feature_dim=2)
    loss, metrics = net.meta_loss(TaskBatch(support_x, support_y, query_x, query_y))
    z, y = torch.cat([support_x[0], query_x[0]]), torch.cat([support_y[0], query_y[0]])
    same, different = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            logit = net.similarity(z[i][None, None], z[j][None, None]).reshape(())
            target = float(y[i] == y[j])
            (same if target else different).append(
                F.binary_cross_entropy_with_logits(logit, torch.tensor(target))
            )
    expected = 0.5 * torch.stack(same).mean() + 0.5 * torch.stack(different).mean()
    torch.testing.assert_close(loss, expected)
    assert 0.0 <= metrics["accuracy"] <= 1.0


# --------------------------------------------------------------------------------------------
# Learning on real Omniglot
# --------------------------------------------------------------------------------------------

# (iterations, minimum 5-way 1-shot test accuracy over 50 test tasks). Measured with these seeds on
# one thread of 2 shared cores: protonet 74.3%, matching 67.0%, relation 62.9%, siamese 56.2%
# (+/- about 4%), 11-24 s per learner; the thresholds leave 10-20 points of margin.
LEARNS = {"protonet": (100, 0.55), "matching": (100, 0.5), "relation": (120, 0.5), "siamese": (200, 0.45)}


@pytest.mark.data
@pytest.mark.parametrize("name", METRIC)
def test_learns_omniglot_5way_1shot(name, omniglot, one_thread):
    iterations, least = LEARNS[name]
    torch.manual_seed(0)
    c = Config(benchmark="omniglot", algorithm=name, ways=5, shots=1, queries=5, outer_lr=1e-3).resolved()
    learner = build_learner(c)
    optimizer = build_optimizer(c, learner)
    source = omniglot.sampler("train", ways=5, shots=1, queries=5, seed=0)
    learner.train()
    for _ in range(iterations):
        loss, _ = learner.meta_loss(source.sample(1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    result = evaluate(learner, omniglot.sampler("test", ways=5, shots=1, queries=5, seed=20_000), 50)
    print(f"{name}: {result}")
    assert result.mean >= least, f"{name} after {iterations} iterations: {result}"
