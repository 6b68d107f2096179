"""From the command line to a config: every problem of the overrides, found before Hydra runs.

Hydra would stop at the first unknown key with a message that does not say what was meant.
``check_overrides`` composes the config the way Hydra will, collects every unknown key (with the
nearest valid one), every bad type, every missing value and every value out of its range
(:mod:`llmkit.checks`), and raises them together. ``replay_argv`` rebuilds the overrides of a
recorded run (``--from-run``).

Beside each recipe's own config, two keys belong to llmkit itself (:class:`RunControl`):
``skip_completed`` (in a sweep, a job whose folder holds a completed run of the same config is
skipped) and ``optimize_metric`` (the metric a job returns to a sweeper such as Optuna).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from llmkit import checks, config, paths
from llmkit.errors import ConfigError, LlmkitError
from llmkit.recipes import RECIPES


@dataclass
class RunControl:
    """llmkit's own keys, accepted by every command and kept out of the recipes' configs."""

    skip_completed: bool = (
        True  # multirun (-m) only: skip a job whose out_dir holds a completed run.json of this config
    )
    optimize_metric: str | None = None  # the metric each job returns to the sweeper (Optuna), e.g. val_loss


CONTROL_KEYS = tuple(f.name for f in fields(RunControl))

# Hydra flags after which preflight steps aside (the user asks Hydra about the config itself).
_INSPECT_FLAGS = {"--cfg", "-c", "--info", "-i", "--hydra-help", "--resolve", "-p", "--package"}


def _overrides(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun"):
            skip = True
            continue
        if not arg.startswith("-"):
            out.append(arg)
    return out


def _line(override: Any) -> str:
    """The override as the user typed it (Hydra's parser always records it)."""
    return str(override.input_line)


def _first(override: Any) -> str:
    """The first value of a (possibly sweeping) override, as override text."""
    if override.is_sweep_override():
        value = next(iter(override.sweep_string_iterator()))
    else:
        value = override.get_value_element_as_str()
    return f"{override.get_key_element()}={value}"


def _suggest_path(cfg: DictConfig, key: str) -> str:
    """'trainer.max_step' -> 'trainer.max_step: unknown key (did you mean 'max_steps'?)'"""
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        where = ".".join(parts[: i + 1])
        valid = list(node.keys()) if isinstance(node, DictConfig) else []
        return f"{where}: unknown key{config._suggest(part, [str(v) for v in valid])}"
    return f"{key}: unknown key"


def check_overrides(command: str, argv: list[str]) -> list[str]:
    """Raise one ConfigError listing every problem the overrides would cause; return the argv for Hydra.

    An override of a schema field that the YAML does not spell out (it keeps the schema's default)
    becomes ``+key=value`` in the returned argv, so Hydra adds it instead of refusing it.
    """
    if any(a in _INSPECT_FLAGS for a in argv):
        return argv
    added: list[str] = []
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(_overrides(argv))
    except Exception as e:  # hydra's OverrideParseException
        raise ConfigError([str(e).strip()], where="overrides") from None
    groups = set(paths.config_groups(command)) | {"experiment", "sweep"}
    group_ovr, value_ovr = [], []
    problems: list[str] = []
    control: dict[str, Any] = {}
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or (o.package and o.package.startswith("hydra")):
            problems.extend(_launcher_problem(o))
            continue
        if key in CONTROL_KEYS:
            control[key] = o.value() if not o.is_sweep_override() else next(iter(o.sweep_iterator()))
        elif key.split("/")[0] in groups:
            group_ovr.append(_first(o) if not (o.is_delete() or o.is_add()) else _line(o))
        else:
            value_ovr.append(o)
    problems.extend(config.check(control, RunControl))

    group_ovr = [g for g in group_ovr if not _unknown_option(g, problems)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        try:
            base = compose(command, overrides=group_ovr)
        except Exception as e:
            raise ConfigError([_plugin_hint(str(e).splitlines()[0])], where="config groups") from None
        keep = []
        schema = RECIPES[command].schema()
        for o in value_ovr:
            text = _line(o) if (o.is_add() or o.is_delete()) else _first(o)
            if o.is_add() or o.is_delete() or _has_key(base, o.key_or_group):
                keep.append(text)
            elif _schema_has(schema, o.key_or_group):  # a field the YAML leaves at its default
                keep.append("+" + text)
                added.append(_line(o))
            else:
                problems.append(_suggest_path(base, o.key_or_group))
        try:
            cfg = compose(command, overrides=group_ovr + keep)
        except Exception as e:
            problems.append(str(e).splitlines()[0])
            raise ConfigError(problems, where="overrides") from None
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.out_dir = cfg.get("out_dir") or "."
    try:
        pop_control(cfg)  # set by a config file (conf/sweep/optuna.yaml sets optimize_metric)
    except ConfigError as e:
        problems.extend(e.problems)
    loaded: list[str] = []
    try:
        config.load(cfg, RECIPES[command].schema())
    except ConfigError as e:
        loaded = e.problems
    try:
        ranges = checks.problems(command, config.to_container(cfg))
    except OmegaConfBaseException:  # an interpolation that does not resolve: config.load has said so
        ranges = []
    keys = {p.split(":", 1)[0] for p in ranges}  # a schema's own range check says the same once
    problems.extend(p for p in loaded if p.split(" ", 1)[0].rstrip(":") not in keys)
    problems.extend(ranges)
    problems.extend(_missing_packages(cfg))
    if problems:
        raise ConfigError(problems)
    return ["+" + a if a in added else a for a in argv]


def _schema_has(schema: type, dotted: str) -> bool:
    """Whether ``dotted`` names a field of the dataclass tree ``schema``."""
    import dataclasses
    import types
    import typing

    tp: Any = schema
    for part in dotted.split("."):
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
        if tp is None or not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return True


# Optional dependencies a config switch asks for: key -> (module, pip package).
_OPTIONAL = {
    "logger.tensorboard": ("tensorboard", "tensorboard"),
    "logger.wandb": ("wandb", "wandb"),
    "logger.mlflow": ("mlflow", "mlflow"),
}


def _missing_packages(cfg: DictConfig) -> list[str]:
    """A problem for each optional backend the config turns on that is not installed."""
    import importlib.util

    from omegaconf import OmegaConf

    problems = []
    for key, (module, pip) in _OPTIONAL.items():
        if OmegaConf.select(cfg, key, default=False, throw_on_missing=False) is True:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                problems.append(f"{key}=true needs the {pip} package, which is not installed: pip install {pip}")
    return problems


# conf/hydra/launcher/<option>.yaml -> (the Hydra plugin it extends, its pip package)
_LAUNCHER_PLUGINS = {"slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")}


def _launcher_problem(override: Any) -> list[str]:
    """``hydra/launcher=slurm`` when the submitit launcher plugin is not installed: say what to install."""
    import importlib.util

    if override.key_or_group != "hydra/launcher" or override.is_sweep_override():
        return []
    option = str(override.value())
    module, pip = _LAUNCHER_PLUGINS.get(option, (None, None))
    if module is None and option.startswith("submitit_"):
        module, pip = _LAUNCHER_PLUGINS["slurm"]
    try:
        found = module is None or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return (
        [] if found else [f"hydra/launcher={option} needs the {pip} package, which is not installed: pip install {pip}"]
    )


def _plugin_hint(message: str) -> str:
    """Name the package to install when a config asks for a Hydra plugin that is not installed."""
    if "hydra/sweeper/optuna" in message:
        return f"{message} (conf/sweep/optuna.yaml needs the Optuna sweeper: pip install hydra-optuna-sweeper)"
    if "hydra/sweeper" in message or "hydra/launcher" in message:
        return f"{message} (is the Hydra plugin installed?)"
    return message


def pop_control(cfg: DictConfig) -> RunControl:
    """Remove llmkit's own keys (:class:`RunControl`) from ``cfg`` and return them, validated."""
    values = {}
    with open_dict(cfg):
        for key in CONTROL_KEYS:
            if key in cfg:
                values[key] = cfg[key]
                del cfg[key]
    return config.load(values, RunControl)


def control_argv(argv: list[str]) -> list[str]:
    """Hydra's argv from the user's: ``skip_completed=false`` -> ``++skip_completed=false`` (llmkit's
    keys need not be in any config file), and ``-m`` first (Hydra wants the overrides together, so
    ``llmkit pretrain experiment=quickstart -m optim.lr=1e-3,3e-3`` would otherwise fail)."""
    flags = [a for a in argv if a in ("-m", "--multirun")]
    argv = flags + [a for a in argv if a not in ("-m", "--multirun")]
    out = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" in arg and key in CONTROL_KEYS:
            arg = f"++{arg}"
        out.append(arg)
    return out


def replay_argv(command: str, run_dir: str | os.PathLike, argv: list[str]) -> list[str]:
    """The arguments that re-run the run in ``run_dir``: its recorded overrides, then ``argv``'s.

    The overrides come from ``run_dir/.hydra/overrides.yaml`` (Hydra writes it; ``run.json`` holds a
    copy). An override in ``argv`` replaces a recorded one of the same key; the recorded ``out_dir``
    is dropped (a new folder, unless ``argv`` names one), and a job of a sweep re-runs as a single
    run (``hydra.mode=RUN``) unless ``argv`` has ``-m``.
    """
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from llmkit import runs

    run_dir = Path(run_dir)
    record = runs.read(run_dir)
    if record and record.get("command") not in (None, command):
        raise LlmkitError(
            f"{run_dir} is a run of `llmkit {record['command']}`, not of `llmkit {command}`; "
            f"re-run it with: llmkit {record['command']} --from-run {run_dir}"
        )
    saved = run_dir / ".hydra" / "overrides.yaml"
    if saved.is_file():
        recorded = yaml.safe_load(saved.read_text(encoding="utf-8")) or []
    elif record and isinstance(record.get("overrides"), list):
        recorded = record["overrides"]
    else:
        raise LlmkitError(
            f"--from-run {run_dir}: no record of its overrides there (.hydra/overrides.yaml or run.json). "
            "Is it the folder of an llmkit run?"
        )
    parser = OverridesParser.create()
    is_override = [("=" in a or a.startswith("~")) and not a.startswith("-") for a in argv]
    try:
        new = {i: parser.parse_override(a) for i, a in enumerate(argv) if is_override[i]}
        old = parser.parse_overrides([str(r) for r in recorded])
    except Exception as e:  # hydra's OverrideParseException
        raise ConfigError([str(e).strip()], where="overrides") from None
    new_keys = {_override_key(o) for o in new.values()}
    kept = [_line(o) for o in old if _override_key(o) not in new_keys and o.key_or_group != "out_dir"]
    added = {_override_key(o) for o in old if o.is_add() or o.is_force_add()}
    args = list(argv)
    for i, o in new.items():  # a recorded `+key=v` replaced by `key=w` must stay an addition
        if _override_key(o) in added and args[i][0] not in "+~":
            args[i] = ("+" if (paths.config_dir() / o.key_or_group).is_dir() else "++") + args[i]
    if not ({"-m", "--multirun"} & set(args)):
        kept.append("hydra.mode=RUN")
    at = next((i for i, flag in enumerate(is_override) if flag), 0)  # Hydra wants the overrides together
    return args[:at] + kept + args[at:]


def _override_key(o: Any) -> tuple[str, str | None]:
    return (o.key_or_group, o.package)


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    """Whether ``dotted`` names a key of ``cfg`` (a '???' value counts: it exists, unset)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def _unknown_option(override: str, problems: list[str]) -> bool:
    """True (and a problem noted) if ``group=option`` names no file in conf/<group>/."""
    group, _, option = override.lstrip("+~").partition("=")
    if not option or option == "null":
        return False
    options = sorted(p.stem for p in (paths.config_dir() / group).glob("*.yaml"))
    if option in options:
        return False
    hint = config._suggest(option, options)
    problems.append(f"{group}={option}: no such {group} config{hint}; available: {', '.join(options)}")
    return True
