"""From a resolved `Config` to the objects a run needs: task sources, backbone, learner, optimizer.

This is the one place that maps names in configs to classes, so a new algorithm or benchmark is
registered here and nowhere else.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .algorithms import ANIL, MAML, MAMLpp, MatchingNet, MetaLearner, MetaSGD, Pretrained, ProtoNet, RelationNet, Reptile, SiameseNet
from .config import Config, ConfigError
from .models import MLP, Conv4
from .tasks import SineTasks

__all__ = ["load_dataset", "rank_seed", "build_source", "build_model", "build_learner", "build_optimizer", "build_schedule", "SPLIT_SEEDS"]

# Validation and test tasks are drawn from fixed seeds, whatever the run's seed, so that every run
# and every algorithm is scored on the same tasks.
SPLIT_SEEDS = {"val": 10_000, "test": 20_000}


def load_dataset(c: Config):
    """The data set behind the benchmark, loaded once per run (None for synthetic task families)."""
    if c.benchmark == "sine":
        return None
    from .data import load_omniglot

    if c.data_dir is None:
        raise ConfigError("the omniglot benchmark needs data_dir (--data-dir DIR holding images_background.zip and images_evaluation.zip)")
    return load_omniglot(c.data_dir, split=c.split)


def rank_seed(seed: int, rank: int) -> int:
    """The training-task seed of a process: rank 0 keeps the run's seed, so one process is the
    single-process run; other ranks get seeds far from it."""
    return seed + 1_000_003 * rank


def build_source(c: Config, split: str, dataset=None, *, rank: int = 0):
    """The task source of one split ("train", "val" or "test"); training draws from `c.seed`
    (shifted per process rank under torch.distributed)."""
    ways, shots, queries = (c.ways, c.shots, c.queries) if split == "train" else (c.test_ways, c.test_shots, c.test_queries)
    seed = rank_seed(c.seed, rank) if split == "train" else SPLIT_SEEDS[split]
    if c.benchmark == "sine":
        return SineTasks(shots, queries, seed=seed)
    dataset = dataset if dataset is not None else load_dataset(c)
    return dataset.sampler(split, ways=ways, shots=shots, queries=queries, seed=seed)


def build_model(c: Config) -> nn.Module:
    if c.benchmark == "sine":
        return MLP(1, c.hidden, 1)
    return Conv4(in_channels=1, out_features=c.ways, norm="batch_stats")


_GRADIENT_BASED: dict[str, Callable[..., MetaLearner]] = {
    "maml": MAML,
    "fomaml": MAML,
    "metasgd": MetaSGD,
    "reptile": Reptile,
    "pretrain": Pretrained,
    "anil": ANIL,
    "mamlpp": MAMLpp,
}


_METRIC_BASED = ("protonet", "matching", "relation", "siamese")


def build_metric_learner(c: Config) -> MetaLearner:
    """A metric-based learner: an embedding with standard BatchNorm (running statistics, used in eval
    mode) and no classifier head, so the number of ways may differ between training and test."""
    if c.algorithm == "relation":  # its own embedding module, keeping 64x5x5 feature maps
        return RelationNet(input_shape=(1, 28, 28))
    encoder = Conv4(in_channels=1, norm="batch")
    if c.algorithm == "protonet":
        return ProtoNet(encoder)
    if c.algorithm == "matching":
        return MatchingNet(encoder, fce=c.fce, feature_dim=encoder.feature_dim)
    return SiameseNet(encoder, feature_dim=encoder.feature_dim)


def build_learner(c: Config) -> MetaLearner:
    if c.algorithm in _METRIC_BASED:
        return build_metric_learner(c)
    kind = "regression" if c.benchmark == "sine" else "classification"
    cls = _GRADIENT_BASED[c.algorithm]
    # MAML++'s schedules (its LSLR and per-step batch-norm affine are always on).
    extra = {"msl_iterations": c.msl_iterations, "first_order_iterations": c.first_order_iterations} if c.algorithm == "mamlpp" else {}
    return cls(
        build_model(c),
        kind,
        inner_lr=c.inner_lr,
        inner_steps=c.inner_steps,
        eval_inner_steps=c.eval_inner_steps,
        first_order=c.first_order,
        strategy=c.strategy,
        **extra,
    )


def build_optimizer(c: Config, learner: MetaLearner) -> torch.optim.Optimizer:
    if c.outer_optimizer == "sgd":
        return torch.optim.SGD(learner.parameters(), lr=c.outer_lr)
    return torch.optim.Adam(learner.parameters(), lr=c.outer_lr)


def build_schedule(c: Config, optimizer: torch.optim.Optimizer):
    if c.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.iterations)
    if c.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=c.lr_decay_every, gamma=c.lr_decay_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
