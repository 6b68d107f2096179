"""From the command line to a recipe: check the overrides, then hand over to ``@hydra.main``.

Hydra would stop at the first unknown key with a message that does not say what was meant.
``check_overrides`` composes the config the way Hydra will, collects every unknown key (with the
nearest valid one), every bad type and every missing value, and raises them together.

``hydra_main`` then runs the recipe inside a run record (``run.json``, see :mod:`llmkit.runs`).
Beside each recipe's own config, two keys belong to llmkit itself (:class:`RunControl`):
``skip_completed`` (in a sweep, a job whose folder holds a completed run of the same config is
skipped) and ``optimize_metric`` (the metric a job returns to a sweeper such as Optuna).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from llmkit import checks, config, display, lock, paths
from llmkit.errors import ConfigError, LlmkitError
from llmkit.recipes import RECIPES


@dataclass
class RunControl:
    """llmkit's own keys, accepted by every command and kept out of the recipes' configs."""

    skip_completed: bool = True  # multirun (-m) only: skip a job whose out_dir holds a completed run.json of this config
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
            group_ovr.append(_first(o) if not (o.is_delete() or o.is_add()) else o.input_line)
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
            text = o.input_line if (o.is_add() or o.is_delete()) else _first(o)
            if o.is_add() or o.is_delete() or _has_key(base, o.key_or_group):
                keep.append(text)
            elif _schema_has(schema, o.key_or_group):  # a field the YAML leaves at its default
                keep.append("+" + text)
                added.append(o.input_line)
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
    except Exception:  # an interpolation that does not resolve: config.load has said so
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
    return [] if found else [f"hydra/launcher={option} needs the {pip} package, which is not installed: pip install {pip}"]


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
    kept = [o.input_line for o in old if _override_key(o) not in new_keys and o.key_or_group != "out_dir"]
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


def hydra_main(
    command: str, argv: list[str], *, from_run: str | os.PathLike | None = None, own_argv: list[str] | None = None
) -> None:
    """Run ``command`` as a Hydra app with ``argv`` (what follows the command on the shell).

    Each job runs inside a run record (``run.json``: start, then the outcome and final metrics).
    In a multirun (``-m``) a job whose folder already holds a *completed* run of the same config is
    skipped and its recorded metrics are returned, so re-running an interrupted sweep finishes it
    (``skip_completed=false`` runs every job again). A single run is never skipped: running it
    again is what the user asked for. With ``optimize_metric=NAME`` each job returns that metric
    as a float, which is what sweepers such as Optuna minimise or maximise.
    ``own_argv``: the arguments as the user typed them (``argv`` is what Hydra gets: with ``from_run``,
    the replayed overrides of the run being reproduced come first).
    """
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from llmkit import runs

    recipe = RECIPES[command]
    typed = own_argv if own_argv is not None else argv  # as typed, for the record
    if from_run is not None:
        typed = ["--from-run", str(from_run), *typed]
    argv = control_argv(argv)
    argv = torchrun_argv(argv)

    @hydra.main(version_base=None, config_path=str(paths.config_dir()), config_name=command)
    def _job(cfg: DictConfig) -> Any:
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        num = OmegaConf.select(hc, "job.num", default=None, throw_on_missing=False) if multirun else None
        with open_dict(cfg):
            cfg.out_dir = hc.runtime.output_dir
        out_dir = Path(cfg.out_dir)
        try:
            control = pop_control(cfg)
            resolved = config.to_container(cfg)
        except Exception as err:  # a ConfigError, or an interpolation that does not resolve
            display.fail(err if isinstance(err, LlmkitError) else ConfigError([str(err).splitlines()[0]]))
        if multirun and control.skip_completed:
            done = runs.read(out_dir)
            why = runs.completed_differences(done, resolved, list(hc.overrides.task))
            if why == []:
                display.console().print(
                    f"job {num}: skipped, {out_dir} holds a completed run of this config "
                    f"({_metric_note(done.get('metrics') or {}, control)}); skip_completed=false runs it again"
                )
                return _job_value(done.get("metrics") or {}, control, out_dir)
            if why:
                display.console().print(f"job {num}: not skipped, {out_dir} holds a completed run of another config: "
                                 + "; ".join(why[:5]) + (" ..." if len(why) > 5 else ""))
        if _rank() > 0:  # under torchrun rank 0 keeps the run record (and Hydra's files, see torchrun_argv)
            try:
                return recipe.run(cfg)
            except LlmkitError as err:
                display.fail(err)
        try:
            took = lock.acquire(out_dir, command=command, argv=typed)
        except LlmkitError as err:
            display.fail(err)
        try:
            return _owned_job(out_dir, resolved, control, hc, num, multirun, cfg)
        finally:
            if took:
                lock.release(out_dir)

    def _owned_job(out_dir: Path, resolved: Any, control: RunControl, hc: Any, num: Any, multirun: bool,
                   cfg: DictConfig) -> Any:
        """The job, while this process holds ``out_dir``'s lock."""
        from llmkit import checkpoint

        for root in (out_dir, out_dir / "checkpoints"):
            checkpoint.remove_orphans(root)  # a killed save's temp folders: nobody else writes here
        done = _completed_note(out_dir, resolved)
        if done is not None:
            display.console().print(done)
            return _job_value((runs.read(out_dir) or {}).get("metrics") or {}, control, out_dir)
        record = runs.RunRecord.start(
            out_dir,
            command=command,
            config=resolved,
            argv=typed,
            overrides=list(hc.overrides.task),
            job={"name": hc.job.name, "num": num, "multirun": multirun},
            from_run=str(Path(from_run).resolve()) if from_run is not None else None,
        )
        if from_run is not None:
            _show_drift(Path(from_run), resolved, own_argv or [])
        try:
            result = recipe.run(cfg)
        except LlmkitError as err:
            record.finish("failed", error=err)
            display.fail(err)
        except BaseException as exc:
            status = runs.exit_status(exc)
            record.finish(status, error=None if status == "completed" else exc)
            raise
        record.finish("completed", result=result)
        return _job_value(result, control, out_dir)

    sys.argv = [f"llmkit {command}", *argv]
    early = _single_run_dir(argv)  # lock before Hydra writes .hydra/ into a folder another run owns
    took = False
    if early is not None and _rank() == 0:
        try:
            took = lock.acquire(early, command=command, argv=typed)
        except LlmkitError as err:
            display.fail(err)
    try:
        _job()
    finally:
        if took:
            lock.release(early)


