"""``llmkit report PATH...``: see and compare runs without a notebook.

One run: a summary (what ran, on what code and machine, how it ended), a table of its metrics with
sparklines, and a PNG of its curves. Several runs (a sweep folder, or several paths): a table of
the parameters that differ against the final and best value of a metric, sorted, with the best run
marked, and overlaid curves. ``--csv``/``--markdown`` write the table, ``--html`` a self-contained
page with the plots embedded. PNGs need matplotlib (optional); without it the terminal shows
sparklines and the HTML the tables.

    load.py    find run folders, read run.json / metrics.jsonl / .hydra/overrides.yaml
    table.py   summary and comparison tables (rich, CSV, Markdown)
    plot.py    matplotlib PNGs, text sparklines
    html.py    the HTML page
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.report.load import Run, load_runs, lower_is_better
from llmkit.report.table import Comparison, compare

__all__ = ["Comparison", "Report", "Run", "compare", "load_runs", "make_report"]


@dataclass
class Report:
    runs: list[Run]
    comparison: Comparison
    plots: list[Path] = field(default_factory=list)
    html: Path | None = None
    csv: Path | None = None
    markdown: Path | None = None


def default_out_dir(paths: Sequence[str | os.PathLike]) -> Path:
    """Where plots go: ``PATH/report`` for one folder, else ``./report``."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]) / "report"
    return Path("report")


def make_report(
    paths: Sequence[str | os.PathLike],
    *,
    metric: str | None = None,
    sort: str = "best",
    csv: str | os.PathLike | None = None,
    markdown: str | os.PathLike | None = None,
    html: str | os.PathLike | None = None,
    plot: bool = True,
    out_dir: str | os.PathLike | None = None,
    console: Any = None,
) -> Report:
    """Load the runs under ``paths``, print their table(s), write the files asked for; '-' = stdout."""
    from rich.console import Console

    from llmkit.report import plot as plots_
    from llmkit.report import table as tables

    to_stdout = str(csv) == "-" or str(markdown) == "-"
    if console is None:
        console = Console(stderr=to_stdout, highlight=False)
        if not console.is_terminal:  # piped or logged: rich's 80-column default would elide the values
            console.width = max(console.width, 200)
    runs = load_runs(paths)
    comp = compare(runs, metric=metric, sort=sort)
    report = Report(runs=runs, comparison=comp)
    sparks: dict[str, str] = {}

    if len(runs) == 1:
        run = runs[0]
        _print_single(console, run)
        for r in tables.metric_rows(run):
            sparks[f"{run.name}/{r['metric']}"] = plots_.sparkline([v for _, v in run.series(r["metric"])])
    else:
        spark_metric = _spark_metric(runs, comp.metric)
        sparks = {r.name: plots_.sparkline([v for _, v in r.series(spark_metric)]) for r in runs}
        table = tables.rich_table(comp, sparks, spark_metric)
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        if natural > console.width:  # a narrow terminal: the numbers before the curves
            table = tables.rich_table(comp, None, spark_metric)
        console.print(table)

    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    scratch = None
    if not plot and html is not None:  # PNGs drawn only to be embedded in the HTML
        scratch = tempfile.TemporaryDirectory(prefix="llmkit-report-")
        out = Path(scratch.name)
    captions: list[tuple[Path, str]] = []
    note = None
    if plot or html is not None:
        if plots_.matplotlib_available():
            captions = _plots(runs, comp, out)
            report.plots = [p for p, _ in captions] if plot else []
        else:
            note = f"matplotlib is not installed, so no PNG plots were drawn: {plots_.MATPLOTLIB_HINT}"
            console.print(f"[yellow]{note}[/yellow]")
    if plot:
        for p in report.plots:
            console.print(f"plot: {p}")

    if csv is not None:
        report.csv = _emit(csv, tables.to_csv(comp))
    if markdown is not None:
        report.markdown = _emit(markdown, tables.to_markdown(comp))
    if html is not None:
        from llmkit.report.html import write_html

        report.html = write_html(
            Path(html),
            runs=runs,
            comparison=comp,
            plots=captions,
            sparklines=sparks,
            sources=[str(p) for p in paths],
            note=note,
        )
        console.print(f"html: {report.html}")
    if scratch is not None:
        scratch.cleanup()
    for path in (report.csv, report.markdown):
        if path is not None:
            console.print(f"table: {path}")
    return report


def _plots(runs: list[Run], comp: Comparison, out: Path) -> list[tuple[Path, str]]:
    from llmkit.report import plot as plots_

    if len(runs) == 1:
        path = plots_.run_plot(runs[0], out / "curves.png")
        return [(path, f"{runs[0].name}: training curves")] if path else []
    labels = {}
    for run in runs:
        params = ", ".join(f"{k}={run.params.get(k, '')}" for k in comp.params if k in run.params)
        labels[run.name] = f"{run.name}: {params}" if params else run.name
    metrics = [comp.metric] + (["train_loss"] if comp.metric != "train_loss" else [])
    path = plots_.compare_plot(comp.runs, metrics, labels, out / "compare.png", best=comp.best)
    what = " and ".join(metrics)
    return (
        [(path, f"{what} of {len(runs)} runs ({'lower' if lower_is_better(comp.metric) else 'higher'} is better)")]
        if path
        else []
    )


def _emit(dest: str | os.PathLike, text: str) -> Path | None:
    if str(dest) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    from llmkit.io import atomic_file

    with atomic_file(dest, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(dest)


def _print_single(console: Any, run: Run) -> None:
    from rich.table import Table

    from llmkit.report import plot as plots_
    from llmkit.report import table as tables

    facts = Table(show_header=False, box=None, title=f"run {run.name}", title_justify="left", title_style="bold")
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column(overflow="fold")
    for k, v in tables.summary_items(run):
        facts.add_row(k, v)
    console.print(facts)
    rows = tables.metric_rows(run)
    if not rows:
        console.print("no metrics logged")
        return
    metrics = Table(header_style="bold")
    for c in (*tables.METRIC_COLUMNS, "curve"):
        metrics.add_column(c, justify="left" if c in ("metric", "curve") else "right", no_wrap=True)
    for r in rows:
        spark = plots_.sparkline([v for _, v in run.series(r["metric"])])
        metrics.add_row(*(tables.fmt(r[c]) for c in tables.METRIC_COLUMNS), spark)
    console.print(metrics)


def _spark_metric(runs: list[Run], metric: str) -> str:
    """The metric for the table's curve column: ``metric``, or train_loss when it has too few points to draw."""
    points = sorted(len(r.series(metric)) for r in runs)
    if points and points[len(points) // 2] < 5 and any(len(r.series("train_loss")) >= 5 for r in runs):
        return "train_loss"
    return metric
