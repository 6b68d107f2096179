"""The ``llmkit`` command line: a thin Typer router in front of Hydra.

Each command forwards its extra arguments, untouched, to a ``@hydra.main`` entry point, so
``key=value`` and ``group=option`` overrides, ``-m`` sweeps, ``--cfg job`` and launcher plugins are
all Hydra's. Before handing over, the overrides are checked against the config schema so a typo
gets one message with every problem and the nearest valid key, instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from llmkit import paths
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


def _debug_enabled() -> bool:
    return os.environ.get("LLMKIT_DEBUG", "") not in ("", "0", "false")


def _report(err: BaseException) -> None:
    from rich.console import Console
    from rich.panel import Panel

    Console(stderr=True).print(
        Panel(str(err), title=f"llmkit: {type(err).__name__}", border_style="red", expand=False),
        markup=False,
    )


def _epilog(command: str) -> str:
    from rich.markup import escape

    recipe = RECIPES[command]
    lines = ["[bold]Examples[/bold]"]
    lines += [escape(f"  llmkit {command} {ex}") for ex in recipe.examples]
    lines += ["[bold]Config groups[/bold] (pick one with group=option)"]
    for group, options in paths.config_groups(command).items():
        lines.append(f"  {group}: {', '.join(options)}")
    lines.append(f"Show the composed config: llmkit {command} --cfg job")
    return "\n\n".join(lines)


def dispatch(command: str, argv: list[str]) -> None:
    """Validate the overrides, then run ``command`` through Hydra with ``argv``."""
    from llmkit import preflight

    try:
        preflight.check_overrides(command, argv)
    except LlmkitError as err:
        if _debug_enabled():
            raise
        _report(err)
        raise typer.Exit(2) from None
    preflight.hydra_main(command, argv)


def _make_command(command: str) -> None:
    recipe = RECIPES[command]

    @app.command(
        name=command,
        help=recipe.help, epilog=_epilog(command),
        context_settings=_PASSTHROUGH,
        options_metavar="[--debug] [OVERRIDES]...",
    )
    def _cmd(
        ctx: typer.Context,
        debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also: LLMKIT_DEBUG=1)."),
    ) -> None:
        if debug:
            os.environ["LLMKIT_DEBUG"] = "1"
        dispatch(command, list(ctx.args))


for _name in RECIPES:
    _make_command(_name)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also: LLMKIT_DEBUG=1)."),
) -> None:
    if debug:
        os.environ["LLMKIT_DEBUG"] = "1"


def main() -> None:
    prog = Path(sys.argv[0]).name
    app(prog_name="llmkit" if prog in ("__main__.py", "-m") else prog)
