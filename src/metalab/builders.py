"""From a resolved `Config` to the objects a run needs: task sources, backbone, learner, optimizer.

This is the one place that maps names in configs to classes, so a new algorithm or benchmark is
registered here and nowhere else.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from .algorithms import ANIL, MAML, MANN, Baseline, LSTMMetaLearner, MAMLpp, MatchingNet, MetaLearner, MetaNet, MetaSGD, Pretrained, ProtoNet, RelationNet, Reptile, SiameseNet
from .config import IMAGE_BENCHMARKS, OMNIGLOT_SPLIT_CLASSES, TRANSFER, Config, ConfigError, task_kind
from .models import MLP, Conv4
from .tasks import SineTasks

__all__ = ["load_dataset", "bind_dataset", "rank_seed", "build_source", "build_model", "build_learner", "build_optimizer", "build_schedule", "SPLIT_SEEDS"]

# Validation and test tasks are drawn from fixed seeds, whatever the run's seed, so that every run
# and every algorithm is scored on the same tasks.
SPLIT_SEEDS = {"val": 10_000, "test": 20_000}
# The class (or task) split of your own data (folder, csv) is drawn with this seed, whatever the
# run's seed, for the same reason: every run is scored on the same held-out classes.
DATA_SPLIT_SEED = 0

_DATA_DIR_HELP = {
    "omniglot": "--data-dir DIR holding images_background.zip and images_evaluation.zip",
    "folder": "--data-dir DIR holding one folder of images per class, DIR/<class>/<image>",
    "csv": "--data-dir FILE.csv, the CSV file",
}


def load_dataset(c: Config):
    """The data set behind the benchmark, loaded once per run (None for synthetic task families).

    For your own data (folder, csv) the splits are checked against the episodes at once, so that a
    split with too few classes or a class with too few examples is reported before training starts.
    """
    if c.benchmark == "sine":
        return None
    if c.data_dir is None:
        raise ConfigError(f"the {c.benchmark} benchmark needs data_dir ({_DATA_DIR_HELP[c.benchmark]})")
    if c.benchmark == "omniglot":
        from .data import load_omniglot

        return load_omniglot(c.data_dir, split=c.split, image_size=c.image_size)
    least = c.test_ways if task_kind(c) == "classification" else 1
    if c.benchmark == "folder":
        from .data import load_image_folder

        dataset = load_image_folder(
            c.data_dir, c.image_size, c.channels, c.val_classes, c.test_classes, seed=DATA_SPLIT_SEED,
            invert=bool(c.invert), min_classes=least,
        )
    else:
        from .data import load_csv

        dataset = load_csv(
            c.data_dir, label=c.csv_label, target=c.csv_target, task=c.csv_task, features=c.csv_features or None,
            val_classes=c.val_classes, test_classes=c.test_classes, seed=DATA_SPLIT_SEED, min_classes=least,
        )
    _check_splits(c, dataset)
    return dataset


def _check_splits(c: Config, dataset) -> None:
    """Check every split has enough classes, then build its sampler once: its constructor checks
    that every class (or task) has shots + queries examples and names the first that has not."""
    for split, ways in (("train", c.ways), ("val", c.test_ways), ("test", c.test_ways)):
        if split == "val" and not c.val_every:
            continue
        have = len(getattr(dataset.splits, split))
        if task_kind(c) == "classification" and have < ways:
            raise ValueError(
                f"{c.data_dir}: the meta-{split} split has {have} classes, fewer than the {ways} ways of its episodes "
                f"(of {sum(len(s) for s in dataset.splits)} classes, {len(dataset.splits.val)} are held out for meta-val "
                f"and {len(dataset.splits.test)} for meta-test: set val_classes / test_classes, or add classes)"
            )
        try:
            build_source(c, split, dataset)
        except ValueError as e:
            raise ValueError(f"{c.data_dir}, meta-{split} split: {e}") from None


def bind_dataset(c: Config, dataset) -> Config:
    """Fill the config keys that come from the data, so that a checkpoint's config rebuilds the
    model without the data: the CSV's feature columns (their number is the MLP's input size)."""
    if c.benchmark == "csv" and dataset is not None and list(c.csv_features) != list(dataset.feature_names):
        return dataclasses.replace(c, csv_features=list(dataset.feature_names))
    # Baseline / Baseline++: the pre-training classifier has one output per meta-train class.
    if c.algorithm in TRANSFER and dataset is not None and c.base_classes is None:
        return dataclasses.replace(c, base_classes=len(dataset.splits.train))
    return c


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
    if c.algorithm in TRANSFER and split == "train":
        # Baseline / Baseline++ pre-train on ordinary mini-batches with global labels: meta_batch
        # rows of one example each, so meta_batch is the mini-batch size (split across processes).
        return dataset.batches(split, batch_size=1, seed=seed)
    return dataset.sampler(split, ways=ways, shots=shots, queries=queries, seed=seed)


def _csv_features(c: Config) -> int:
    if not c.csv_features:
        raise ConfigError("the csv benchmark's input size comes from the data: fill csv_features with builders.bind_dataset (train does)")
    return len(c.csv_features)


def build_model(c: Config) -> nn.Module:
    if c.benchmark == "sine":
        return MLP(1, c.hidden, 1)
    if c.benchmark == "csv":
        return MLP(_csv_features(c), c.hidden, c.ways if task_kind(c) == "classification" else 1)
    return Conv4(in_channels=c.channels, out_features=c.ways, image_size=c.image_size, norm="batch_stats")


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
    if c.algorithm == "relation":  # its own embedding module, keeping 64x5x5 feature maps (28x28 input)
        return RelationNet(input_shape=(c.channels, c.image_size, c.image_size))
    if c.benchmark == "csv":  # an MLP embedding: the last hidden width is the embedding size
        encoder, feature_dim = MLP(_csv_features(c), c.hidden[:-1], c.hidden[-1]), c.hidden[-1]
    else:
        encoder = Conv4(in_channels=c.channels, image_size=c.image_size, norm="batch")
        feature_dim = encoder.feature_dim
    if c.algorithm == "protonet":
        return ProtoNet(encoder)
    if c.algorithm == "matching":
        return MatchingNet(encoder, fce=c.fce, feature_dim=feature_dim)
    return SiameseNet(encoder, feature_dim=feature_dim)


def _base_classes(c: Config) -> int:
    if c.base_classes is not None:
        return c.base_classes
    if c.benchmark == "omniglot":
        return OMNIGLOT_SPLIT_CLASSES[c.split]["train"]
    raise ConfigError(f"{c.algorithm} needs base_classes, the meta-train classes of the data (builders.bind_dataset fills it in; train does)")


def build_learner(c: Config) -> MetaLearner:
    if c.algorithm in _METRIC_BASED:
        return build_metric_learner(c)
    if c.algorithm == "metanet":
        return MetaNet(ways=c.ways, in_channels=c.channels, image_size=c.image_size)
    if c.algorithm in TRANSFER:
        encoder = Conv4(in_channels=c.channels, image_size=c.image_size, norm="batch")
        return Baseline(encoder, encoder.feature_dim, _base_classes(c), cosine=c.algorithm == "baseline_pp")
    if c.algorithm == "mann":
        shape = (c.channels, c.image_size, c.image_size) if c.benchmark in IMAGE_BENCHMARKS else (_csv_features(c),)
        return MANN(c.ways, shape, labels=c.mann_labels, seed=c.seed)
    if c.algorithm == "lstm_meta":
        # Ravi & Larochelle's learner: Conv-4 with 32 filters per layer (4x fewer coordinates for the
        # coordinate-wise LSTM than 64 filters; the LSTM over them dominates the cost).
        images = c.benchmark in IMAGE_BENCHMARKS
        model = Conv4(in_channels=c.channels, hidden=32, out_features=c.ways, image_size=c.image_size, norm="batch_stats") if images else build_model(c)
        return LSTMMetaLearner(model, task_kind(c), inner_steps=c.inner_steps, eval_inner_steps=c.eval_inner_steps, inner_lr=c.inner_lr)
    kind = task_kind(c)
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
        inner_checkpoint=c.inner_checkpoint,
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
