"""Typed config schemas and validation that reports every problem at once.

Each command's composed config is checked against a tree of dataclasses (the schema) before any
work starts: unknown keys (with the nearest valid key suggested), values of the wrong type,
choices outside their set and required values left out are collected, then raised together as one
:class:`~llmkit.errors.ConfigError`. Nodes that name a ``_target_`` (optimizers, schedulers,
objectives) are checked against the keyword parameters of the callable they name, so the YAML and
the Python signature cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from omegaconf import DictConfig, OmegaConf

from llmkit.errors import ConfigError

T = TypeVar("T")

MISSING = "???"


@dataclasses.dataclass(frozen=True)
class Target:
    """Marks a schema field whose value is a ``_target_`` node for ``hydra.utils.instantiate``.

    ``runtime`` names the parameters passed at the call site (``params``, ``total_steps``...),
    which the YAML must not set and need not provide.
    """

    runtime: tuple[str, ...] = ()


def target(*runtime: str) -> Any:
    """A dataclass field holding a ``_target_`` node (see :class:`Target`); absent = an empty node,
    which validation reports as missing its ``_target_``."""
    return dataclasses.field(default_factory=dict, metadata={"target": Target(runtime)})


def to_container(cfg: Any) -> Any:
    """Resolve a DictConfig into plain Python containers (missing values stay ``'???'``)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, path: str, problems: list[str]) -> None:
    """Append to ``problems`` what is wrong with ``value`` as a ``tp``."""
    if tp is Any:
        return
    if value == MISSING:
        problems.append(f"{path}: a value is required (it is '???')")
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        candidates = [a for a in args if a is not type(None)]
        for cand in candidates:
            trial: list[str] = []
            _check_value(value, cand, path, trial)
            if not trial:
                return
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            hint = _suggest(str(value), [str(a) for a in args])
            problems.append(f"{path}: {value!r} is not one of {choices}{hint}")
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return
        problems.extend(check(value, typing.cast(type, tp), path=path))
        return
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return
        if args:
            for i, item in enumerate(value):
                _check_value(item, args[0], f"{path}[{i}]", problems)
        return
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return
        if len(args) == 2:
            for k, v in value.items():
                _check_value(v, args[1], f"{path}.{k}", problems)
        return
    if value is None:
        problems.append(f"{path}: expected {_type_name(tp)}, got null")
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(tp)
    if ok is not None and not ok(value):
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _import(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    obj = importlib.import_module(module)
    return getattr(obj, attr)


def _check_target(node: Any, spec: Target, path: str) -> list[str]:
    if not isinstance(node, Mapping):
        return [f"{path}: expected a mapping with a '_target_', got {node!r}"]
    name = node.get("_target_")
    if not isinstance(name, str):
        return [f"{path}: '_target_' is missing (it names the class or function to build)"]
    try:
        fn = _import(name)
    except (ImportError, AttributeError, ValueError) as e:
        return [f"{path}._target_: cannot import '{name}' ({e})"]
    params = inspect.signature(fn).parameters
    problems = []
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    try:
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:  # torch signatures use forward references we need not resolve
        hints = {}
    for key, value in node.items():
        if key.startswith("_") and key.endswith("_"):
            continue
        if key in spec.runtime:
            problems.append(f"{path}.{key}: set at run time by llmkit; remove it from the config")
        elif key not in params and not accepts_any:
            problems.append(f"{path}.{key}: unknown key for {name}{_suggest(key, names)}")
        elif key in hints:
            _check_value(value, hints[key], f"{path}.{key}", problems)
    for n, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        if required and n not in node and n not in spec.runtime:
            problems.append(f"{path}.{n}: required by {name} but not set")
    return problems


def check(node: Mapping, schema: type, *, path: str = "") -> list[str]:
    """Return every problem of ``node`` (plain containers) against the dataclass ``schema``."""
    problems: list[str] = []
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    prefix = f"{path}." if path else ""
    for key in node:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key{_suggest(str(key), fields)}")
    for name, f in fields.items():
        where = f"{prefix}{name}"
        spec = f.metadata.get("target")
        if name not in node:
            if spec is not None or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
                problems.append(f"{where}: a value is required")
            continue
        if spec is not None:
            if node[name] is not None or typing.get_origin(hints[name]) not in (typing.Union, types.UnionType):
                problems.extend(_check_target(node[name], spec, where))
            continue
        _check_value(node[name], hints[name], where, problems)
    return problems


def build(node: Mapping, schema: type[T]) -> T:
    """Instantiate the dataclass tree ``schema`` from validated plain containers."""
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for f in dataclasses.fields(typing.cast(Any, schema)):
        if f.name not in node:
            continue
        try:
            kwargs[f.name] = _build_value(node[f.name], hints[f.name])
        except ValueError as e:  # a nested schema's own check: say which node it is about
            msg = str(e)
            raise ValueError(msg if msg.startswith(f"{f.name}.") else f"{f.name}: {msg}") from e
    return schema(**kwargs)


def _build_value(value: Any, tp: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return build(value, typing.cast(type, tp))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for cand in args:
            if cand is not type(None) and not _check_fails(value, cand):
                return _build_value(value, cand)
        return value
    if tp is float and isinstance(value, int):
        return float(value)
    if origin in (list, Sequence) and args:
        return [_build_value(v, args[0]) for v in value]
    if origin is tuple and args:
        return tuple(_build_value(v, args[0]) for v in value)
    return value


def _check_fails(value: Any, tp: Any) -> bool:
    trial: list[str] = []
    _check_value(value, tp, "", trial)
    return bool(trial)


def load(cfg: Any, schema: type[T], *, where: str = "config") -> T:
    """Validate ``cfg`` (DictConfig or mapping) against ``schema``; raise one ConfigError or build it."""
    try:
        node = to_container(cfg)
    except Exception as e:  # an interpolation that does not resolve, e.g. ${oc.env:UNSET}
        raise ConfigError([str(e).splitlines()[0]], where=where) from e
    problems = check(node, schema)
    if problems:
        raise ConfigError(problems, where=where)
    try:
        return build(node, schema)
    except (ValueError, TypeError) as e:  # a schema's own __post_init__ checks
        raise ConfigError([str(e)], where=where) from e
