"""The ``llmkit`` command line: a thin Typer router in front of Hydra.

Each command forwards its extra arguments, untouched, to a ``@hydra.main`` entry point, so
``key=value`` and ``group=option`` overrides, ``-m`` sweeps, ``--cfg job`` and launcher plugins are
all Hydra's. Before handing over, the overrides are checked against the config schema so a typo
gets one message with every problem and the nearest valid key, instead of a traceback.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer

from llmkit import display, paths
from llmkit.errors import LlmkitError
from llmkit.recipes import RECIPES

app = typer.Typer(
    name="llmkit",
    help="Build language models from scratch and fine-tune them. "
    "Every command takes Hydra overrides: key=value, group=option, -m for sweeps.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


def _epilog(command: str) -> str:
    from rich.markup import escape

    recipe = RECIPES[command]
    lines = ["[bold]Examples[/bold]"]
    lines += [escape(f"  llmkit {command} {ex}") for ex in recipe.examples]
    groups = paths.config_groups(command)
    if groups:
        lines += ["[bold]Config groups[/bold] (pick one with group=option)"]
    for group, options in groups.items():
        lines.append(f"  {group}: {', '.join(options)}")
    lines.append(f"Show the composed config: llmkit {command} --cfg job")
    return "\n\n".join(lines)


def dispatch(command: str, argv: list[str], *, from_run: Path | None = None) -> None:
    """Validate the overrides, then run ``command`` through Hydra with ``argv``.

    ``from_run``: re-run that recorded run: its overrides first, ``argv``'s replacing them.
    """
    from llmkit import preflight

    own = argv
    try:
        if from_run is not None:
            argv = preflight.replay_argv(command, from_run, argv)
            import shlex

            print(f"--from-run {from_run}: llmkit {command} {shlex.join(argv)}", file=sys.stderr)
        argv = preflight.check_overrides(command, argv)
    except LlmkitError as err:
        if display.debug_enabled():
            raise
        display.report(err)
        raise typer.Exit(2) from None
    preflight.hydra_main(command, argv, from_run=from_run, own_argv=own)


def _make_command(command: str) -> None:
    recipe = RECIPES[command]

    @app.command(
        name=command,
        help=recipe.help,
        epilog=_epilog(command),
        context_settings=_PASSTHROUGH,
        options_metavar="[--debug] [OVERRIDES]...",
    )
    def _cmd(
        ctx: typer.Context,
        debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also: LLMKIT_DEBUG=1)."),
        from_run: Path | None = typer.Option(
            None,
            "--from-run",
            metavar="RUN_DIR",
            help="Re-run a recorded run with its exact overrides (RUN_DIR/.hydra/overrides.yaml); overrides given "
            "here replace its own; a new out_dir unless given.",
        ),
    ) -> None:
        if debug:
            os.environ["LLMKIT_DEBUG"] = "1"
        dispatch(command, list(ctx.args), from_run=from_run)


for _name in RECIPES:
    _make_command(_name)


_REPORT_EPILOG = """[bold]Examples[/bold]

  llmkit report runs/shakespeare                    # one run: summary, metrics, curves.png

  llmkit report runs/sweep --sort best --html runs/sweep/report.html

  llmkit report runs/a runs/b --metric train_loss --markdown -

A run folder holds run.json and metrics.jsonl; a sweep folder (llmkit ... -m out_dir=DIR) holds run folders."""


@app.command(
    name="report",
    help="Summarise one run, or compare several (a sweep folder, or several paths): "
    "tables, curve plots (PNG), CSV/Markdown, a self-contained HTML page.",
    epilog=_REPORT_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def report(
    paths_: list[Path] = typer.Argument(..., metavar="PATH", help="Run folders or sweep folders."),
    metric: str | None = typer.Option(
        None, "--metric", "-M", help="The metric to compare and plot (default: val_loss when logged, else train_loss)."
    ),
    sort: str = typer.Option(
        "best",
        "--sort",
        help="Order of the table: best | final (of --metric, best first) | name | time | steps | "
        "a swept parameter or a metric.",
    ),
    csv: Path | None = typer.Option(None, "--csv", metavar="FILE", help="Also write the table as CSV ('-': stdout)."),
    markdown: Path | None = typer.Option(
        None, "--markdown", metavar="FILE", help="Also write the table as Markdown ('-': stdout)."
    ),
    html: Path | None = typer.Option(None, "--html", metavar="FILE", help="Write a self-contained HTML report."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no PNG files (the terminal shows sparklines)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="DIR",
        help="Folder for the PNG plots (default: PATH/report for one PATH, else ./report).",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also: LLMKIT_DEBUG=1)."),
) -> None:
    if debug:
        os.environ["LLMKIT_DEBUG"] = "1"
    from llmkit.report import make_report

    try:
        make_report(
            paths_, metric=metric, sort=sort, csv=csv, markdown=markdown, html=html, plot=not no_plot, out_dir=out
        )
    except LlmkitError as err:
        if display.debug_enabled():
            raise
        display.report(err)
        raise typer.Exit(2) from None


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also: LLMKIT_DEBUG=1)."),
) -> None:
    if debug:
        os.environ["LLMKIT_DEBUG"] = "1"


def _short_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings as one line for the user (the source line and location only with --debug)."""
    return f"warning: {message}\n"


def main() -> None:
    if not display.debug_enabled():
        warnings.formatwarning = _short_warning
    prog = Path(sys.argv[0]).name
    app(prog_name="llmkit" if prog in ("__main__.py", "-m") else prog)