def _single_run_dir(argv: list[str]) -> Path | None:
    """The ``out_dir=`` of a single run (not ``-m``, not ``--cfg``/``--help``), as Hydra will use it."""
    if any(a in ("-m", "--multirun", "-h", "--help") or a in _INSPECT_FLAGS for a in argv):
        return None
    if any(a.startswith("hydra.mode=") and a != "hydra.mode=RUN" for a in argv):
        return None
    found = [a.split("=", 1)[1] for a in argv if a.lstrip("+").split("=", 1)[0] == "out_dir" and "=" in a]
    if not found or "$" in found[-1] or "," in found[-1]:
        return None
    return Path(found[-1])


def _completed_note(out_dir: Path, resolved: Any) -> str | None:
    """``resume=auto`` on a run that completed its ``trainer.max_steps``: what to say instead of running it
    again (which would rewrite its records with an empty result); None when there is work to do."""
    from llmkit import checkpoint, runs

    if not isinstance(resolved, dict) or resolved.get("resume") != "auto":
        return None
    record = runs.read(out_dir)
    if not record or record.get("status") != "completed":
        return None
    max_steps = (resolved.get("trainer") or {}).get("max_steps")
    latest = checkpoint.latest_valid(out_dir / "checkpoints")
    if latest is None or not isinstance(max_steps, int):
        return None
    step = checkpoint.read_meta(latest, verify=False).get("step")
    if not isinstance(step, int) or step < max_steps:
        return None  # trainer.max_steps was raised: continue
    metrics = record.get("metrics") or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("val_loss", "train_loss")
                      and isinstance(v, (int, float)))
    return (f"resume=auto: {out_dir} holds a completed run (step {step} of trainer.max_steps={max_steps}"
            f"{'; ' + shown if shown else ''}); nothing to do, its records are unchanged. "
            f"Raise trainer.max_steps to train further.")


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def torchrun_argv(argv: list[str], environ: Any = None) -> list[str]:
    """Hydra's argv for a rank of a torchrun job: one run folder for all ranks, written by rank 0.

    The default ``out_dir`` is a timestamp, which each rank would read from its own clock (and
    so create its own folder). Under torchrun (WORLD_SIZE > 1) without an ``out_dir=`` override
    the folder is ``outputs/torchrun/<TORCHELASTIC_RUN_ID>`` instead: torchrun's rendezvous id,
    the same on every rank and node (``--standalone`` makes a fresh one per launch; give
    ``--rdzv_id``, e.g. the SLURM job id, on several nodes). Without a usable run id it is an
    error that asks for ``out_dir=``. Ranks > 0 write no ``.hydra/`` folder and no Hydra log.
    """
    env = os.environ if environ is None else environ
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    except ValueError:
        return argv
    if world <= 1:
        return argv
    extra = []
    has_out_dir = any(a.lstrip("+").split("=", 1)[0] == "out_dir" for a in argv if "=" in a and not a.startswith("-"))
    if not has_out_dir:
        run_id = env.get("TORCHELASTIC_RUN_ID", "")
        if not run_id or run_id == "none":
            display.fail(LlmkitError(
                f"This is rank {rank} of {world} (torchrun) and no out_dir= was given: the default, a timestamped "
                "folder, would differ between ranks. Give every rank the same folder: out_dir=runs/NAME "
                "(or launch with torchrun --standalone / --rdzv_id ID for outputs/torchrun/ID)."
            ))
        extra.append(f"out_dir=outputs/torchrun/{run_id}")
    if rank > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    if not extra:
        return argv
    # Hydra wants the overrides together: put these before the first one (or at the end).
    at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), len(argv))
    return argv[:at] + extra + argv[at:]


