"""One conformance test for every registered algorithm: a training step through the common loop,
evaluation, and a checkpoint round trip that gives the same predictions. Image algorithms run on a
small synthetic Omniglot-shaped data set (offline and fast); learning on real data is tested in
test_metric.py and test_gradient_images.py."""

import dataclasses

import pytest
import torch

from helpers import devices
from metalab import builders
from metalab import run as train_module
from metalab.algorithms import algorithm_names, get_spec
from metalab.config import Config
from metalab.data import FewShotDataset
from metalab.experiment import meta_test
from metalab.tasks import split_classes
from metalab.train import learner_from_checkpoint, train

SINE_ONLY = {"pretrain"}
# The RL learners act in environments (no support/query examples): tests/test_rl.py covers them.
EPISODIC = [n for n in algorithm_names() if "rl" not in get_spec(n).needs.kinds]


def fake_omniglot(num_classes=24, per_class=20):
    g = torch.Generator().manual_seed(0)
    # Each class a fixed random stroke pattern plus noise, so classes are separable.
    prototypes = (torch.rand(num_classes, 1, 28, 28, generator=g) > 0.8).to(torch.uint8) * 255
    noise = (torch.rand(num_classes, per_class, 1, 28, 28, generator=g) > 0.95).to(torch.uint8) * 255
    x = (prototypes[:, None] ^ noise).reshape(-1, 1, 28, 28)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return FewShotDataset(
        x, y, [f"class{c}" for c in range(num_classes)], split_classes(num_classes, 6, 6, seed=0), (1, 28, 28)
    )


def _own_keys(algorithm, **values):
    """The keys among `values` that the algorithm takes (a key set for another algorithm is refused)."""
    own = {f.name for f in dataclasses.fields(get_spec(algorithm).options)}
    return {k: v for k, v in values.items() if k in own}


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


@pytest.fixture
def fake_data(monkeypatch):
    data = fake_omniglot()

    def fake(c):
        return data if c.benchmark == "omniglot" else None

    monkeypatch.setattr(builders, "load_dataset", fake)
    monkeypatch.setattr(train_module, "load_dataset", fake)
    return data


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("algorithm", EPISODIC)
def test_algorithm_conforms(algorithm, device, fake_data, tmp_path):
    sine = algorithm in SINE_ONLY
    c = Config(
        algorithm=algorithm,
        benchmark="sine" if sine else "omniglot",
        data_dir=None if sine else "unused",
        ways=5 if sine else 3,
        shots=2,
        queries=2,
        test_queries=3,
        iterations=2,
        meta_batch=2,
        **_own_keys(algorithm, inner_steps=1, inner_lr=0.1),
        val_every=1,
        val_tasks=2,
        test_tasks=4,
        checkpoint_every=1,
        log_every=1,
        device=device,
    )
    before = {k: v.clone() for k, v in builders.build_learner(c.resolved()).state_dict().items()}
    result = train(c, tmp_path, progress=False, log=lambda _: None)
    after = result.learner.state_dict()
    assert result.iteration == 2 and result.last_val is not None
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before), "a training step changed nothing"
    record = meta_test(result, log=lambda _: None)
    metric = record["test"][0]
    assert metric["metric"] == ("mse" if sine else "accuracy") and metric["tasks"] == 4
    if not sine:
        assert 0.0 <= metric["mean"] <= 1.0
    assert all(p.device.type == device for p in result.learner.parameters())
    # The checkpoint holds CPU tensors only and rebuilds the same learner: same weights, same predictions.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in _tensors(state))
    reloaded, config, state = learner_from_checkpoint(tmp_path / "checkpoint.pt", device=device)
    assert state["iteration"] == 2 and config.algorithm == algorithm
    batch = builders.build_source(config, "test", fake_data if not sine else None).sample(2).to(device)
    result.learner.eval()
    reloaded.eval()
    with torch.no_grad():
        a = result.learner.predict(batch.support_x, batch.support_y, batch.query_x)
        b = reloaded.predict(batch.support_x, batch.support_y, batch.query_x)
    assert a.shape[:2] == batch.query_y.shape[:2]
    assert torch.allclose(a, b, atol=1e-6)
