"""Configs as data: the generic keys in one dataclass, each algorithm's own keys from its spec.

A config reads flat, in YAML and on the command line (`inner_lr: 0.4`, `--set fce=true`), so that
overrides stay short. The generic keys (tasks, data, model, training, evaluation) are the fields of
`Config`, each with a one-line help text and its allowed values; the keys of the chosen algorithm
are the fields of its options dataclass (`metalab.algorithms.spec`), held in `Config.options`.
`resolved()` fills the defaults that depend on other keys and checks everything, naming the key.
A key of another registered algorithm is dropped where it holds its default and refused otherwise
(it would do nothing). The resolved config is saved beside every checkpoint and inside it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .algorithms.spec import AlgorithmSpec, Options, get_spec, option_keys
from .config_values import ConfigError, coerce, load_plugins_named, option_errors, options_for, unknown_key
from .data.augment import AUGMENTATIONS
from .data.catalog import CATALOG, default_image
from .data.omniglot.splits import SPLIT_CLASSES
from .devices import DEVICE_NAMES, PRECISIONS
from .models.backbones import BACKBONES, INITS
from .models.conv4 import DOWNSAMPLING

__all__ = [
    "Config",
    "ConfigError",
    "key",
    "key_help",
    "task_kind",
    "FIELDS",
    "GROUPS",
    "BENCHMARKS",
    "IMAGE_BENCHMARKS",
    "RL_BENCHMARKS",
    "config_from_dict",
    "load_config",
    "parse_override",
    "parse_value",
]

# The data-set benchmarks (omniglot, cifar10, cifar_fs, ...) are those of `metalab.data.catalog`.
# Reinforcement-learning benchmarks (task kind "rl"; metalab.rl): their tasks are environments.
RL_BENCHMARKS = ("navigation", "halfcheetah_vel", "halfcheetah_dir")
BENCHMARKS = ("sine", "omniglot", "folder", "csv", *(b for b in CATALOG if b != "omniglot"), *RL_BENCHMARKS)
# Benchmarks whose examples are images (Conv-4 backbones; `metalab predict` applies to them).
IMAGE_BENCHMARKS = ("omniglot", "folder", *(b for b in CATALOG if b != "omniglot"))
GROUPS = ("tasks", "data", "model", "training", "evaluation")


def key(
    default: Any, help: str, group: str, *, choices: tuple | None = None, allowed: str | None = None
) -> Any:
    """A generic config key: its default, one line of help, its group in `--help`, its allowed values."""
    meta = {"help": help, "group": group, "choices": choices, "allowed": allowed}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(init=False)
class Config:
    """The generic keys; `options` holds the algorithm's own (a dict of raw values until resolved,
    then the algorithm's options dataclass). `Config(algorithm="maml", inner_lr=0.4, ways=5)` takes
    both kinds as keywords, as a YAML file does."""

    # --- the tasks ---------------------------------------------------------------------------------
    benchmark: str = key("sine", "the task family or data set", "tasks", choices=BENCHMARKS)
    ways: int = key(5, "N, classes per task in meta-training (classification)", "tasks", allowed=">= 1")
    test_ways: Optional[int] = key(None, "N at evaluation (default: ways)", "tasks", allowed=">= 1")
    shots: int = key(
        10,
        "K, support examples per class (per task for regression; trajectories per task and inner step "
        "for RL) in meta-training",
        "tasks",
        allowed=">= 1",
    )
    queries: int = key(
        10,
        "query examples per class (per task for regression; post-update trajectories per task for RL) in "
        "meta-training",
        "tasks",
        allowed=">= 1",
    )
    test_shots: Optional[int] = key(None, "K at evaluation (default: shots)", "tasks", allowed=">= 1")
    test_queries: Optional[int] = key(
        None, "queries at evaluation (default: queries; 100 points for sine)", "tasks", allowed=">= 1"
    )
    # --- the data ----------------------------------------------------------------------------------
    data_dir: Optional[str] = key(
        None, "folder of the data set's files (csv: the CSV file)", "data", allowed="a path"
    )
    split: str = key("vinyals", "Omniglot class split", "data", choices=tuple(SPLIT_CLASSES))
    val_classes: Optional[int] = key(
        None,
        "folder/csv: classes (regression: tasks) held out for meta-val (default: a fifth)",
        "data",
        allowed=">= 0",
    )
    test_classes: Optional[int] = key(
        None,
        "folder/csv: classes (regression: tasks) held out for meta-test (default: a fifth)",
        "data",
        allowed=">= 1",
    )
    image_size: Optional[int] = key(
        None,
        "images are resized to image_size x image_size (recorded for predict; default: the data set's, 32 "
        "for CIFAR, 84 for ImageNet and CUB, else 28)",
        "data",
        allowed=">= 16",
    )
    channels: Optional[int] = key(
        None,
        "1: greyscale, 3: RGB (default: the data set's; folder: 1)",
        "data",
        choices=(1, 3),
    )
    invert: Optional[bool] = key(
        None,
        "store 255 - pixel, ink bright (default: true for omniglot, else false)",
        "data",
        allowed="true, false",
    )
    verify_data: bool = key(
        True,
        "check the data set's published checksums, class lists and counts (false: a copy of your own in the "
        "same format)",
        "data",
        allowed="true, false",
    )
    augment: str = key(
        "auto",
        "meta-training data augmentation (crop, flip, colour jitter; docs/datasets.md): auto is standard for "
        "learners that pre-train on batches on colour data sets, else none",
        "data",
        choices=AUGMENTATIONS,
    )
    csv_label: Optional[str] = key(
        None, "csv classification: the class column", "data", allowed="a column name"
    )
    csv_target: Optional[str] = key(
        None, "csv regression: the target column (with csv_task)", "data", allowed="a column name"
    )
    csv_task: Optional[str] = key(
        None, "csv regression: the column whose values group rows into tasks", "data", allowed="a column name"
    )
    csv_features: list[str] = key(
        [],
        "csv feature columns (default: all others; filled in from the data)",
        "data",
        allowed="column names",
    )
    # --- the model ---------------------------------------------------------------------------------
    algorithm: str = key("maml", "the meta-learning algorithm (its own keys are listed below)", "model")
    hidden: list[int] = key(
        [40, 40],
        "MLP hidden widths (sine, csv); a metric learner's last width is its embedding",
        "model",
        allowed="integers >= 1",
    )
    backbone: str = key(
        "conv4",
        "image backbone: conv4 (Conv-4), resnet12 (ResNet-12 of TADAM/MetaOptNet, 640 features), resnet18 "
        "(ResNet-18 of Chen et al. 2019, 512 features; CIFAR stem at <= 32 px); docs/backbones.md",
        "model",
        choices=BACKBONES,
    )
    filters: Optional[int] = key(
        None,
        "conv4: filters per block (default 64, lstm_meta 32; MAML's miniImageNet model: 32); resnet12/18: "
        "the first width, the others scaled with it (default 64, the papers')",
        "model",
        allowed=">= 1",
    )
    drop_block: float = key(
        0.0,
        "resnet12: DropBlock rate after blocks 3-4 and dropout after blocks 1-2, in training (MetaOptNet: "
        "0.1); 0: none",
        "model",
        allowed="in [0, 1)",
    )
    downsample: str = key(
        "pool",
        "conv4: pool (2x2 max-pooling after each block) or stride (stride-2 convolutions and a mean over "
        "the last map: the MAML authors' Omniglot model; the plain layers, not the fast path)",
        "model",
        choices=DOWNSAMPLING,
    )
    init: str = key(
        "pytorch",
        "conv4: the initialisation, pytorch (PyTorch's defaults) or maml (the MAML authors' Omniglot "
        "model: Xavier-uniform convolutions, zero biases, a standard-normal linear head)",
        "model",
        choices=INITS,
    )
    norm_scale: bool = key(
        True,
        "the backbone's batch norms learn a scale (gamma) and a shift; false: a shift only, the scale "
        "fixed at 1, as in the MAML authors' TensorFlow models (docs/backbones.md)",
        "model",
    )
    kernels: str = key(
        "auto",
        "Conv-4 fast path (conv4 only): auto (fused blocks and compiled CPU kernels where they apply) or off "
        "(the plain reference layers)",
        "model",
        choices=("auto", "off"),
    )
    plugins: list[str] = key(
        [],
        "modules or .py files to import first: they register algorithms of their own",
        "model",
        allowed="module names or paths",
    )
    # --- meta-training -----------------------------------------------------------------------------
    iterations: int = key(10000, "outer steps (meta-iterations)", "training", allowed=">= 1")
    meta_batch: int = key(
        25,
        "tasks per outer step (mini-batch size for learners that pre-train on batches)",
        "training",
        allowed=">= 1",
    )
    outer_optimizer: str = key("adam", "the outer optimizer", "training", choices=("adam", "sgd"))
    outer_lr: float = key(0.001, "beta, the outer learning rate", "training", allowed="> 0")
    lr_schedule: str = key(
        "constant", "outer learning-rate schedule", "training", choices=("constant", "cosine", "step")
    )
    lr_decay_every: int = key(
        2000,
        "step schedule: multiply the outer lr by lr_decay_factor every N iterations",
        "training",
        allowed=">= 1",
    )
    lr_decay_factor: float = key(0.5, "step schedule: the factor", "training", allowed="in (0, 1]")
    val_every: int = key(500, "validate every N iterations (0: never)", "training", allowed=">= 0")
    val_tasks: int = key(200, "validation tasks", "training", allowed=">= 1")
    checkpoint_every: int = key(
        500, "write checkpoint.pt every N iterations (and at the end)", "training", allowed=">= 0"
    )
    log_every: int = key(
        10, "append training metrics to metrics.jsonl every N iterations", "training", allowed=">= 1"
    )
    keep_best: bool = key(
        False,
        "also keep best.pt, the weights of the best validation figure so far (highest accuracy, lowest "
        "MSE); the final meta-test then tests them",
        "training",
        allowed="true, false",
    )
    keep_top: int = key(
        0,
        "also keep top/, the weights of the K best validation figures so far, one file each, for "
        "`metalab eval` of their ensemble (MAML++'s authors test so); 0 keeps none",
        "training",
        allowed=">= 0",
    )
    seed: int = key(0, "seeds the initialisation and the training tasks", "training", allowed="an integer")
    threads: Optional[int] = key(
        None,
        "torch's intra-op threads (default: one per task thread, one for a small model such as the sine "
        "MLP, else the cores other processes leave free, sampled again every 2 s; fixing it fixes the "
        "last bits of the results; docs/engine.md, 'Threads under load')",
        "training",
        allowed=">= 1",
    )
    task_threads: Optional[int] = key(
        None,
        "worker threads for the meta-batch of learners that map tasks on the per-task loop (default: "
        "threads, else cores / processes; 1: off)",
        "training",
        allowed=">= 1",
    )
    device: str = key(
        "auto",
        "where the model, the data and every episode live: auto (cuda, else mps, else cpu); eval and "
        "predict take --device (docs/gpu.md)",
        "training",
        allowed=DEVICE_NAMES,
    )
    precision: str = key(
        "fp32",
        "meta-training forward passes under autocast: bf16 (CPU or GPU, opt-in) or fp16 (GPU, with loss "
        "scaling); docs/gpu.md",
        "training",
        choices=PRECISIONS,
    )
    max_minutes: Optional[float] = key(
        None,
        "stop (with a checkpoint) after this much training wall-clock; --resume continues",
        "training",
        allowed="> 0",
    )
    dist_timeout: float = key(
        300.0, "seconds a collective may wait for a peer before the run stops", "training", allowed="> 0"
    )
    # --- evaluation --------------------------------------------------------------------------------
    test_tasks: int = key(1000, "meta-test tasks of the final evaluation", "evaluation", allowed=">= 1")
    eval_steps: list[int] = key(
        [],
        "inner-step counts to report (default: the learner's own; none for learners without an inner loop)",
        "evaluation",
        allowed="integers >= 0",
    )
    # --- the algorithm's own keys -----------------------------------------------------------------------
    options: Any = field(default=None, metadata={"group": None})

    def __init__(self, options: Any = None, **keys: Any) -> None:
        for f in dataclasses.fields(Config):
            if f.name == "options":
                continue
            if f.name in keys:
                setattr(self, f.name, keys.pop(f.name))
            else:
                setattr(
                    self,
                    f.name,
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
                )
        if options is not None and keys:
            raise TypeError("give the algorithm's keys either as options or as keywords, not both")
        self.options = options if options is not None else keys

    def spec(self) -> AlgorithmSpec:
        return option_errors(lambda: get_spec(self.algorithm))

    def resolved(self, *, saved: bool = False) -> Config:
        """Fill the defaults that depend on other keys and check the whole config.

        Keys of other algorithms are refused where they are set to anything but their default
        (they would do nothing here); with `saved` (a config read back from a run or a checkpoint,
        which may hold every key of an older version) they are dropped.
        """
        from .config_checks import validate  # the checks read this module's keys

        load_plugins_named(self.plugins)
        spec = self.spec()
        c = dataclasses.replace(self)
        c.options = options_for(spec, self.options, generic=FIELDS, lenient=saved)
        if c.test_ways is None:
            c.test_ways = c.ways
        if c.test_shots is None:
            c.test_shots = c.shots
        if c.test_queries is None:
            c.test_queries = 100 if c.benchmark == "sine" else c.queries
        if c.invert is None:
            c.invert = c.benchmark == "omniglot"
        size, channels = default_image(c.benchmark) or (28, 1)
        c.image_size = size if c.image_size is None else c.image_size
        c.channels = channels if c.channels is None else c.channels
        if c.augment == "auto":
            colour = c.benchmark in CATALOG and c.channels == 3
            c.augment = "standard" if colour and spec.learner.training_source == "batches" else "none"
        c.options = option_errors(lambda: c.options.resolved(c))
        if not c.eval_steps:
            c.eval_steps = c.options.eval_steps()
        validate(c, spec)
        return c

    def to_dict(self) -> dict[str, Any]:
        """Flat: the generic keys, with the algorithm's own after `algorithm`."""
        out: dict[str, Any] = {}
        own = self.options.to_dict() if isinstance(self.options, Options) else dict(self.options or {})
        for f in dataclasses.fields(self):
            if f.name == "options":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, list) else value
            if f.name == "algorithm":
                out.update(own)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "options"}
