"""The values of config keys: each checked against its key's type, and the chosen algorithm's own
keys made into its options dataclass (keys of other algorithms dropped or refused)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any

from .algorithms.spec import AlgorithmSpec, OptionError, Options, load_plugins, option_keys

__all__ = ["ConfigError", "option_errors", "coerce", "options_for", "unknown_key", "load_plugins_named"]


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key."""


def option_errors(fn):
    try:
        return fn()
    except OptionError as e:
        raise ConfigError(str(e)) from None


def load_plugins_named(plugins: list[str]) -> None:
    option_errors(lambda: load_plugins(plugins))


def unknown_key(name: str, generic, spec: AlgorithmSpec | None = None) -> ConfigError:
    own = [f.name for f in dataclasses.fields(spec.options)] if spec is not None else list(option_keys())
    close = difflib.get_close_matches(name, [*generic, *own], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    # Without an algorithm the keys of all of them would make a line too long to read: `--help`.
    where = (
        f"{spec.name}'s keys: {', '.join(own) or 'none'}"
        if spec is not None
        else "each algorithm's own keys: metalab train --help"
    )
    return ConfigError(f"unknown config key {name!r}{hint}; generic keys: {', '.join(generic)}; {where}")


def options_for(spec: AlgorithmSpec, options: Any, *, generic, lenient: bool = False) -> Options:
    """`spec`'s options from raw values or another algorithm's options. A key only other
    algorithms take is dropped where it holds their default (or always, `lenient`); set to
    anything else, it is refused: it would do nothing here."""
    shadowing = [f.name for f in dataclasses.fields(spec.options) if f.name in generic]
    if shadowing:
        raise ConfigError(
            f"algorithm {spec.name!r} declares {shadowing[0]!r}, a generic config key: rename its option"
        )
    if isinstance(options, spec.options):
        return options
    carried = isinstance(options, Options)  # another algorithm's resolved options
    raw = options.to_dict() if carried else dict(options or {})
    own = {f.name for f in dataclasses.fields(spec.options)}
    others = option_keys()
    for name in list(raw):
        if name in own:
            continue
        if name not in others:
            raise unknown_key(name, generic, spec)
        if not (lenient or carried or all(raw[name] == _default(s, name) for s in others[name])):
            takers = ", ".join(s.name for s in others[name])
            raise ConfigError(f"config key {name!r} applies to {takers}, not to {spec.name}")
        del raw[name]
    return option_errors(lambda: spec.make_options(raw, coerce))


def _default(spec: AlgorithmSpec, name: str) -> Any:
    f = next(f for f in dataclasses.fields(spec.options) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def shown(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to about `limit` characters (a config value can be any size)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` of config key `name`, or a `ConfigError` naming the key."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {name!r} must not be empty")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r} must be true or false, got {shown(value)}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r} must be an integer, got {shown(value)}")
    if base is float:
        return _number(name, value)
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {name!r} must be a string, got {shown(value)}")
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        values = value if isinstance(value, list) else [value]
        if item is float:
            return [_number(name, v) for v in values]
        if all(isinstance(v, item) and not isinstance(v, bool) for v in values):
            return values
        noun = {int: "integers", str: "strings"}.get(item, item.__name__)
        raise ConfigError(f"config key {name!r} must be a list of {noun}, got {shown(value)}")
    return value


def _number(name: str, value: Any) -> float:
    """A finite number; YAML 1.1 reads `1e-3` (no dot) as a string, so such strings count too."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigError(f"config key {name!r} must be a number, got {shown(value)}")
