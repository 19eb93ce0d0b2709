"""The task-parallel engine (metalab.parallel): the same meta-gradient as the per-task loop, for
every learner that allows it, and the same training run."""

import pytest
import torch

from helpers import image_batch
from metalab import ANIL, MAML, MAMLpp, MetaSGD, ProtoNet, Reptile
from metalab.config import config_from_dict
from metalab.models import Conv4
from metalab.parallel import TaskThreads
from metalab.train import task_workers, train

LEARNERS = {
    "maml": lambda m: MAML(m, "classification", inner_lr=0.3, inner_steps=2, strategy="loop"),
    "fomaml": lambda m: MAML(
        m, "classification", inner_lr=0.3, inner_steps=2, first_order=True, strategy="loop"
    ),
    "metasgd": lambda m: MetaSGD(m, "classification", inner_lr=0.3, strategy="loop"),
    "anil": lambda m: ANIL(m, "classification", inner_lr=0.3, inner_steps=2, strategy="loop"),
    "mamlpp": lambda m: MAMLpp(
        m,
        "classification",
        inner_lr=0.3,
        inner_steps=3,
        msl_iterations=10,
        first_order_iterations=0,
        strategy="loop",
    ),
    "reptile": lambda m: Reptile(m, "classification", inner_lr=0.3, inner_steps=2, strategy="loop"),
}


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_threads_give_the_loops_meta_gradient(float64, name, workers):
    torch.manual_seed(0)
    learner = LEARNERS[name](Conv4(1, 8, 3, image_size=16))
    batch = image_batch()
    learner.set_iteration(4)  # MAML++: mid-way through its multi-step-loss annealing
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    reference = {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}
    learner.zero_grad(set_to_none=True)

    engine = TaskThreads(learner, workers)
    engine.set_iteration(4)
    _, threaded_metrics = engine.meta_backward(batch)
    engine.close()
    got = {k: p.grad for k, p in learner.named_parameters() if p.grad is not None}
    assert got.keys() == reference.keys() and reference
    for k in reference:
        torch.testing.assert_close(
            got[k], reference[k], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name} {k}: {m}"
        )
    for k in metrics:
        assert threaded_metrics[k] == pytest.approx(metrics[k], rel=1e-6)


def test_threads_refuse_learners_whose_loss_is_not_a_mean_over_tasks():
    with pytest.raises(ValueError, match="ProtoNet does not support task-parallel"):
        TaskThreads(ProtoNet(Conv4(1, 8)), 2)


def test_worker_count_follows_config_and_learner():
    conv = MAML(Conv4(1, 8, 5), "classification")  # auto strategy -> loop
    c = config_from_dict({"meta_batch": 8})
    assert task_workers(config_from_dict({"task_threads": 2, "meta_batch": 8}), conv) == 2
    assert task_workers(config_from_dict({"threads": 1, "meta_batch": 8}), conv) == 1
    assert (
        task_workers(config_from_dict({"task_threads": 4, "meta_batch": 3}), conv) == 3
    )  # at most one per task
    assert task_workers(c, ProtoNet(Conv4(1, 8))) == 1
    from metalab.models import MLP

    assert task_workers(c, MAML(MLP(), "regression")) == 1  # vmap strategy: batched already


def test_training_with_task_threads_matches_training_without(tmp_path):
    base = {
        "benchmark": "sine",
        "algorithm": "maml",
        "strategy": "loop",
        "iterations": 15,
        "meta_batch": 6,
        "shots": 5,
        "val_every": 0,
        "checkpoint_every": 0,
        "inner_lr": 0.01,
        "threads": 1,
    }
    one = train(config_from_dict({**base, "task_threads": 1}), tmp_path / "one", progress=False)
    torch.set_num_threads(2)
    two = train(
        config_from_dict({**base, "task_threads": 2, "threads": None}), tmp_path / "two", progress=False
    )
    assert torch.get_num_threads() == 2  # the workers' one intra-op thread is not left behind
    for (k, a), (_, b) in zip(one.learner.state_dict().items(), two.learner.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_bf16_meta_gradient_is_close_to_fp32_and_training_runs(tmp_path):
    """precision: bf16 (opt-in) changes the arithmetic, not the computation: the meta-gradient points
    the way the fp32 one does, through the task threads too. (Not closer: bf16 keeps ~3 significant
    digits and a second-order pass through batch norm over 6 images amplifies rounding; measured
    cosine 0.90 here. Its effect on accuracy is measured on Omniglot, docs/performance.md.)"""
    torch.manual_seed(0)
    learner = MAML(Conv4(1, 8, 3, image_size=16), "classification", inner_lr=0.3, strategy="loop")
    batch = image_batch()
    learner.meta_loss(batch)[0].backward()
    fp32 = torch.cat([p.grad.flatten() for p in learner.parameters()])
    learner.zero_grad(set_to_none=True)
    engine = TaskThreads(learner, 2, autocast=torch.bfloat16)
    engine.meta_backward(batch)
    engine.close()
    bf16 = torch.cat([p.grad.flatten() for p in learner.parameters()])
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # bf16 arithmetic did happen
    assert torch.nn.functional.cosine_similarity(bf16, fp32, dim=0) > 0.8
    base = {
        "benchmark": "sine",
        "algorithm": "maml",
        "strategy": "loop",
        "iterations": 5,
        "meta_batch": 4,
        "shots": 5,
        "val_every": 0,
        "checkpoint_every": 0,
        "precision": "bf16",
        "task_threads": 2,
    }
    result = train(config_from_dict(base), tmp_path / "bf16", progress=False)
    assert all(p.dtype == torch.float32 for p in result.learner.parameters())
