"""The checks of a resolved config: the generic keys, what the algorithm needs, the data keys, and
the algorithm's own options. Each refusal is a `ConfigError` naming the key."""

from __future__ import annotations

import os

from .algorithms.optimization.options import MAX_INNER_STEPS
from .algorithms.spec import AlgorithmSpec, check_options
from .config import FIELDS, IMAGE_BENCHMARKS, RL_BENCHMARKS, Config, ConfigError, option_errors, task_kind
from .data.catalog import CATALOG
from .data.omniglot.splits import EXAMPLES_PER_CLASS, SPLIT_CLASSES
from .devices import check_device_name
from .models.backbones import PAPER_FILTERS, activation_floats

__all__ = ["validate"]


def validate(c: Config, spec: AlgorithmSpec) -> None:
    """The generic checks, then what the algorithm needs, then its own options' checks."""
    for name, f in FIELDS.items():
        choices = f.metadata.get("choices")
        if choices is not None and getattr(c, name) not in choices:
            raise ConfigError(
                f"config key {name!r} must be one of {', '.join(map(str, choices))}; got {getattr(c, name)!r}"
            )
    positive = (
        "ways",
        "test_ways",
        "shots",
        "queries",
        "test_shots",
        "test_queries",
        "iterations",
        "meta_batch",
    )
    for name in positive + ("val_tasks", "test_tasks", "log_every"):
        if getattr(c, name) < 1:
            raise ConfigError(f"config key {name!r} must be >= 1, got {getattr(c, name)}")
    for name in ("val_every", "checkpoint_every", "keep_top"):
        if getattr(c, name) < 0:
            raise ConfigError(f"config key {name!r} must be >= 0, got {getattr(c, name)}")
    if any(s < 0 for s in c.eval_steps):
        # The default comes from the algorithm's keys (inner_steps, eval_inner_steps): name them first.
        option_errors(lambda: check_options(c.options, c))
        raise ConfigError(f"config key 'eval_steps' must hold steps >= 0, got {c.eval_steps}")
    if c.eval_steps and not spec.learner.inner_loop:
        raise ConfigError(
            f"config key 'eval_steps' applies to learners with an inner loop; {spec.name} has none"
        )
    if c.outer_lr <= 0:
        raise ConfigError("config key 'outer_lr' must be > 0")
    for name in ("max_minutes", "dist_timeout"):
        if getattr(c, name) is not None and getattr(c, name) <= 0:
            raise ConfigError(f"config key {name!r} must be > 0, got {getattr(c, name)}")
    for name in ("threads", "task_threads"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            raise ConfigError(f"config key {name!r} must be >= 1, got {getattr(c, name)}")
    if c.lr_schedule == "step" and (c.lr_decay_every < 1 or not 0.0 < c.lr_decay_factor <= 1.0):
        raise ConfigError(
            f"the step schedule needs 'lr_decay_every' >= 1 and 0 < 'lr_decay_factor' <= 1, "
            f"got {c.lr_decay_every} and {c.lr_decay_factor}"
        )
    check_device_name(c.device)  # its availability is checked where a command resolves it
    _validate_needs(c, spec)
    _validate_data_keys(c, spec)
    _validate_backbone(c, spec)
    option_errors(lambda: check_options(c.options, c))
    _validate_sizes(c, spec)


def _validate_needs(c: Config, spec: AlgorithmSpec) -> None:
    kind, needs = task_kind(c), spec.needs
    if kind not in needs.kinds and "rl" in (kind, *needs.kinds):
        learners = "maml_rl, pretrained_rl, random_rl"
        raise ConfigError(
            f"algorithm {spec.name!r} does not learn {'RL tasks' if kind == 'rl' else c.benchmark}: the RL "
            f"benchmarks ({', '.join(RL_BENCHMARKS)}) go with the RL learners ({learners}), and those with "
            "them only"
        )
    if kind not in needs.kinds:
        if kind == "regression":
            raise ConfigError(
                f"algorithm {spec.name!r} is a few-shot classifier; it needs a classification benchmark: "
                f"an image benchmark ({', '.join(IMAGE_BENCHMARKS)}) or csv with csv_label"
            )
        raise ConfigError(
            f"algorithm {spec.name!r} is defined for regression benchmarks only (sine, csv with csv_target)"
        )
    if needs.images and c.benchmark not in IMAGE_BENCHMARKS:
        raise ConfigError(
            f"algorithm {spec.name!r} has a convolutional backbone; it needs an image benchmark "
            f"({', '.join(IMAGE_BENCHMARKS)})"
        )
    if needs.fixed_head and kind == "classification" and c.test_ways != c.ways:
        raise ConfigError(
            f"config key 'test_ways' ({c.test_ways}) must equal 'ways' ({c.ways}) for {spec.name}, "
            "whose classifier head has a fixed number of outputs"
        )


def _validate_data_keys(c: Config, spec: AlgorithmSpec) -> None:
    """The keys of the image and CSV benchmarks: each only where it means something."""
    if c.image_size < 1 or c.channels not in (1, 3):
        raise ConfigError(
            f"config keys 'image_size' must be >= 1 and 'channels' 1 or 3, got {c.image_size} and "
            f"{c.channels}"
        )
    if c.benchmark in IMAGE_BENCHMARKS and c.image_size < spec.needs.min_image_size:
        raise ConfigError(
            f"config key 'image_size' must be >= {spec.needs.min_image_size} for {spec.name} on images, got "
            f"{c.image_size}"
        )
    if c.benchmark == "omniglot":
        _validate_omniglot(c)
    elif c.benchmark in CATALOG:
        _validate_catalog(c)
    if c.augment == "standard" and c.benchmark not in IMAGE_BENCHMARKS:
        raise ConfigError(f"config key 'augment' (standard) applies to image benchmarks, not {c.benchmark}")
    if c.benchmark in ("folder", "csv"):
        classes = task_kind(c) == "classification"
        least, unit = (c.test_ways, "classes (test_ways)") if classes else (1, "task")
        for name, needed in (("val_classes", c.val_every > 0), ("test_classes", True)):
            value = getattr(c, name)
            if value is not None and (value < 0 or (needed and value < least)):
                raise ConfigError(
                    f"config key {name!r} ({value}) must be at least {least} {unit}"
                    + (" (or 0, with val_every 0)" if name == "val_classes" else "")
                )
    elif c.val_classes is not None or c.test_classes is not None:
        raise ConfigError(
            "config keys 'val_classes' and 'test_classes' apply to the folder and csv benchmarks, not "
            f"{c.benchmark}"
        )
    csv_keys = {
        k: getattr(c, k) for k in ("csv_label", "csv_target", "csv_task") if getattr(c, k) is not None
    }
    if c.benchmark != "csv":
        if csv_keys or c.csv_features:
            named = list(csv_keys) + ["csv_features"] * bool(c.csv_features)
            raise ConfigError(f"config keys {', '.join(named)} apply to the csv benchmark only")
        return
    if (c.csv_label is None) == (c.csv_target is None) or (c.csv_target is None) != (c.csv_task is None):
        raise ConfigError(
            "the csv benchmark needs either 'csv_label' (classification: the class column) or both "
            "'csv_target' and 'csv_task' (regression: the target column and the column grouping rows into "
            "tasks); "
            f"got {csv_keys or 'none'}"
        )


# The model keys of the image backbones, each checked against its default.
BACKBONE_KEYS = ("backbone", "filters", "drop_block", "downsample", "init", "norm_scale")


def _validate_backbone(c: Config, spec: AlgorithmSpec) -> None:
    """The backbone keys (backbone, filters, drop_block, downsample, init, norm_scale): image
    benchmarks only, on algorithms whose model is the backbone; a width >= 1; strided blocks and the
    MAML authors' initialisation on Conv-4 only; DropBlock on ResNet-12 only, at a rate in [0, 1),
    and not under vmap (whose random masks torch.func.vmap refuses)."""
    default = Config()
    chosen = {k: getattr(c, k) for k in BACKBONE_KEYS if getattr(c, k) != getattr(default, k)}
    if not chosen:
        return
    named = ", ".join(f"{k} {v}" for k, v in chosen.items())
    keys = f"config keys {', '.join(BACKBONE_KEYS[:-1])} and {BACKBONE_KEYS[-1]}"
    if c.benchmark not in IMAGE_BENCHMARKS:
        raise ConfigError(
            f"{keys} apply to image benchmarks ({', '.join(IMAGE_BENCHMARKS)}); {c.benchmark} uses an "
            f"MLP of the 'hidden' widths (got {named})"
        )
    if not spec.needs.backbone:
        raise ConfigError(f"{keys} do not apply to {spec.name}, whose model is its own (got {named})")
    if c.filters is not None and c.filters < 1:
        raise ConfigError(f"config key 'filters' must be >= 1, got {c.filters}")
    if not 0.0 <= c.drop_block < 1.0:
        raise ConfigError(f"config key 'drop_block' must be in [0, 1), got {c.drop_block}")
    for k in ("downsample", "init"):
        if k in chosen and c.backbone != "conv4":
            raise ConfigError(f"config key '{k}' applies to backbone conv4, not {c.backbone}")
    if c.drop_block > 0 and c.backbone != "resnet12":
        raise ConfigError(f"config key 'drop_block' applies to backbone resnet12, not {c.backbone}")
    if c.drop_block > 0 and getattr(c.options, "strategy", None) == "vmap":
        raise ConfigError(
            "config key 'drop_block' draws random masks, which torch.func.vmap refuses: use strategy loop "
            "(or auto)"
        )


def _validate_omniglot(c: Config) -> None:
    if c.channels != 1 or c.invert is False:
        raise ConfigError("Omniglot is greyscale with ink bright: it needs 'channels' 1 and 'invert' true")
    per_class = EXAMPLES_PER_CLASS
    for shots_key, queries_key in (("shots", "queries"), ("test_shots", "test_queries")):
        if getattr(c, shots_key) + getattr(c, queries_key) > per_class:
            raise ConfigError(
                f"config keys {shots_key!r} + {queries_key!r} = "
                f"{getattr(c, shots_key) + getattr(c, queries_key)} "
                f"exceed the {per_class} examples of every Omniglot class"
            )
    classes = SPLIT_CLASSES[c.split]
    for ways_key, split in (("ways", "train"), ("test_ways", "val"), ("test_ways", "test")):
        if getattr(c, ways_key) > classes[split]:
            raise ConfigError(
                f"config key {ways_key!r} ({getattr(c, ways_key)}) exceeds the {classes[split]} classes "
                f"of the {c.split} split's meta-{split} set"
            )


def _validate_catalog(c: Config) -> None:
    """The data-set benchmarks of `metalab.data.catalog`: their channels, and ways within their splits."""
    info = CATALOG[c.benchmark]
    if c.channels != info.channels or c.invert:
        kind = "RGB" if info.channels == 3 else "greyscale"
        raise ConfigError(
            f"{c.benchmark} is {kind}: it needs 'channels' {info.channels} and 'invert' false, got "
            f"{c.channels} and {c.invert}"
        )
    if not c.verify_data:
        return  # a copy of one's own may hold other classes; the data are checked when loaded
    for ways_key, split, classes in zip(
        ("ways", "test_ways", "test_ways"), ("train", "val", "test"), info.classes
    ):
        if split == "val" and not c.val_every:
            continue
        if getattr(c, ways_key) > classes:
            raise ConfigError(
                f"config key {ways_key!r} ({getattr(c, ways_key)}) exceeds the {classes} classes of "
                f"{c.benchmark}'s meta-{split} set"
            )


def _validate_sizes(c: Config, spec: AlgorithmSpec) -> None:
    """Sizes checked before anything is allocated: ways that leave a choice, widths >= 1, step
    counts within `MAX_INNER_STEPS`, and a memory estimate within the machine's memory."""
    if task_kind(c) == "classification":
        for name in ("ways", "test_ways"):
            if getattr(c, name) < 2:
                raise ConfigError(
                    f"config key {name!r} must be >= 2 for classification (one class leaves nothing to "
                    f"choose), got {getattr(c, name)}"
                )
    if any(width < 1 for width in c.hidden):
        raise ConfigError(f"config key 'hidden' must hold widths >= 1, got {c.hidden}")
    if any(s > MAX_INNER_STEPS for s in c.eval_steps):
        raise ConfigError(
            f"config key 'eval_steps' must hold steps <= {MAX_INNER_STEPS:,}, got {c.eval_steps}"
        )
    need, have = estimated_bytes(c), physical_memory()
    if have and need > have:
        raise ConfigError(
            f"this config needs about {need / 2**30:,.0f} GiB of memory (image_size {c.image_size}, "
            f"{_model_words(c)}, meta_batch {c.meta_batch} tasks of {_examples_per_task(c)} examples), more "
            f"than this machine's {have / 2**30:,.0f} GiB: reduce image_size, {_width_key(c)} or meta_batch"
        )


def _model_words(c: Config) -> str:
    if c.benchmark not in IMAGE_BENCHMARKS:
        return f"hidden {c.hidden}"
    return f"backbone {c.backbone}" + (f" with filters {c.filters}" if c.filters else "")


def _width_key(c: Config) -> str:
    return "filters" if c.benchmark in IMAGE_BENCHMARKS else "hidden"


def _examples_per_task(c: Config) -> int:
    per_class = max(c.shots + c.queries, c.test_shots + c.test_queries)
    return max(c.ways, c.test_ways) * per_class if task_kind(c) == "classification" else per_class


def estimated_bytes(c: Config) -> int:
    """A coarse upper estimate of a run's memory: the MLP's parameters with the optimizer's two
    moments and gradients, or for every example of a meta-batch a Conv-4's first-block activations
    (a few copies each: forward, norm, gradient) or a ResNet's activations (`activation_floats`)
    and their gradients, plus the images kept in memory."""
    if c.benchmark in IMAGE_BENCHMARKS:
        examples = c.meta_batch * _examples_per_task(c)
        filters = c.filters or PAPER_FILTERS
        if c.backbone == "conv4":
            activations = examples * filters * c.image_size**2 * 4 * 4
        else:  # every layer's output kept for the backward, and as much again for its gradient
            activations = examples * activation_floats(c.backbone, c.image_size, filters) * 4 * 2
        stored = 40_000 * c.channels * c.image_size**2 if c.benchmark == "omniglot" else 0
        if c.benchmark in CATALOG and c.benchmark != "omniglot":
            stored = CATALOG[c.benchmark].total_images * c.channels * c.image_size**2
        return activations + stored
    widths = [len(c.csv_features) or 1, *c.hidden, max(c.ways, 1)]
    parameters = sum(a * b for a, b in zip(widths, widths[1:]))
    return parameters * 4 * 4


def physical_memory() -> int:
    """Bytes of memory on this machine (0 where it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_steps(steps, *, name: str = "steps", inner_loop: bool | None = None, algorithm: str = "") -> None:
    """Inner steps asked for at test time (`steps`: one count, a list of counts, or None for the
    checkpoint's own), named `name` in the error ("--steps", "steps"): each in 0..MAX_INNER_STEPS, and,
    where `inner_loop` is given, only for a learner that has an inner loop (`ConfigError`)."""
    given = [s for s in (steps if isinstance(steps, (list, tuple)) else [steps]) if s is not None]
    if given and inner_loop is False:
        raise ConfigError(f"{name} applies to learners with an inner loop; {algorithm} has none")
    if any(not 0 <= s <= MAX_INNER_STEPS for s in given):
        raise ConfigError(f"{name} must be between 0 and {MAX_INNER_STEPS:,}, got {steps}")
