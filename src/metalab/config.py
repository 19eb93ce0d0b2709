"""Configs as data: one flat dataclass, loaded from YAML, overridable from the command line, validated.

A flat set of keys (grouped below by comments) keeps overrides short (`--set inner_lr=0.1`) and error
messages exact: an unknown key is named together with the allowed ones, a wrong type names the key
and the expected type. The resolved config is saved beside every checkpoint and inside it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "parse_override", "task_kind", "ALGORITHMS", "BENCHMARKS", "IMAGE_BENCHMARKS"]

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "pretrain", "anil", "mamlpp", "protonet", "matching", "relation", "siamese", "metanet", "baseline", "baseline_pp", "mann", "lstm_meta")
BENCHMARKS = ("sine", "omniglot", "folder", "csv")
# Benchmarks whose examples are images (Conv-4 backbones; `metalab predict` applies to them).
IMAGE_BENCHMARKS = ("omniglot", "folder")
METRIC_BASED = ("protonet", "matching", "relation", "siamese")
# Classes in each part of the Omniglot splits (characters x 4 rotations for Vinyals; see docs/omniglot.md).
OMNIGLOT_SPLIT_CLASSES = {"vinyals": {"train": 4112, "val": 688, "test": 1692}, "lake": {"train": 792, "val": 172, "test": 659}}
# Algorithms whose backbone ends in an N-way linear head, so N is fixed by meta-training.
FIXED_HEAD = ("maml", "fomaml", "metasgd", "reptile", "anil", "mamlpp", "metanet", "mann", "lstm_meta")
# Algorithms that pre-train a classifier over all meta-train classes on ordinary mini-batches
# (FewShotDataset.batches; meta_batch is the mini-batch size), then fit a new classifier per task.
TRANSFER = ("baseline", "baseline_pp")
# learners with a second-order inner loop that `inner_checkpoint` can recompute
INNER_CHECKPOINT = ("maml", "metasgd", "anil", "mamlpp")
_CHOICES = {
    "algorithm": ALGORITHMS,
    "benchmark": BENCHMARKS,
    "strategy": ("auto", "vmap", "loop"),
    "outer_optimizer": ("adam", "sgd"),
    "lr_schedule": ("constant", "cosine", "step"),
    "split": ("vinyals", "lake"),
    "precision": ("fp32", "bf16"),
    "mann_labels": ("onehot", "string"),
}


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key."""