HINTS = typing.get_type_hints(Config)


def key_help(name: str) -> dict[str, Any]:
    """The help metadata of a generic key: help, group, choices, allowed."""
    return dict(FIELDS[name].metadata)


def task_kind(c: Config) -> str:
    """ "regression" (sine waves, a CSV with a target column), "rl" (an RL benchmark) or
    "classification"."""
    if c.benchmark in RL_BENCHMARKS:
        return "rl"
    regression = c.benchmark == "sine" or (c.benchmark == "csv" and c.csv_target is not None)
    return "regression" if regression else "classification"


def config_from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """A config from `values` (e.g. parsed YAML) on top of `base` (default: the built-in defaults).

    Generic keys are checked for their type here; the algorithm's keys when the config is resolved.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
    c = dataclasses.replace(base) if base is not None else Config()
    own = c.options.to_dict() if isinstance(c.options, Options) else dict(c.options or {})
    for name, value in values.items():
        name = str(name)
        if name in FIELDS:
            setattr(c, name, coerce(name, value, HINTS[name]))
        else:
            own[name] = value
    c.options = own
    return c


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (plain YAML silently keeps the last one) and
    reads only true and false as booleans, as YAML 1.2 does: YAML 1.1's on/off/yes/no stay strings,
    so that `kernels: off` is the string its key takes ("off"), not false."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            name = self.construct_object(key_node, deep=deep)
            if name in seen:
                raise ConfigError(f"config key {name!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(name)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """YAML text as configs read it: a key given twice is a `ConfigError`, and only true/false are
    booleans (`off` stays the string "off"); YAML's own errors pass through."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_value(text: str) -> Any:
    """One value as a config file reads it (`0.1`, `true`, `[40, 40]`, `off`); text YAML cannot
    read is kept as it is."""
    try:
        return read_yaml(text)
    except (yaml.YAMLError, ConfigError, RecursionError):
        return text


