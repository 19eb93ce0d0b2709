"""From a resolved `Config` to the objects a run needs: data, task sources, learner, optimizer.

Learners come from their algorithm's spec (`metalab.algorithms.spec`): this module hands the spec a
`BuildContext` holding the resolved config, the algorithm's options and the backbones the data
calls for, and knows no algorithm by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .algorithms import MetaLearner
from .algorithms.spec import AlgorithmSpec, OptionError
from .config import IMAGE_BENCHMARKS, RL_BENCHMARKS, Config, ConfigError, task_kind
from .data.augment import standard_augment
from .data.catalog import CATALOG
from .data.omniglot.splits import SPLIT_CLASSES
from .models import MLP
from .models.backbones import PAPER_FILTERS, image_backbone
from .tasks import SineTasks

__all__ = [
    "load_dataset",
    "bind_dataset",
    "rank_seed",
    "build_source",
    "build_model",
    "build_learner",
    "build_optimizer",
    "build_schedule",
    "Context",
    "SPLIT_SEEDS",
]

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
    **{
        name: f"--data-dir DIR holding {' or '.join(info.files)}"
        for name, info in CATALOG.items()
        if name != "omniglot"
    },
}


def load_dataset(c: Config):
    """The data set behind the benchmark, loaded once per run (None for synthetic task families).

    For your own data (folder, csv) the splits are checked against the episodes at once, so that a
    split with too few classes or a class with too few examples is reported before training starts.
    """
    if c.benchmark == "sine" or c.benchmark in RL_BENCHMARKS:
        return None
    if c.data_dir is None:
        raise ConfigError(f"the {c.benchmark} benchmark needs data_dir ({_DATA_DIR_HELP[c.benchmark]})")
    if c.benchmark == "omniglot":
        from .data import load_omniglot

        return load_omniglot(c.data_dir, split=c.split, image_size=c.image_size, verify_counts=c.verify_data)
    if c.benchmark in CATALOG:
        from .data import catalog

        dataset = catalog.load(c.benchmark, c.data_dir, c.image_size, verify=c.verify_data)
        _check_splits(c, dataset)
        return dataset
    least = c.test_ways if task_kind(c) == "classification" else 1
    if c.benchmark == "folder":
        from .data import load_image_folder

        dataset = load_image_folder(
            c.data_dir,
            c.image_size,
            c.channels,
            c.val_classes,
            c.test_classes,
            seed=DATA_SPLIT_SEED,
            invert=bool(c.invert),
            min_classes=least,
        )
    else:
        from .data import load_csv

        dataset = load_csv(
            c.data_dir,
            label=c.csv_label,
            target=c.csv_target,
            task=c.csv_task,
            features=c.csv_features or None,
            val_classes=c.val_classes,
            test_classes=c.test_classes,
            seed=DATA_SPLIT_SEED,
            min_classes=least,
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
                f"{c.data_dir}: the meta-{split} split has {have} classes, fewer than the {ways} ways of "
                "its episodes "
                f"(of {sum(len(s) for s in dataset.splits)} classes, {len(dataset.splits.val)} are held out "
                "for meta-val "
                f"and {len(dataset.splits.test)} for meta-test: set val_classes / test_classes, or add "
                "classes)"
            )
        try:
            build_source(c, split, dataset)
        except ValueError as e:
            raise ValueError(f"{c.data_dir}, meta-{split} split: {e}") from None


def bind_dataset(c: Config, dataset) -> Config:
    """Fill the config keys that come from the data, so that a checkpoint's config rebuilds the
    model without the data: the CSV's feature columns (their number is the MLP's input size), and
    the algorithm's own (e.g. the classes of a pre-training classifier)."""
    if dataset is None:
        return c
    if c.benchmark == "csv" and list(c.csv_features) != list(dataset.feature_names):
        c = dataclasses.replace(c, csv_features=list(dataset.feature_names))
    bound = c.options.bind(dataset)
    return c if bound is c.options else dataclasses.replace(c, options=bound)


def rank_seed(seed: int, rank: int) -> int:
    """The training-task seed of a process: rank 0 keeps the run's seed, so one process is the
    single-process run; other ranks get seeds far from it."""
    return seed + 1_000_003 * rank