def _metric_note(metrics: dict[str, Any], control: RunControl) -> str:
    name = control.optimize_metric or next((k for k in ("val_loss", "loss", "train_loss") if k in metrics), None)
    return f"{name} {metrics[name]:.4g}" if name and isinstance(metrics.get(name), (int, float)) else "no metrics"


def _job_value(result: Any, control: RunControl, out_dir: Path) -> Any:
    """What the job returns to Hydra: the ``optimize_metric`` as a float when set, else the recipe's result."""
    if control.optimize_metric is None:
        return result
    from llmkit import runs

    metrics = runs.numeric_metrics(result)
    value = metrics.get(control.optimize_metric)
    if value is None:
        display.fail(LlmkitError(
            f"optimize_metric={control.optimize_metric}: the run in {out_dir} returned no such metric; "
            f"it returned: {', '.join(sorted(metrics)) or 'nothing'}"
        ))
    return float(value)


def _show_drift(from_run: Path, resolved: dict[str, Any], own_argv: list[str]) -> None:
    """Say how this run's config differs from the recorded one (the user's overrides, or edited configs)."""
    from llmkit import runs

    record = runs.read(from_run)
    console = display.console()
    if not record or not isinstance(record.get("config"), dict):
        console.print(f"--from-run {from_run}: no run.json there; its overrides were replayed on today's configs")
        return
    diffs = runs.config_diff(record["config"], resolved)
    if not diffs:
        console.print(f"--from-run {from_run}: the config is the recorded one")
        return
    own = [a.lstrip("+~").split("=", 1)[0].split("@")[0].replace("/", ".") for a in own_argv if "=" in a]
    console.print(f"--from-run {from_run}: {len(diffs)} value(s) differ from the recorded config:")
    for key, old, new in diffs[:40]:
        why = "your override" if any(key == k or key.startswith(k + ".") for k in own) else "config files changed?"
        console.print(f"  {key}: {old!r} -> {new!r}  ({why})")