@dataclass
class Config:
    # --- the tasks -------------------------------------------------------------------------------
    benchmark: str = "sine"  # sine | omniglot | folder (DIR/<class>/<image>) | csv (a CSV file)
    ways: int = 5  # N (classification only) during meta-training
    test_ways: Optional[int] = None  # N at evaluation (default: ways; ProtoNets train with more)
    shots: int = 10  # K support examples (per class for classification) during meta-training
    queries: int = 10  # query examples (per class for classification) during meta-training
    test_shots: Optional[int] = None  # K at evaluation (default: shots)
    test_queries: Optional[int] = None  # queries at evaluation (default: queries; 100 points for sine)
    data_dir: Optional[str] = None  # folder holding the data set's files (csv: the CSV file)
    split: str = "vinyals"  # Omniglot split: vinyals | lake
    # folder and csv: classes (csv regression: tasks) held out for meta-val and meta-test, drawn
    # with a fixed seed (default: a fifth of them each, at least test_ways classes)
    val_classes: Optional[int] = None
    test_classes: Optional[int] = None
    # --- the images (recorded in every checkpoint, so `metalab predict` prepares images alike) ---
    image_size: int = 28  # images are resized to image_size x image_size
    channels: int = 1  # 1: greyscale, 3: RGB (folder); Omniglot is greyscale
    invert: Optional[bool] = None  # store 255 - pixel, ink bright (default: true for omniglot, which needs it; else false)
    # --- the csv benchmark ---------------------------------------------------------------------
    csv_label: Optional[str] = None  # classification: the class column
    csv_target: Optional[str] = None  # regression: the target column (with csv_task)
    csv_task: Optional[str] = None  # regression: the column whose values group rows into tasks
    csv_features: list[str] = field(default_factory=list)  # feature columns (default: all others; filled in from the data)
    # --- the algorithm ---------------------------------------------------------------------------
    algorithm: str = "maml"  # maml | fomaml | metasgd | reptile | pretrain
    inner_lr: float = 0.01  # alpha
    inner_steps: int = 1  # inner steps in meta-training
    eval_inner_steps: Optional[int] = None  # inner steps at evaluation (default: inner_steps)
    first_order: bool = False  # detach the inner gradients (fomaml sets it)
    strategy: str = "auto"  # meta-batch processing: auto | vmap | loop
    # MAML family, second order: recompute each inner step in the outer backward instead of keeping
    # its graph (torch.utils.checkpoint), so memory stops growing with the inner steps' activations
    # for about one more inner step of compute (docs/scaling.md measures it)
    inner_checkpoint: bool = False
    fce: bool = False  # Matching Networks: full-context embeddings
    mann_labels: str = "onehot"  # MANN: onehot | string (the paper's 5-character labels, for 15 classes)
    # Baseline / Baseline++: classes of the pre-training classifier (default: the data's meta-train
    # classes, filled in from the data; for omniglot known from the split)
    base_classes: Optional[int] = None
    # MAML++ (Antoniou et al. 2019): the multi-step loss weights anneal toward the last inner step
    # over this many iterations (0: last step only; the paper's Omniglot code: 10 epochs x 500 = 5000)
    msl_iterations: int = 0
    # MAML++ derivative-order annealing: first order for this many iterations, then second order
    # (0: second order throughout; the paper: 50 epochs x 500 = 25000)
    first_order_iterations: int = 0
    # --- the backbone ----------------------------------------------------------------------------
    hidden: list = field(default_factory=lambda: [40, 40])  # MLP widths (sine)
    # --- meta-training ---------------------------------------------------------------------------
    iterations: int = 10000
    meta_batch: int = 25
    outer_optimizer: str = "adam"  # adam | sgd
    outer_lr: float = 0.001  # beta
    lr_schedule: str = "constant"  # constant | cosine | step
    lr_decay_every: int = 2000  # step schedule: multiply the outer lr by lr_decay_factor every N iterations
    lr_decay_factor: float = 0.5  # step schedule: the factor (ProtoNets halve the lr every 2000 episodes)
    val_every: int = 500  # validate every N iterations (0: never)
    val_tasks: int = 200
    checkpoint_every: int = 500
    log_every: int = 10  # append training metrics to metrics.jsonl every N iterations
    seed: int = 0
    threads: Optional[int] = None  # torch threads (default: torch's choice)
    # gradient-based family on the per-task loop: worker threads that each take a slice of the
    # meta-batch with one intra-op thread (metalab.parallel; 1.15x the loop on 2 intra-op threads for
    # Conv-4 MAML here). Default: `threads`, else the cores available / processes. 1: off.
    task_threads: Optional[int] = None
    # fp32, or bf16: meta-training forward passes under CPU autocast to bfloat16 (opt-in, for CPUs
    # with AMX / AVX-512-bf16; parameters, optimizer and evaluation stay fp32). docs/performance.md
    # gives its speed and its effect on Omniglot accuracy.
    precision: str = "fp32"
    max_minutes: Optional[float] = None  # stop (with a checkpoint) after this much training wall-clock in this process; --resume continues
    dist_timeout: float = 300.0  # seconds a collective may wait for a peer before the run stops with an error
    # --- evaluation ------------------------------------------------------------------------------
    test_tasks: int = 1000
    eval_steps: list = field(default_factory=list)  # inner-step counts to report (default: [eval_inner_steps])

    def resolved(self) -> "Config":
        """Fill the defaults that depend on other keys and check the whole config."""
        c = dataclasses.replace(self)
        if c.algorithm == "fomaml":
            c.first_order = True
        if c.test_ways is None:
            c.test_ways = c.ways
        if c.test_shots is None:
            c.test_shots = c.shots
        if c.test_queries is None:
            c.test_queries = 100 if c.benchmark == "sine" else c.queries
        if c.eval_inner_steps is None:
            c.eval_inner_steps = c.inner_steps
        if c.invert is None:
            c.invert = c.benchmark == "omniglot"
        if not c.eval_steps:
            c.eval_steps = [c.eval_inner_steps]
        validate(c)
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def task_kind(c: Config) -> str:
    """"regression" (sine waves, a CSV with a target column) or "classification"."""
    return "regression" if c.benchmark == "sine" or (c.benchmark == "csv" and c.csv_target is not None) else "classification"


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; allowed keys: {', '.join(_FIELDS)}")


