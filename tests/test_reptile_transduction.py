"""Reptile's two evaluation settings (Nichol et al. 2018, table 1): transductive, the test queries
through the batch-statistics backbone together; non-transductive, each query beside the support set
alone, so that no query's answer depends on the others."""

import pytest
import torch

from metalab.builders import build_learner
from metalab.config import config_from_dict, load_config
from metalab.functional import forward, inner_loop, named_params

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _learner(transductive: bool):
    c = load_config("configs/omniglot/reptile_5w1s.yaml")
    c = config_from_dict({"transductive": transductive, "eval_inner_steps": 2}, c).resolved()
    torch.manual_seed(0)
    return build_learner(c)


def _task(seed: int, queries: int = 6):
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(2, 5, 1, 28, 28, generator=g)
    sy = torch.arange(5).repeat(2, 1)
    qx = torch.rand(2, queries, 1, 28, 28, generator=g)
    return sx, sy, qx


def test_each_query_is_answered_beside_the_support_set_alone():
    learner = _learner(transductive=False)
    sx, sy, qx = _task(1)
    out = learner.predict(sx, sy, qx)
    assert out.shape == (2, 6, 5)
    # The same weights adapted by hand, then the support set plus one query at a time.
    for t in range(2):
        params = {k: v.detach().requires_grad_() for k, v in named_params(learner.model).items()}
        adapted = inner_loop(
            learner.model,
            params,
            sx[t],
            sy[t],
            kind="classification",
            steps=2,
            rule=learner.update_rule(detach=True),
            first_order=True,
        )
        for i in range(6):
            alone = forward(learner.model, adapted, torch.cat([sx[t], qx[t, i : i + 1]]))[-1]
            torch.testing.assert_close(out[t, i], alone.detach(), rtol=1e-5, atol=1e-5)
    # Other queries replaced: the first query's answer stays (to float rounding).
    changed = qx.clone()
    changed[:, 1:] = torch.rand_like(changed[:, 1:])
    torch.testing.assert_close(learner.predict(sx, sy, changed)[:, 0], out[:, 0], rtol=1e-5, atol=1e-5)


def test_transductive_answers_depend_on_the_other_queries():
    learner = _learner(transductive=True)
    sx, sy, qx = _task(1)
    out = learner.predict(sx, sy, qx)
    changed = qx.clone()
    changed[:, 1:] = torch.rand_like(changed[:, 1:]) * 3
    assert (learner.predict(sx, sy, changed)[:, 0] - out[:, 0]).abs().max() > 1e-3
    # and the two settings answer differently on the same task
    assert (_learner(transductive=False).predict(sx, sy, qx) - out).abs().max() > 1e-3
