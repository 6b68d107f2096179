"""From the command line to a recipe: check the overrides, then hand over to ``@hydra.main``.

Hydra would stop at the first unknown key with a message that does not say what was meant.
``check_overrides`` composes the config the way Hydra will, collects every unknown key (with the
nearest valid one), every bad type and every missing value, and raises them together.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from omegaconf import DictConfig, open_dict

from llmkit import config, paths
from llmkit.errors import ConfigError, LlmkitError
from llmkit.recipes import RECIPES

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


def check_overrides(command: str, argv: list[str]) -> None:
    """Raise one ConfigError listing every problem the overrides would cause."""
    if any(a in _INSPECT_FLAGS for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(_overrides(argv))
    except Exception as e:  # hydra's OverrideParseException
        raise ConfigError([str(e).strip()], where="overrides") from None
    groups = set(paths.config_groups(command)) | {"experiment"}
    group_ovr, value_ovr = [], []
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or (o.package and o.package.startswith("hydra")):
            continue
        if key.split("/")[0] in groups:
            group_ovr.append(_first(o) if not o.is_delete() else o.input_line)
        else:
            value_ovr.append(o)

    problems: list[str] = []
    group_ovr = [g for g in group_ovr if not _unknown_option(g, problems)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        try:
            base = compose(command, overrides=group_ovr)
        except Exception as e:
            raise ConfigError([str(e).splitlines()[0]], where="config groups") from None
        keep = []
        for o in value_ovr:
            text = o.input_line if (o.is_add() or o.is_delete()) else _first(o)
            if o.is_add() or o.is_delete() or _has_key(base, o.key_or_group):
                keep.append(text)
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
        config.load(cfg, RECIPES[command].schema())
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)


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


def hydra_main(command: str, argv: list[str]) -> None:
    """Run ``command`` as a Hydra app with ``argv`` (what follows the command on the shell)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    recipe = RECIPES[command]

    @hydra.main(version_base=None, config_path=str(paths.config_dir()), config_name=command)
    def _job(cfg: DictConfig) -> Any:
        with open_dict(cfg):
            cfg.out_dir = HydraConfig.get().runtime.output_dir
        try:
            return recipe.run(cfg)
        except LlmkitError as err:
            if os.environ.get("LLMKIT_DEBUG", "") not in ("", "0", "false"):
                raise
            from llmkit.cli import _report

            _report(err)
            raise SystemExit(2) from None

    sys.argv = [f"llmkit {command}", *argv]
    _job()
