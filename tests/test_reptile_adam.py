"""Reptile's inner loop as Nichol et al. 2018 run it: Adam with beta1 = 0 on shuffled mini-batches of
the support set, its moments carried from one meta-batch to the next; checked against an independent
float64 reference (a hand-written Adam over `reference_cases.conv4_loss_and_grads`) and against
`torch.optim.Adam`."""

import pytest
import torch

from helpers import image_batch
from metalab import builders
from metalab.config import Config, ConfigError
from metalab.functional import Adam, minibatch_order
from reference_cases import conv4_loss_and_grads

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

OMNIGLOT = dict(
    benchmark="omniglot", data_dir="unused", ways=3, shots=3, queries=2, seed=3, filters=8, image_size=16
)
CONV_BIASES = {f"features.{4 * i}.bias" for i in range(4)}  # before a batch norm: no effect on the loss


def test_minibatch_order_takes_shuffled_passes_over_the_support_set():
    torch.manual_seed(0)
    order = minibatch_order(50, 10, 5)
    assert order.shape == (5, 10)
    assert sorted(order.flatten().tolist()) == list(range(50))  # one pass: every example once
    order = minibatch_order(7, 3, 5).flatten().tolist()
    assert sorted(order[:7]) == list(range(7)) and sorted(order[7:14]) == list(range(7))
    assert len(order) == 15
    # The whole set where it fits in one batch (repeats would give the same mean gradient).
    assert minibatch_order(5, 10, 50) is None and minibatch_order(5, None, 3) is None


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_rule_matches_torch_adam(beta1):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    target = torch.randn(4, 3, generator=g)
    rule = Adam(0.01, beta1=beta1)
    params, state = {"w": w.clone()}, rule.init({"w": w})
    ref = w.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=0.01, betas=(beta1, 0.999), eps=1e-8)
    for step in range(4):
        grads = {"w": 2 * (params["w"] - target) * (step + 1)}
        params, state = rule.update(params, grads, state, step)
        opt.zero_grad()
        ref.grad = 2 * (ref.detach() - target) * (step + 1)
        opt.step()
        torch.testing.assert_close(params["w"], ref.detach(), rtol=1e-12, atol=1e-14)
    assert state.t == 4


def _adam_adapt(theta, v, t, x, y, order, lr, steps, beta2=0.999, eps=1e-8):
    """phi after `steps` Adam steps (beta1 = 0) from theta with second moments v at step count t,
    step s on the examples order[s]; written out with plain tensor ops."""
    phi, v = dict(theta), dict(v)
    for s in range(steps):
        _, grads = conv4_loss_and_grads(phi, x[order[s]], y[order[s]])
        t += 1
        v = {k: beta2 * v[k] + (1 - beta2) * grads[k] ** 2 for k in v}
        phi = {k: phi[k] - lr * grads[k] / (torch.sqrt(v[k] / (1 - beta2**t)) + eps) for k in phi}
    return phi, v


@pytest.mark.usefixtures("float64")
def test_two_outer_steps_match_a_float64_reference():
    """Two meta-batches of three tasks: each task's 3 Adam steps on mini-batches of 4 of its 9
    support examples, theta moved by the outer SGD (lr 0.8) toward the mean adapted weights, and
    the second meta-batch starting from the first one's mean second moments."""
    keys = dict(
        OMNIGLOT,
        algorithm="reptile",
        inner_optimizer="adam",
        inner_lr=0.01,
        inner_steps=3,
        inner_batch=4,
        meta_batch=3,
        outer_optimizer="sgd",
        outer_lr=0.8,
    )
    c = Config(**keys).resolved()
    torch.manual_seed(c.seed)
    learner = builders.build_learner(c)
    learner.train()
    opt = builders.build_optimizer(c, learner)
    theta = {k[len("model.") :]: v.detach().clone() for k, v in learner.named_parameters()}
    v = {k: torch.zeros_like(p) for k, p in theta.items()}
    drawn = []
    orders_of = learner._orders
    learner._orders = lambda *a: drawn.append(orders_of(*a)) or drawn[-1]
    for it in range(2):
        batch = image_batch(tasks=3, ways=3, shots=3, queries=2, size=16, seed=it)
        opt.zero_grad()
        learner.meta_loss(batch)[0].backward()
        opt.step()
        phis, vs = zip(
            *(
                _adam_adapt(theta, v, 3 * it, batch.support_x[i], batch.support_y[i], drawn[-1][i], 0.01, 3)
                for i in range(3)
            )
        )
        theta = {k: theta[k] + 0.8 * sum(phi[k] - theta[k] for phi in phis) / 3 for k in theta}
        v = {k: sum(vi[k] for vi in vs) / 3 for k in v}
    assert drawn[0].shape == (3, 3, 4)
    got = {k[len("model.") :]: p.detach() for k, p in learner.named_parameters()}
    scale = max(t.abs().max().item() for t in theta.values())
    for k in theta:
        if k in CONV_BIASES:  # their gradient is rounding noise, which Adam scales up to steps of lr
            assert (got[k] - theta[k]).abs().max() <= 2 * 3 * 0.01 * 0.8
            continue
        assert (got[k] - theta[k]).abs().max() <= 1e-9 * scale, k
    moments = learner._moments()
    assert learner.inner_t.item() == 6
    for k in v:
        if k not in CONV_BIASES:
            torch.testing.assert_close(moments.v[k], v[k], rtol=1e-9, atol=1e-30)


