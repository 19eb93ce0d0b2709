"""Every learner built from its config with a fixed seed gives the same meta-gradient as the code that
wrote tests/fixtures/meta_gradients.json (float64; see tests/fixtures/make_meta_gradients.py), on the
CPU and on every GPU present (there to a looser tolerance: other kernels sum in other orders)."""

import json
from pathlib import Path

import pytest
import torch

from helpers import devices, image_batch
from metalab import builders
from metalab.config import Config
from metalab.train import train
from reference_cases import (
    CASES,
    conv4_loss,
    conv4_loss_and_grads,
    first_order_meta_gradient,
    meta_gradient_summary,
    mlp_loss_and_grads,
    reptile_target,
    second_order_meta_gradient,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "meta_gradients.json").read_text())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", sorted(CASES))
def test_meta_gradient_matches_reference(name, device):
    expected, got = FIXTURE[name], meta_gradient_summary(name, device)
    rel = 1e-9 if device == "cpu" else 1e-7
    assert got["loss"] == pytest.approx(expected["loss"], rel=rel)
    assert sorted(got["params"]) == sorted(expected["params"])
    # Entries whose true value is 0 carry rounding noise: the tolerance scales with the largest norm.
    scale = max(v[1] for v in expected["params"].values())
    for key, want in expected["params"].items():
        for a, b in zip(got["params"][key], want):
            assert abs(a - b) <= rel * abs(b) + 1e-2 * rel * scale, (key, got["params"][key], want)


# --- first-order MAML and Reptile against independent float64 references -------------------------
# (reference_cases: the MLP's gradients by hand, Conv-4's forward by hand, plain SGD inner steps.)


def _built(**keys):
    """The learner of a config, seeded as a run builds it, with its meta-parameters' values."""
    c = Config(**keys).resolved()
    torch.manual_seed(c.seed)
    learner = builders.build_learner(c)
    learner.train()
    return c, learner, {k: v.detach().clone() for k, v in learner.named_parameters()}


def _assert_close(got: dict, want: dict, rtol: float) -> float:
    """Every entry within rtol of the reference's, relative to the largest entry of the reference
    (entries whose true value is 0, such as conv biases before a batch norm, carry only rounding)."""
    scale = max(v.abs().max().item() for v in want.values())
    worst = 0.0
    assert got.keys() == want.keys()
    for k, w in want.items():
        err = (got[k] - w).abs().max().item()
        worst = max(worst, err / scale)
        assert err <= rtol * scale, (k, err, scale)
    return worst


def _largest_difference(a: dict, b: dict) -> float:
    scale = max(v.abs().max().item() for v in b.values())
    return max((a[k] - b[k]).abs().max().item() for k in b) / scale


SINE = dict(benchmark="sine", shots=5, queries=6, seed=3)
OMNIGLOT = dict(
    benchmark="omniglot", data_dir="unused", ways=3, shots=1, queries=2, seed=3, filters=8, image_size=16
)
RTOL = 1e-10


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_first_order_maml_gradient_is_the_query_gradient_at_the_adapted_weights_mlp(strategy):
    c, learner, theta = _built(**SINE, algorithm="fomaml", inner_steps=2, inner_lr=0.02, strategy=strategy)
    batch = builders.build_source(c, "train").sample(4)
    learner.meta_loss(batch)[0].backward()
    got = {k: p.grad for k, p in learner.model.named_parameters()}
    theta = {k[len("model.") :]: v for k, v in theta.items()}
    want = first_order_meta_gradient(mlp_loss_and_grads, theta, batch, 0.02, 2)
    _assert_close(got, want, RTOL)
    # The test tells first order from second: the terms through the inner steps are far larger
    # than its tolerance.
    second = second_order_meta_gradient(lambda p, x, y: mlp_loss_and_grads(p, x, y)[0], theta, batch, 0.02, 2)
    assert _largest_difference(second, want) > 1e4 * RTOL


