"""`inner_checkpoint`: second-order inner steps recomputed in the outer backward. The meta-gradient
must not change, and the graph kept between forward and backward must stop growing with the inner
steps' activations."""

import pytest
import torch

from helpers import image_batch
from metalab import ANIL, MAML, MAMLpp, MetaSGD
from metalab.config import ConfigError, config_from_dict
from metalab.models import MLP, Conv4
from metalab.parallel import TaskThreads

LEARNERS = {
    "maml": lambda m, steps, ck: MAML(
        m, "classification", inner_lr=0.3, inner_steps=steps, strategy="loop", inner_checkpoint=ck
    ),
    "metasgd": lambda m, steps, ck: MetaSGD(
        m, "classification", inner_lr=0.3, inner_steps=steps, strategy="loop", inner_checkpoint=ck
    ),
    "anil": lambda m, steps, ck: ANIL(
        m, "classification", inner_lr=0.3, inner_steps=steps, strategy="loop", inner_checkpoint=ck
    ),
    "mamlpp": lambda m, steps, ck: MAMLpp(
        m,
        "classification",
        inner_lr=0.3,
        inner_steps=steps,
        msl_iterations=10,
        strategy="loop",
        inner_checkpoint=ck,
    ),
}


def meta_gradient(learner, batch, workers=1):
    learner.zero_grad(set_to_none=True)
    learner.set_iteration(4)  # MAML++: mid-way through its multi-step-loss annealing
    if workers == 1:
        learner.meta_loss(batch)[0].backward()
    else:
        engine = TaskThreads(learner, workers)
        engine.set_iteration(4)
        engine.meta_backward(batch)
        engine.close()
    return {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_checkpointed_inner_loop_gives_the_same_meta_gradient(float64, name, workers):
    torch.manual_seed(0)
    batch = image_batch(tasks=3, shots=1)
    plain = LEARNERS[name](Conv4(1, 6, 3, image_size=16), 3, False)
    checkpointed = LEARNERS[name](Conv4(1, 6, 3, image_size=16), 3, True)
    checkpointed.load_state_dict(plain.state_dict())  # the same weights (and Meta-SGD's random rates)
    reference = meta_gradient(plain, batch)
    got = meta_gradient(checkpointed, batch, workers)
    assert got.keys() == reference.keys() and reference
    for k in reference:
        torch.testing.assert_close(
            got[k], reference[k], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name} {k}: {m}"
        )


def saved_bytes(learner, batch) -> int:
    """Bytes of the tensors autograd keeps from the forward for the backward (outside checkpointed
    regions: a checkpoint's own hooks take over inside it and keep nothing)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        learner.meta_loss(batch)
    return total


def test_checkpointing_stops_the_kept_graph_growing_with_inner_steps():
    torch.manual_seed(0)
    batch = image_batch(tasks=2, ways=5, shots=1, queries=5, size=28)
    kept = {
        (steps, ck): saved_bytes(
            MAML(Conv4(1, 16, 5), "classification", inner_lr=0.4, inner_steps=steps, inner_checkpoint=ck),
            batch,
        )
        for steps in (1, 5)
        for ck in (False, True)
    }
    plain_growth = kept[5, False] - kept[1, False]
    checkpointed_growth = kept[5, True] - kept[1, True]
    assert plain_growth > 0
    # per extra inner step the checkpointed loop keeps one set of adapted weights, not a step's
    # activations and double-backward graph
    assert checkpointed_growth < 0.2 * plain_growth, kept
    assert kept[5, True] < 0.5 * kept[5, False], kept


def test_inner_checkpoint_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="inner_checkpoint"):
        config_from_dict({"algorithm": "fomaml", "inner_checkpoint": True}).resolved()
    with pytest.raises(ConfigError, match="inner_checkpoint"):
        config_from_dict(
            {"benchmark": "omniglot", "algorithm": "protonet", "inner_checkpoint": True}
        ).resolved()
    with pytest.raises(ConfigError, match="strategy"):
        config_from_dict({"algorithm": "maml", "strategy": "vmap", "inner_checkpoint": True}).resolved()
    with pytest.raises(ValueError, match="strategy 'loop'"):
        MAML(MLP(), "regression", inner_checkpoint=True)  # auto picks vmap for the MLP
    MAML(MLP(), "regression", strategy="loop", inner_checkpoint=True)
