"""What an algorithm is, declared next to its learner: its spec, its own options, and the registry.

Every algorithm file ends with a `register(AlgorithmSpec(...))`: the name used in configs, the family,
a one-line summary, the learner class, an options dataclass (the algorithm's own config keys, with
defaults, help text and checks), what it needs from the tasks (`Needs`), and a `build` function that
makes the learner from a `BuildContext`. The rest of the library (configs, builders, CLI, training
loop) reads these specs and knows no algorithm by name.

A user registers an algorithm of their own the same way, from their own module:

    from metalab.algorithms import AlgorithmSpec, register
    register(AlgorithmSpec(name="my_algo", family="metric", summary="...", learner=MyLearner,
                           build=lambda ctx: MyLearner(ctx.embedding()[0])))

and trains it with `metalab train --plugins my_module.py --algorithm my_algo` (or by installing a
package that declares the module under the `metalab.algorithms` entry-point group). docs/extending.md
walks through it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from torch import nn

from .base import MetaLearner

__all__ = [
    "AlgorithmSpec",
    "BuildContext",
    "FAMILIES",
    "Needs",
    "NoOptions",
    "OptionError",
    "Options",
    "algorithm_names",
    "get_spec",
    "load_plugins",
    "option",
    "option_keys",
    "register",
    "specs",
    "unregister",
]

FAMILIES = ("optimization", "metric", "model", "transfer")
ENTRY_POINT_GROUP = "metalab.algorithms"


class OptionError(ValueError):
    """An algorithm option that cannot be used; the message names the key (a `ConfigError` in configs)."""


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    allowed: str | None = None,
) -> Any:
    """A field of an options dataclass: its default, one line of help, and its allowed values.

    Args:
        choices: the allowed values (checked, and listed in `metalab train --help`).
        minimum: the smallest allowed number (checked; None is allowed where the type is Optional).
        maximum: the largest allowed number (checked).
        allowed: the allowed values in words, for `--help`, where the options' `check` tests them
            (e.g. "> 0").
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "allowed": allowed}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Options:
    """Base of every algorithm's options dataclass (its own config keys).

    Subclasses declare fields with `option(...)`, may fill defaults that depend on other keys in
    `resolved`, check combinations in `check`, and fill keys that come from the data in `bind`.
    """

    def resolved(self, config) -> Options:
        """Defaults that depend on other keys (e.g. eval_inner_steps = inner_steps). Returns a copy."""
        return dataclasses.replace(self)

    def check(self, config) -> None:
        """Combinations of keys that cannot run, raising `OptionError` (after the per-key checks)."""

    def bind(self, dataset) -> Options:
        """Keys that come from the data set (e.g. the number of meta-train classes): a copy with
        them filled, or these options where nothing comes from the data."""
        return self

    def eval_steps(self) -> list[int]:
        """Inner-step counts evaluated by default; none for learners without an inner loop."""
        return []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class NoOptions(Options):
    """An algorithm without options of its own."""


def _check_field(f: dataclasses.Field, value: Any) -> None:
    choices, minimum = f.metadata.get("choices"), f.metadata.get("minimum")
    if choices is not None and value not in choices:
        raise OptionError(
            f"config key {f.name!r} must be one of {', '.join(map(str, choices))}; got {value!r}"
        )
    if minimum is not None and value is not None:
        values = value if isinstance(value, list) else [value]
        if any(v < minimum for v in values):
            raise OptionError(f"config key {f.name!r} must be >= {minimum}, got {value!r}")
    maximum = f.metadata.get("maximum")
    if maximum is not None and value is not None:
        values = value if isinstance(value, list) else [value]
        if any(v > maximum for v in values):
            raise OptionError(f"config key {f.name!r} must be <= {maximum:,}, got {value!r}")


def check_options(options: Options, config) -> None:
    """The per-key checks (choices, minimum), then the options' own `check`."""
    for f in dataclasses.fields(options):
        _check_field(f, getattr(options, f.name))
    options.check(config)


@dataclass(frozen=True)
class Needs:
    """What an algorithm needs from the tasks and the data; the config checks it before a run.

    Attributes:
        kinds: task kinds it learns ("classification", "regression").
        images: an image benchmark (its backbone is convolutional).
        fixed_head: its model ends in an N-way head, so N is fixed by meta-training (test_ways must
            equal ways; prediction needs exactly N classes).
        equal_shots: every class of a support set needs the same number of examples (prediction).
        min_image_size: the smallest image side its backbone takes.
        backbone: its model on images comes from `ctx.backbone()` / `ctx.embedding()` /
            `ctx.feature_maps()`, so the `backbone` key chooses it; False for a model of its own,
            which the key cannot change (it must stay at its default).
    """

    kinds: tuple[str, ...] = ("classification", "regression")
    images: bool = False
    fixed_head: bool = False
    equal_shots: bool = False
    min_image_size: int = 16
    backbone: bool = True