def _coerce(key: str, value: Any) -> Any:
    hint = _HINTS[key]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {key!r} must not be empty")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    if typing.get_origin(base) is list and typing.get_args(base) == (str,):
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, str) for v in values):
            return values
        raise ConfigError(f"config key {key!r} must be a list of strings, got {value!r}")
    if base is list:
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return values
        raise ConfigError(f"config key {key!r} must be a list of integers, got {value!r}")
    return value


def validate(c: Config) -> None:
    for key, choices in _CHOICES.items():
        if getattr(c, key) not in choices:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}; got {getattr(c, key)!r}")
    positive = ("ways", "test_ways", "shots", "queries", "test_shots", "test_queries", "iterations", "meta_batch", "val_tasks", "test_tasks", "log_every")
    for key in positive:
        if getattr(c, key) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(c, key)}")
    for key in ("inner_steps", "eval_inner_steps", "val_every", "checkpoint_every", "msl_iterations", "first_order_iterations"):
        if getattr(c, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(c, key)}")
    if any(s < 0 for s in c.eval_steps):
        raise ConfigError(f"config key 'eval_steps' must hold steps >= 0, got {c.eval_steps}")
    if c.inner_lr <= 0 or c.outer_lr <= 0:
        raise ConfigError("config keys 'inner_lr' and 'outer_lr' must be > 0")
    if c.max_minutes is not None and c.max_minutes <= 0:
        raise ConfigError(f"config key 'max_minutes' must be > 0, got {c.max_minutes}")
    if c.dist_timeout <= 0:
        raise ConfigError(f"config key 'dist_timeout' must be > 0, got {c.dist_timeout}")
    if c.threads is not None and c.threads < 1:
        raise ConfigError(f"config key 'threads' must be >= 1, got {c.threads}")
    if c.task_threads is not None and c.task_threads < 1:
        raise ConfigError(f"config key 'task_threads' must be >= 1, got {c.task_threads}")
    if c.algorithm in FIXED_HEAD and task_kind(c) == "classification" and c.test_ways != c.ways:
        raise ConfigError(
            f"config key 'test_ways' ({c.test_ways}) must equal 'ways' ({c.ways}) for {c.algorithm}, "
            "whose classifier head has a fixed number of outputs"
        )
    if c.lr_schedule == "step" and (c.lr_decay_every < 1 or not 0.0 < c.lr_decay_factor <= 1.0):
        raise ConfigError(
            f"the step schedule needs 'lr_decay_every' >= 1 and 0 < 'lr_decay_factor' <= 1, "
            f"got {c.lr_decay_every} and {c.lr_decay_factor}"
        )
    if c.inner_checkpoint and (c.algorithm not in INNER_CHECKPOINT or c.first_order):
        raise ConfigError(f"config key 'inner_checkpoint' applies to second-order inner loops ({', '.join(INNER_CHECKPOINT)}), not to {c.algorithm!r}" + (" with first_order" if c.first_order else ""))
    if c.inner_checkpoint and c.strategy == "vmap":
        raise ConfigError("config key 'inner_checkpoint' works on the per-task loop: set 'strategy' to loop or auto, not vmap")
    kind = task_kind(c)
    if c.algorithm in METRIC_BASED and kind == "regression":
        raise ConfigError(f"algorithm {c.algorithm!r} is a few-shot classifier; it needs a classification benchmark: an image benchmark (omniglot, folder) or csv with csv_label")
    if c.algorithm == "relation" and c.benchmark not in IMAGE_BENCHMARKS:
        raise ConfigError("algorithm 'relation' compares feature maps; it needs an image benchmark (omniglot, folder)")
    if c.algorithm in ("metanet",) + TRANSFER and c.benchmark not in IMAGE_BENCHMARKS:
        raise ConfigError(f"algorithm {c.algorithm!r} uses a Conv-4 backbone; it needs an image benchmark (omniglot, folder)")
    if c.base_classes is not None and c.base_classes < 1:
        raise ConfigError(f"config key 'base_classes' must be >= 1, got {c.base_classes}")
    if c.algorithm == "mann" and kind != "classification":
        raise ConfigError("algorithm 'mann' is a few-shot classifier (labels are fed back one-hot); it needs a classification benchmark")
    if c.algorithm == "lstm_meta" and not c.inner_lr < 1.0:
        raise ConfigError(f"for lstm_meta, 'inner_lr' is the input gate's initial value (a learned learning rate, a sigmoid): it must be < 1, got {c.inner_lr}")
    if c.algorithm == "pretrain" and kind != "regression":
        raise ConfigError("algorithm 'pretrain' (pooled regression) is defined for regression benchmarks only (sine, csv with csv_target)")
    _validate_data_keys(c)
    if c.benchmark == "omniglot":
        per_class = 20
        for shots_key, queries_key in (("shots", "queries"), ("test_shots", "test_queries")):
            if getattr(c, shots_key) + getattr(c, queries_key) > per_class:
                raise ConfigError(
                    f"config keys {shots_key!r} + {queries_key!r} = {getattr(c, shots_key) + getattr(c, queries_key)} "
                    f"exceed the {per_class} examples of every Omniglot class"
                )
        classes = OMNIGLOT_SPLIT_CLASSES[c.split]
        for ways_key, split in (("ways", "train"), ("test_ways", "val"), ("test_ways", "test")):
            if getattr(c, ways_key) > classes[split]:
                raise ConfigError(
                    f"config key {ways_key!r} ({getattr(c, ways_key)}) exceeds the {classes[split]} classes "
                    f"of the {c.split} split's meta-{split} set"
                )


