"""`later_inner_lr`: the step size of MAML's second and later inner steps.

A one-step MAML initialisation sits where the support loss's sharpest curvature lambda_max puts
alpha * lambda_max near or past 2, the line beyond which plain gradient descent at alpha oscillates
and grows along that direction (docs/sine.md measures it on the sine-wave benchmark). These tests
check the rule and the learners against hand-written steps, and that a smaller later step turns a
k-step loss that rises with k at alpha into one that falls.
"""

import pytest
import torch
import torch.nn.functional as F

from metalab import MAML, SineTasks
from metalab.builders import build_learner
from metalab.config import Config, ConfigError, config_from_dict
from metalab.config_checks import validate
from metalab.functional import SGD
from metalab.models import MLP


def test_sgd_rule_uses_later_rate_after_the_first_step():
    params = {"w": torch.tensor([1.0, -2.0])}
    grads = {"w": torch.tensor([0.5, 1.0])}
    rule = SGD(0.1, later_lr=0.01)
    first, _ = rule.update(params, grads, None, 0)
    second, _ = rule.update(first, grads, None, 1)
    assert torch.allclose(first["w"], params["w"] - 0.1 * grads["w"])
    assert torch.allclose(second["w"], first["w"] - 0.01 * grads["w"])
    plain, _ = SGD(0.1).update(params, grads, None, 3)  # no later rate: lr at every step
    assert torch.allclose(plain["w"], params["w"] - 0.1 * grads["w"])


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_maml_predict_steps_at_alpha_then_later_rate(strategy):
    torch.manual_seed(0)
    model = MLP(hidden=(8,))
    maml = MAML(model, "regression", inner_lr=0.02, later_inner_lr=0.005, strategy=strategy)
    batch = SineTasks(shots=5, queries=7, seed=1).sample(3)
    out = maml.predict(batch.support_x, batch.support_y, batch.query_x, steps=3)
    for t in range(3):
        p = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
        for step, lr in enumerate((0.02, 0.005, 0.005)):
            loss = F.mse_loss(torch.func.functional_call(model, p, (batch.support_x[t],)), batch.support_y[t])
            g = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - lr * gk).detach().requires_grad_() for (k, v), gk in zip(p.items(), g)}
        want = torch.func.functional_call(model, p, (batch.query_x[t],))
        assert torch.allclose(out[t], want, atol=1e-6), step


def _edge_of_stability_learner(later: float | None) -> tuple[MAML, torch.Tensor, torch.Tensor]:
    """A linear regressor whose support loss has alpha * lambda_max = 3 at alpha = inner_lr."""
    model = MLP(hidden=())  # y = w x + b, started with w right and b off by 0.5
    with torch.no_grad():
        model.net[0].weight.fill_(2.0)
        model.net[0].bias.fill_(0.0)
    x = torch.linspace(-1.0, 1.0, 5).reshape(1, 5, 1)
    y = 2.0 * x + 0.5
    hessian = 2 * torch.tensor([[(x**2).mean(), x.mean()], [x.mean(), 1.0]])
    lam = torch.linalg.eigvalsh(hessian).max().item()
    maml = MAML(model, "regression", inner_lr=3.0 / lam, later_inner_lr=later, strategy="loop")
    return maml, x, y


def _losses(maml: MAML, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    return [F.mse_loss(maml.predict(x, y, x, steps=k), y).item() for k in range(1, steps + 1)]


def test_later_steps_at_alpha_past_the_edge_rise_and_a_smaller_rate_falls():
    rising = _losses(*_edge_of_stability_learner(None), steps=6)
    assert all(b > a for a, b in zip(rising, rising[1:])), rising  # the failure a later rate fixes
    maml, x, y = _edge_of_stability_learner(None)
    falling = _losses(*_edge_of_stability_learner(maml.inner_lr / 2), steps=6)
    assert falling[0] == pytest.approx(rising[0])  # the first step is alpha's either way
    assert all(b < a for a, b in zip(falling, falling[1:])), falling


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_later_inner_lr_is_a_config_key_of_the_sgd_learners(algorithm):
    c = config_from_dict({"algorithm": algorithm, "later_inner_lr": 0.005, "inner_steps": 2}).resolved()
    validate(c, c.spec())
    learner = build_learner(c)
    assert learner.later_inner_lr == 0.005 and learner.update_rule() == SGD(c.options.inner_lr, 0.005)
    default = build_learner(Config(algorithm=algorithm).resolved())
    assert default.later_inner_lr is None  # inner_lr at every step, as before


def test_later_inner_lr_must_be_positive():
    with pytest.raises(ConfigError, match="later_inner_lr"):
        c = config_from_dict({"algorithm": "maml", "later_inner_lr": 0.0}).resolved()
        validate(c, c.spec())