class BuildContext(Protocol):
    """What a spec's `build` receives (made by `metalab.builders` from a resolved config).

    Attributes:
        config: the resolved config (generic keys).
        options: the algorithm's resolved options.
        kind: "classification" or "regression".
        ways: N of the meta-training tasks.
        input_shape: of one example: (channels, size, size) for images, (features,) for vectors.
        images: whether the examples are images.
    """

    config: Any
    options: Any
    kind: str
    ways: int
    input_shape: tuple[int, ...]
    images: bool

    def backbone(
        self, *, out_features: int | None = None, hidden: int | None = None, norm: str = "batch_stats"
    ) -> nn.Module:
        """The task's model: for images the config's `backbone` (Conv-4, ResNet-12 or ResNet-18;
        `norm` "batch_stats" for the MAML family's transductive statistics, "batch" for running
        statistics; `hidden` the algorithm's Conv-4 filters where the config's `filters` is unset),
        else an MLP with the config's `hidden` widths. `out_features` defaults to N for
        classification, 1 for regression. The model is `head(features(x))`."""

    def embedding(self, *, norm: str = "batch") -> tuple[nn.Module, int]:
        """An embedding network without a head (running-statistics batch norm by default) and its
        output size."""

    def feature_maps(self, *, norm: str = "batch") -> nn.Module:
        """Images: the ResNet backbone without its global pool, (n, C, s, s) feature maps (Conv-4's
        output is already its flattened map: a `ValueError` there)."""

    def train_classes(self) -> int | None:
        """The number of meta-train classes where it is known without the data, else None."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm as the library sees it.

    Attributes:
        name: the `algorithm:` value in configs.
        family: one of `FAMILIES`.
        summary: one line (paper and idea), shown by `metalab train --help`.
        learner: the `MetaLearner` subclass.
        build: makes the learner from a `BuildContext`.
        options: its options dataclass (a subclass of `Options`).
        needs: what it needs from the tasks.
    """

    name: str
    family: str
    summary: str
    learner: type[MetaLearner]
    build: Callable[[BuildContext], MetaLearner]
    options: type[Options] = NoOptions
    needs: Needs = Needs()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"an algorithm name must be an identifier, got {self.name!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if not (isinstance(self.learner, type) and issubclass(self.learner, MetaLearner)):
            raise TypeError(f"{self.name}: learner must be a MetaLearner subclass, got {self.learner!r}")
        if not (dataclasses.is_dataclass(self.options) and issubclass(self.options, Options)):
            raise TypeError(
                f"{self.name}: options must be a dataclass subclassing Options, got {self.options!r}"
            )

    def make_options(self, values: dict[str, Any], coerce: Callable[[str, Any, Any], Any]) -> Options:
        """The options from raw key -> value pairs (`coerce(key, value, type_hint)` checks each type)."""
        hints = typing.get_type_hints(self.options)
        names = {f.name for f in dataclasses.fields(self.options)}
        unknown = [k for k in values if k not in names]
        if unknown:
            raise OptionError(f"{unknown[0]!r} is not a config key of {self.name}")
        return self.options(**{k: coerce(k, v, hints[k]) for k, v in values.items()})


_REGISTRY: dict[str, AlgorithmSpec] = {}
_entry_points_loaded = False


def register(spec: AlgorithmSpec, *, replace: bool = False) -> AlgorithmSpec:
    """Add `spec` to the registry (`replace=True` to redefine a name, e.g. when reloading a plugin)."""
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"an algorithm named {spec.name!r} is registered already")
    hints = typing.get_type_hints(spec.options)
    for f in dataclasses.fields(spec.options):
        if "help" not in f.metadata:
            raise ValueError(
                f"{spec.name}: option {f.name!r} has no help text (declare it with metalab's option())"
            )
        for other in _REGISTRY.values():
            same = {g.name: g for g in dataclasses.fields(other.options)}.get(f.name)
            if same is not None and typing.get_type_hints(other.options)[f.name] != hints[f.name]:
                raise ValueError(f"{spec.name}: option {f.name!r} has another type in {other.name}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an algorithm from the registry (e.g. one registered by a test)."""
    _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # the module registers its specs when imported


def specs() -> list[AlgorithmSpec]:
    """Every registered algorithm, by family (in the order of `FAMILIES`), then by name."""
    _load_entry_points()
    return sorted(_REGISTRY.values(), key=lambda s: (FAMILIES.index(s.family), s.name))


def algorithm_names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def get_spec(name: str) -> AlgorithmSpec:
    """The spec registered as `name`; an `OptionError` naming the registered ones otherwise."""
    _load_entry_points()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OptionError(
            f"config key 'algorithm' must be one of {', '.join(algorithm_names())}; got {name!r}{hint}"
        )
    return _REGISTRY[name]


def option_keys() -> dict[str, list[AlgorithmSpec]]:
    """Every option name of every registered algorithm -> the specs that declare it."""
    keys: dict[str, list[AlgorithmSpec]] = {}
    for spec in specs():
        for f in dataclasses.fields(spec.options):
            keys.setdefault(f.name, []).append(spec)
    return keys


def load_plugins(plugins: list[str]) -> None:
    """Import user modules that register algorithms: a path to a .py file or an importable module name."""
    for plugin in plugins:
        path = Path(plugin)
        if plugin.endswith(".py"):
            if not path.is_file():
                raise OptionError(f"plugin file not found: {plugin}")
            name = "metalab_plugin_" + re.sub(r"\W", "_", str(path.resolve()))
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[name]
                raise _plugin_failed(plugin, e) from e
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as e:
                raise OptionError(f"plugin module {plugin!r} cannot be imported: {e}") from None
            except Exception as e:
                raise _plugin_failed(plugin, e) from e


def _plugin_failed(plugin: str, error: Exception) -> OptionError:
    """A plugin whose own code raised while it was imported: named, with what it raised."""
    return OptionError(
        f"plugin {plugin} failed while being imported ({type(error).__name__}: {error}); "
        "METALAB_DEBUG=1 shows its traceback"
    )