def _learner(**keys):
    c = Config(**OMNIGLOT, algorithm="reptile", inner_optimizer="adam", inner_lr=0.01, **keys).resolved()
    torch.manual_seed(0)
    return builders.build_learner(c)


def test_moments_are_saved_with_the_learner_and_left_alone_by_prediction():
    learner = _learner(inner_steps=2, inner_batch=4)
    learner.meta_loss(image_batch(tasks=2, ways=3, shots=3, queries=2, size=16))[0].backward()
    saved = {k: v.clone() for k, v in learner.state_dict().items()}
    assert saved["inner_v"].abs().sum() > 0 and saved["inner_t"].item() == 2
    test = image_batch(tasks=2, ways=3, shots=1, queries=2, size=16, seed=5)
    out = learner.predict(test.support_x, test.support_y, test.query_x, steps=3)
    assert torch.equal(learner.inner_v, saved["inner_v"]) and learner.inner_t.item() == 2
    fresh = _learner(inner_steps=2, inner_batch=4)
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.predict(test.support_x, test.support_y, test.query_x, steps=3), out)
    # The moments change the answer: from zero moments every first step has size lr.
    fresh.inner_v.zero_()
    fresh.inner_t.zero_()
    assert not torch.allclose(fresh.predict(test.support_x, test.support_y, test.query_x, steps=3), out)
    assert not learner.task_parallel  # the moments are written by meta_loss


@pytest.mark.parametrize(
    "keys,message",
    [
        (dict(inner_beta1=0.5), "inner_beta1' applies to inner_optimizer: adam"),
        (dict(inner_optimizer="adam", inner_beta1=1.0), "inner_beta1' must be in [0, 1)"),
        (dict(inner_batch=0), "inner_batch"),
        (dict(inner_optimizer="rmsprop"), "inner_optimizer"),
    ],
)
def test_bad_inner_loop_keys_are_refused(keys, message):
    with pytest.raises((ConfigError, ValueError)) as e:
        Config(**OMNIGLOT, algorithm="reptile", **keys).resolved()
    assert message in str(e.value)


def test_evaluation_takes_its_own_mini_batch_size():
    learner = _learner(inner_steps=2, inner_batch=4, eval_inner_batch=2)
    drawn = []
    orders_of = learner._orders
    learner._orders = lambda *a: drawn.append(orders_of(*a)) or drawn[-1]
    test = image_batch(tasks=2, ways=3, shots=2, queries=2, size=16, seed=5)
    learner.predict(test.support_x, test.support_y, test.query_x, steps=3)
    learner.meta_loss(image_batch(tasks=2, ways=3, shots=3, queries=2, size=16))
    assert drawn[0].shape == (2, 3, 2) and drawn[1].shape == (2, 2, 4)
    assert _learner(inner_steps=2, inner_batch=4).eval_inner_batch == 4  # default: inner_batch


def test_a_prediction_with_test_mini_batches_is_a_function_of_its_episode():
    """The test-time mini-batches come from the support set's contents, not the global RNG: the same
    episode gets the same answer whatever was drawn before, another episode other batches."""
    learner = _learner(inner_steps=2, inner_batch=4, eval_inner_batch=2)
    test = image_batch(tasks=2, ways=3, shots=2, queries=2, size=16, seed=5)
    torch.manual_seed(0)
    first = learner.predict(test.support_x, test.support_y, test.query_x, steps=3)
    torch.manual_seed(1)
    torch.rand(100)
    again = learner.predict(test.support_x, test.support_y, test.query_x, steps=3)
    assert torch.equal(first, again)
    other = image_batch(tasks=2, ways=3, shots=2, queries=2, size=16, seed=6)
    assert not torch.equal(learner.eval_batches(test.support_x, 3), learner.eval_batches(other.support_x, 3))
