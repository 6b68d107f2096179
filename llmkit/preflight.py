"""From a checked command line to a recipe: ``hydra_main`` runs each job inside its run record.

The overrides are checked first (:mod:`llmkit.overrides`). Each job then owns its ``out_dir``
(:mod:`llmkit.lock`), has the temporary folders of a killed save removed, and runs inside a run
record (``run.json``, see :mod:`llmkit.runs`); ``resume=auto`` on a run that already completed
says so and leaves it as it is. Under torchrun, rank 0 keeps the record and the lock.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, open_dict

from llmkit import config, display, lock, paths
from llmkit.errors import ConfigError, LlmkitError
from llmkit.overrides import (  # noqa: F401 - re-exported: callers and tests use llmkit.preflight
    _INSPECT_FLAGS,
    CONTROL_KEYS,
    RunControl,
    check_overrides,
    control_argv,
    pop_control,
    replay_argv,
)
from llmkit.recipes import RECIPES


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
    A job holds its folder's lock (:mod:`llmkit.lock`; a single run with ``out_dir=`` takes it before
    Hydra writes there): a second run on the same folder is refused with the holder's PID and command.
    ``resume=auto`` on a run that completed its ``trainer.max_steps`` says so, exits 0 and leaves its
    records as they are.
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
        num = OmegaConf.select(cast(Any, hc), "job.num", default=None, throw_on_missing=False) if multirun else None
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
            if why == [] and done is not None:
                display.console().print(
                    f"job {num}: skipped, {out_dir} holds a completed run of this config "
                    f"({_metric_note(done.get('metrics') or {}, control)}); skip_completed=false runs it again"
                )
                return _job_value(done.get("metrics") or {}, control, out_dir)
            if why:
                display.console().print(
                    f"job {num}: not skipped, {out_dir} holds a completed run of another config: "
                    + "; ".join(why[:5])
                    + (" ..." if len(why) > 5 else "")
                )
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

    def _owned_job(
        out_dir: Path, resolved: Any, control: RunControl, hc: Any, num: Any, multirun: bool, cfg: DictConfig
    ) -> Any:
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
        if took and early is not None:
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
    shown = ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items() if k in ("val_loss", "train_loss") and isinstance(v, (int, float))
    )
    return (
        f"resume=auto: {out_dir} holds a completed run (step {step} of trainer.max_steps={max_steps}"
        f"{'; ' + shown if shown else ''}); nothing to do, its records are unchanged. "
        f"Raise trainer.max_steps to train further."
    )


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
            display.fail(
                LlmkitError(
                    f"This is rank {rank} of {world} (torchrun) and no out_dir= was given: the default, a timestamped "
                    "folder, would differ between ranks. Give every rank the same folder: out_dir=runs/NAME "
                    "(or launch with torchrun --standalone / --rdzv_id ID for outputs/torchrun/ID)."
                )
            )
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
        display.fail(
            LlmkitError(
                f"optimize_metric={control.optimize_metric}: the run in {out_dir} returned no such metric; "
                f"it returned: {', '.join(sorted(metrics)) or 'nothing'}"
            )
        )
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