def build_source(c: Config, split: str, dataset=None, *, rank: int = 0, device=None):
    """The task source of one split ("train", "val" or "test"); training draws from `c.seed`
    (shifted per process rank under torch.distributed), in the form the learner asks for.

    Episodes come on the device of the data set's examples (`FewShotDataset.to`); sine tasks on
    `device` (default: the CPU). Either way they are drawn on the CPU, the same tasks everywhere."""
    ways, shots, queries = (
        (c.ways, c.shots, c.queries) if split == "train" else (c.test_ways, c.test_shots, c.test_queries)
    )
    seed = rank_seed(c.seed, rank) if split == "train" else SPLIT_SEEDS[split]
    if c.benchmark == "sine":
        return SineTasks(shots, queries, seed=seed, device=device)
    if c.benchmark in RL_BENCHMARKS:
        from .rl import RLTasks  # task parameters; the learner samples the episodes

        return RLTasks(c.benchmark, seed=seed)
    dataset = dataset if dataset is not None else load_dataset(c)
    # Only meta-training data are augmented (docs/datasets.md), never validation or meta-test tasks.
    augment = {"augment": standard_augment} if split == "train" and c.augment == "standard" else {}
    if split == "train" and c.spec().learner.training_source == "batches":
        # Plain mini-batches with global labels: meta_batch rows of one example each, so meta_batch
        # is the mini-batch size (split across processes).
        return dataset.batches(split, batch_size=1, seed=seed, **augment)
    return dataset.sampler(split, ways=ways, shots=shots, queries=queries, seed=seed, **augment)


def _csv_features(c: Config) -> int:
    if not c.csv_features:
        raise ConfigError(
            "the csv benchmark's input size comes from the data: fill csv_features with "
            "builders.bind_dataset (train does)"
        )
    return len(c.csv_features)


@dataclass
class Context:
    """The `BuildContext` a spec's `build` receives: the config and the backbones its data calls for."""

    config: Config
    spec: AlgorithmSpec

    @property
    def options(self):
        return self.config.options

    @property
    def kind(self) -> str:
        return task_kind(self.config)

    @property
    def ways(self) -> int:
        return self.config.ways

    @property
    def images(self) -> bool:
        return self.config.benchmark in IMAGE_BENCHMARKS

    @property
    def input_shape(self) -> tuple[int, ...]:
        c = self.config
        if self.images:
            return (c.channels, c.image_size, c.image_size)
        return (1,) if c.benchmark == "sine" else (_csv_features(c),)

    def backbone(
        self, *, out_features: int | None = None, hidden: int | None = None, norm: str = "batch_stats"
    ) -> nn.Module:
        c = self.config
        if out_features is None:
            out_features = c.ways if self.kind == "classification" else 1
        if self.images:
            return self._image_backbone(out_features=out_features, norm=norm, hidden=hidden)
        return MLP(self.input_shape[0], c.hidden, out_features)

    def embedding(self, *, norm: str = "batch") -> tuple[nn.Module, int]:
        c = self.config
        if self.images:
            encoder = self._image_backbone(norm=norm)
            return encoder, encoder.feature_dim
        return MLP(self.input_shape[0], c.hidden[:-1], c.hidden[-1]), c.hidden[-1]

    def feature_maps(self, *, norm: str = "batch") -> nn.Module:
        return self._image_backbone(norm=norm, pool=False)

    def _image_backbone(
        self, *, norm: str, out_features: int | None = None, hidden: int | None = None, pool: bool = True
    ) -> nn.Module:
        """The config's backbone; Conv-4 takes the algorithm's `hidden` filters where `filters` is unset."""
        c = self.config
        filters = c.filters
        if filters is None:
            filters = hidden if hidden is not None and c.backbone == "conv4" else PAPER_FILTERS
        return image_backbone(
            c.backbone,
            in_channels=c.channels,
            image_size=c.image_size,
            norm=norm,
            out_features=out_features,
            filters=filters,
            fast=c.kernels == "auto",
            drop_block=c.drop_block,
            pool=pool,
            norm_scale=c.norm_scale,
            downsample=c.downsample,
            init=c.init,
        )

    def train_classes(self) -> int | None:
        c = self.config
        if c.benchmark == "omniglot":
            return SPLIT_CLASSES[c.split]["train"]
        from .data.catalog import CATALOG

        info = CATALOG.get(c.benchmark)
        return info.classes[0] if info is not None else None  # your own data: bound from the data set


def build_model(c: Config) -> nn.Module:
    """The task's default model (the image backbone or MLP with an N-way or scalar head)."""
    return Context(c, c.spec()).backbone()


def build_learner(c: Config) -> MetaLearner:
    """The learner of a resolved config, made by its algorithm's spec."""
    spec = c.spec()
    try:
        return spec.build(Context(c, spec))
    except OptionError as e:
        raise ConfigError(str(e)) from None


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
