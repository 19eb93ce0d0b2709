"""Ensembles of checkpoints (`metalab.ensemble`, `metalab eval A B ...`): averaged class probabilities
or predictions, never worse than their members on average where convexity says so, and a clear
error for members that would test on other episodes."""

import pytest
import torch
import torch.nn.functional as F

from helpers import run
from metalab.algorithms.base import MetaLearner
from metalab.builders import build_source
from metalab.config import Config, ConfigError
from metalab.ensemble import Ensemble, ensemble_from_checkpoints
from metalab.evaluate import evaluate
from metalab.train import train


class Fixed(MetaLearner):
    """A classifier answering every query with the logits it was given, so that the ensemble's
    arithmetic can be checked by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def meta_loss(self, batch):
        raise NotImplementedError

    def predict(self, support_x, support_y, query_x, *, steps=None):
        t, q = query_x.shape[:2]
        return self.logits.expand(t, q, -1)


def test_a_classifier_ensemble_averages_the_members_probabilities():
    a, b = Fixed([2.0, 0.0, 0.0]), Fixed([0.0, 0.0, 3.0])
    x = torch.zeros(2, 4, 1)
    out = Ensemble([a, b]).predict(x, torch.zeros(2, 4, dtype=torch.long), x)
    expected = ((a.logits.softmax(-1) + b.logits.softmax(-1)) / 2).log()
    assert out.shape == (2, 4, 3)
    torch.testing.assert_close(out[1, 3], expected)
    # The mean of probabilities, not of logits: class 2 wins on probability (0.47 against 0.40).
    assert out.argmax(-1).unique().tolist() == [2]
    # Its log-loss is at most the members' mean (Jensen), whatever the true class.
    for y in range(3):
        members = sum(-F.log_softmax(m.logits, -1)[y] for m in (a, b)) / 2
        assert -out[0, 0, y] <= members + 1e-6
    # One member is that member.
    torch.testing.assert_close(Ensemble([a]).predict(x, None, x)[0, 0], F.log_softmax(a.logits, -1))


def test_an_ensemble_is_not_trained_and_needs_members_of_one_kind(tmp_path):
    with pytest.raises(ConfigError, match="at least one member"):
        Ensemble([])
    sine = train(Config(iterations=1, meta_batch=2, val_every=0), tmp_path, progress=False).learner
    with pytest.raises(ConfigError, match="must be of one kind"):
        Ensemble([Fixed([1.0, 0.0]), sine])
    with pytest.raises(TypeError, match="evaluated, not trained"):
        Ensemble([sine]).meta_loss(None)


def _sine_runs(tmp_path, **kw):
    paths = []
    for seed in (0, 1, 2):
        c = Config(iterations=30, meta_batch=4, val_every=0, seed=seed, **kw)
        train(c, tmp_path / f"s{seed}", progress=False)
        paths.append(tmp_path / f"s{seed}" / "checkpoint.pt")
    return paths


def test_a_regression_ensemble_of_checkpoints_averages_their_predictions(tmp_path):
    paths = _sine_runs(tmp_path)
    ensemble, configs, states = ensemble_from_checkpoints(paths)
    config = configs[0]
    assert [s["iteration"] for s in states] == [30, 30, 30]
    batch = build_source(config, "test").sample(8)
    members = [m.predict(batch.support_x, batch.support_y, batch.query_x) for m in ensemble.members]
    out = ensemble.predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(out, torch.stack(members).mean(0))
    # Squared error is convex: on every task the ensemble's MSE is at most its members' mean MSE.
    mse = ((out - batch.query_y) ** 2).flatten(1).mean(1)
    each = torch.stack([((m - batch.query_y) ** 2).flatten(1).mean(1) for m in members]).mean(0)
    assert (mse <= each + 1e-6).all() and (mse < each - 1e-4).any()
    r = evaluate(ensemble, build_source(config, "test"), 20, steps=1)
    assert r.metric == "mse" and r.tasks == 20


def test_metalab_eval_of_several_checkpoints_scores_their_ensemble(tmp_path, capsys):
    paths = _sine_runs(tmp_path)
    code, out, err = run(capsys, "eval", *map(str, paths), "--tasks", "10", "--steps", "1", "--quiet")
    assert code == 0, err
    assert "ensemble of 3:" in out and "(30)" in out and "test mse after 1 step:" in out and "10 tasks" in out
    # Members that would test on other episodes are refused, naming the key.
    train(Config(iterations=5, meta_batch=4, val_every=0, test_shots=5), tmp_path / "k5", progress=False)
    code, out, err = run(capsys, "eval", str(paths[0]), str(tmp_path / "k5" / "checkpoint.pt"))
    assert code != 0 and "test_shots" in err and "an ensemble's members must agree" in err


def test_an_ensemble_of_zoo_models_on_real_omniglot(capsys, monkeypatch, request):
    """Prototypical Networks (no inner loop) with ANIL (3 test steps): the ensemble reports the
    inner-loop member's steps, names both learners, and answers far above chance (20%)."""
    request.getfixturevalue("omniglot_dir")  # the real data (skips where it is absent)
    monkeypatch.delenv("METALAB_ZOO", raising=False)
    specs = ["zoo:protonet-omniglot-5w1s", "zoo:anil-omniglot-5w1s"]
    code, out, err = run(capsys, "eval", *specs, "--tasks", "20", "--quiet")
    assert code == 0, err
    assert "ensemble of 2:" in out and "protonet+anil on omniglot, 5-way 1-shot" in out
    line = next(x for x in out.splitlines() if x.startswith("test accuracy after 3 steps:"))
    assert float(line.split(":")[1].split("%")[0]) > 80.0