def config_from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """A config from `values` (e.g. parsed YAML) on top of `base` (default: the built-in defaults)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
    c = dataclasses.replace(base) if base is not None else Config()
    for key, value in values.items():
        if key not in _FIELDS:
            raise _unknown_key(str(key))
        setattr(c, key, _coerce(key, value))
    return c


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"config key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return config_from_dict(values, base)


def parse_override(text: str) -> tuple[str, Any]:
    """`"inner_lr=0.1"` -> ("inner_lr", 0.1); the value is read as YAML (numbers, true/false, lists)."""
    if "=" not in text:
        raise ConfigError(f"an override must look like key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if key not in _FIELDS:
        raise _unknown_key(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _validate_data_keys(c: Config) -> None:
    """The keys of the image and CSV benchmarks: each only where it means something."""
    if c.image_size < 1 or c.channels not in (1, 3):
        raise ConfigError(f"config keys 'image_size' must be >= 1 and 'channels' 1 or 3, got {c.image_size} and {c.channels}")
    if c.benchmark in IMAGE_BENCHMARKS:
        # Conv-4 halves the image 4 times; the relation module pools twice more after its embedding.
        least = 22 if c.algorithm == "relation" else 16
        if c.image_size < least:
            raise ConfigError(f"config key 'image_size' must be >= {least} for {c.algorithm} on images, got {c.image_size}")
    if c.benchmark == "omniglot" and (c.channels != 1 or c.invert is False):
        raise ConfigError("Omniglot is greyscale with ink bright: it needs 'channels' 1 and 'invert' true")
    if c.benchmark in ("folder", "csv"):
        classes = task_kind(c) == "classification"
        least, unit = (c.test_ways, f"classes (test_ways)") if classes else (1, "task")
        for key, needed in (("val_classes", c.val_every > 0), ("test_classes", True)):
            value = getattr(c, key)
            if value is not None and (value < 0 or (needed and value < least)):
                raise ConfigError(
                    f"config key {key!r} ({value}) must be at least {least} {unit}"
                    + (" (or 0, with val_every 0)" if key == "val_classes" else "")
                )
    elif c.val_classes is not None or c.test_classes is not None:
        raise ConfigError(f"config keys 'val_classes' and 'test_classes' apply to the folder and csv benchmarks, not {c.benchmark}")
    csv_keys = {k: getattr(c, k) for k in ("csv_label", "csv_target", "csv_task") if getattr(c, k) is not None}
    if c.benchmark != "csv":
        if csv_keys or c.csv_features:
            raise ConfigError(f"config keys {', '.join(list(csv_keys) + ['csv_features'] * bool(c.csv_features))} apply to the csv benchmark only")
        return
    if (c.csv_label is None) == (c.csv_target is None) or (c.csv_target is None) != (c.csv_task is None):
        raise ConfigError(
            "the csv benchmark needs either 'csv_label' (classification: the class column) or both "
            f"'csv_target' and 'csv_task' (regression: the target column and the column grouping rows into tasks); got {csv_keys or 'none'}"
        )
    if c.algorithm in METRIC_BASED and not c.hidden:
        raise ConfigError(f"config key 'hidden' must name at least one layer: its last width is {c.algorithm}'s embedding size")