def load_config(path: str | Path, base: Config | None = None, *, _chain: tuple[Path, ...] = ()) -> Config:
    """The config a YAML file gives, on top of `base` (default: the built-in defaults).

    A file may start from another config file with `extends: OTHER.yaml` (a path relative to the
    file): the other file's keys are read first, and this file's keys replace or add to them. A
    file of its own is then only what differs, e.g. a test protocol beside a training config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        values = read_yaml(text) or {}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({yaml_problem(e)})") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config") from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} is a YAML {type(values).__name__}, not a mapping of config keys to values"
        )
    if "extends" in values:
        parent = values.pop("extends")
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"{path}: extends must name another config file, got {parent!r}")
        chain = (*_chain, path.resolve())
        parent_path = path.parent / parent
        if parent_path.resolve() in chain:
            cycle = " -> ".join(str(p) for p in (*chain, parent_path.resolve()))
            raise ConfigError(f"{path}: extends {parent}, which leads back to it ({cycle})")
        try:
            base = load_config(parent_path, base, _chain=chain)
        except ConfigError as e:
            raise ConfigError(f"{path} extends {parent}: {e}") from None
    return config_from_dict(values, base)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: where, and what (PyYAML's own message spans several lines)."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if problem is None:
        return " ".join(str(error).split())
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (f"{context}, {problem}" if context else problem)


def parse_override(text: str) -> tuple[str, Any]:
    """`"inner_lr=0.1"` -> ("inner_lr", 0.1); the value is read as YAML (numbers, true/false, lists).

    The key must be a generic key or a key of some registered algorithm (load plugins first)."""
    if "=" not in text:
        raise ConfigError(f"an override must look like key=value, got {text!r}")
    name, raw = text.split("=", 1)
    name = name.strip().replace("-", "_")
    if name not in FIELDS and name not in option_keys():
        raise unknown_key(name, FIELDS)
    return name, parse_value(raw) if raw.strip() else None