@pytest.mark.usefixtures("float64")
def test_first_order_maml_gradient_is_the_query_gradient_at_the_adapted_weights_conv4():
    c, learner, theta = _built(**OMNIGLOT, algorithm="fomaml", inner_steps=2, inner_lr=0.4)
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2, size=16, seed=1)
    learner.meta_loss(batch)[0].backward()
    got = {k: p.grad for k, p in learner.model.named_parameters()}
    theta = {k[len("model.") :]: v for k, v in theta.items()}
    want = first_order_meta_gradient(conv4_loss_and_grads, theta, batch, 0.4, 2)
    _assert_close(got, want, 1e-9)
    second = second_order_meta_gradient(conv4_loss, theta, batch, 0.4, 2)
    assert _largest_difference(second, want) > 1e4 * 1e-9


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("strategy,task_threads", [("vmap", 1), ("loop", 1), ("loop", 2)])
def test_reptile_outer_step_through_the_training_loop_mlp(strategy, task_threads, tmp_path):
    """One iteration of `metalab train` with the paper's outer SGD: theta + epsilon * mean(phi - theta),
    on one thread and on task threads (each averaging over its slice of 2 of the 4 tasks)."""
    keys = dict(
        SINE,
        algorithm="reptile",
        inner_steps=3,
        inner_lr=0.02,
        strategy=strategy,
        task_threads=task_threads,
        meta_batch=4,
        outer_optimizer="sgd",
        outer_lr=0.7,
        lr_schedule="cosine",
        iterations=1,
        val_every=0,
    )
    c, _, theta = _built(**keys)
    batch = builders.build_source(c, "train").sample(c.meta_batch)  # what the run draws first
    result = train(Config(**keys), tmp_path / "run", progress=False, log=lambda *_: None)
    got = {k: v.detach() for k, v in result.learner.model.named_parameters()}
    theta = {k[len("model.") :]: v for k, v in theta.items()}
    move = reptile_target(mlp_loss_and_grads, theta, batch, 0.02, 3)
    want = {k: theta[k] + 0.7 * move[k] for k in theta}
    _assert_close(got, want, 1e-12)
    # Averaging matters here: the last task's move alone, or the sum, lands far off.
    last = reptile_target(mlp_loss_and_grads, theta, _tasks(batch, [-1]), 0.02, 3)
    assert _largest_difference({k: theta[k] + 0.7 * last[k] for k in theta}, want) > 1e6 * 1e-12


def _tasks(batch, index):
    return type(batch)(*(t[index] for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("optimizer,lr", [("sgd", 1.0), ("adam", 1e-3)])
def test_reptile_outer_step_conv4(optimizer, lr):
    """One outer step on Conv-4: SGD moves theta by lr * mean(phi - theta); Adam's first step treats
    theta - mean(phi) as the gradient g, so it moves each entry by -lr * g / (|g| + 1e-8)."""
    c, learner, theta = _built(
        **OMNIGLOT,
        algorithm="reptile",
        inner_steps=2,
        inner_lr=0.1,
        meta_batch=3,
        outer_optimizer=optimizer,
        outer_lr=lr,
    )
    batch = _tasks(image_batch(tasks=2, ways=3, shots=1, queries=2, size=16, seed=1), [0, 1, 0])
    batch = type(batch)(batch.support_x.clone(), batch.support_y, batch.query_x, batch.query_y)
    batch.support_x[2] = -batch.support_x[2]  # a third task unlike the first two
    opt = builders.build_optimizer(c, learner)
    opt.zero_grad()
    learner.meta_loss(batch)[0].backward()
    opt.step()
    got = {k: v.detach() for k, v in learner.model.named_parameters()}
    theta = {k[len("model.") :]: v for k, v in theta.items()}
    move = reptile_target(conv4_loss_and_grads, theta, batch, 0.1, 2)
    if optimizer == "sgd":
        _assert_close(got, {k: theta[k] + lr * move[k] for k in theta}, 1e-12)
        return
    # Adam divides by |g|: where g is 0 in exact arithmetic (the conv biases before a batch norm)
    # it divides rounding noise by 1e-8, so those entries are only checked to have hardly moved.
    real = {k: m.abs() > 1e-10 for k, m in move.items()}
    want = {k: theta[k] + lr * move[k] / (move[k].abs() + 1e-8) for k in theta}
    _assert_close(
        {k: got[k][real[k]] for k in got if real[k].any()},
        {k: want[k][real[k]] for k in want if real[k].any()},
        1e-12,
    )
    assert all(((got[k] - theta[k])[~real[k]].abs() <= 1e-3 * lr).all() for k in theta)
    assert sum(int((~r).sum()) for r in real.values()) < 0.05 * sum(r.numel() for r in real.values())
