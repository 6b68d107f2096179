"""Tables: one run's summary, and the comparison of several runs (rich, CSV, Markdown)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from llmkit.report.load import (
    Run,
    config_differences,
    lower_is_better,
    natural_key,
    param_value,
    swept_params,
)

SORT_KEYS = ("best", "final", "name", "time", "steps")


@dataclass
class Comparison:
    """The comparison of ``runs`` on ``metric``: one row per run, sorted; ``best`` is the winner's name."""

    metric: str
    params: list[str]
    columns: list[str]
    rows: list[dict[str, Any]]  # column -> value (floats stay floats; '' where unknown)
    best: str | None
    runs: list[Run]


def default_metric(runs: list[Run]) -> str:
    names: dict[str, None] = {}
    for run in runs:
        for n in run.metric_names():
            names.setdefault(n, None)
    for preferred in ("val_loss", "eval_loss", "loss", "train_loss"):
        if preferred in names:
            return preferred
    return next(iter(names), "train_loss")


def compare(runs: list[Run], *, metric: str | None = None, sort: str = "best") -> Comparison:
    from llmkit.errors import LlmkitError

    metric = metric or default_metric(runs)
    known = {n for r in runs for n in r.metric_names()}
    if metric not in known:
        raise LlmkitError(f"--metric {metric}: no run logged it; logged metrics: {', '.join(sorted(known)) or 'none'}")
    params = swept_params(runs)
    if not params and len(runs) > 1:
        params = config_differences(runs)
    extra = "train_loss" if metric != "train_loss" and "train_loss" in known else None
    columns = ["run", "status", *params, "steps", f"final {metric}", f"best {metric}", "best step"]
    if extra:
        columns.append(f"final {extra}")
    columns.append("time (s)")
    rows = []
    for run in runs:
        step, best = run.best(metric)
        row: dict[str, Any] = {"run": run.name, "status": run.status}
        for p in params:
            row[p] = param_value(run, p)
        row.update(
            {
                "steps": run.steps if run.steps is not None else "",
                f"final {metric}": _num(run.final(metric)),
                f"best {metric}": _num(best),
                "best step": step if step is not None else "",
            }
        )
        if extra:
            row[f"final {extra}"] = _num(run.final(extra))
        row["time (s)"] = round(run.seconds, 1) if run.seconds is not None else ""
        rows.append(row)

    low = lower_is_better(metric)
    scored = [r for r in rows if isinstance(r[f"best {metric}"], float)]
    best = (min if low else max)(scored, key=lambda r: r[f"best {metric}"])["run"] if scored else None
    rows = sort_rows(rows, sort, metric=metric, params=params)
    order = {r["run"]: i for i, r in enumerate(rows)}
    ordered_runs = sorted(runs, key=lambda r: order[r.name])
    return Comparison(metric=metric, params=params, columns=columns, rows=rows, best=best, runs=ordered_runs)


def sort_rows(rows: list[dict[str, Any]], sort: str, *, metric: str, params: list[str]) -> list[dict[str, Any]]:
    """Sort by ``best``/``final`` (of the metric, best first), ``name``, ``time``, ``steps``,
    a swept parameter, or any column name."""
    from llmkit.errors import LlmkitError

    column = {"best": f"best {metric}", "final": f"final {metric}", "name": "run", "time": "time (s)"}.get(sort, sort)
    if rows and column not in rows[0]:
        if f"final {sort}" in rows[0]:
            column = f"final {sort}"
        else:
            choices = [*SORT_KEYS, *params]
            raise LlmkitError(f"--sort {sort}: not a column; choose one of: {', '.join(choices)}")
    descending = column.startswith(("best ", "final ")) and not lower_is_better(column.split(" ", 1)[1])

    def key(row: dict[str, Any]) -> tuple:
        v = row[column]
        if v == "" or v is None or (isinstance(v, float) and math.isnan(v)):
            return (1, 0, [])  # unknown values last
        if isinstance(v, (int, float)):
            return (0, -v if descending else v, [])
        try:
            return (0, float(v), [])
        except ValueError:
            return (0, 0, natural_key(str(v)))

    return sorted(rows, key=key)


def _num(v: float | None) -> float | str:
    return float(v) if v is not None else ""


def fmt(v: Any, column: str = "") -> str:
    if column == "time (s)" and isinstance(v, (int, float)):
        return f"{v:.1f}"
    if isinstance(v, str) and len(v) > 8 and _is_float_text(v):  # Optuna's lr=0.0018474413627846383
        return f"{float(v):.4g}"
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 100:
            return f"{v:.4f}"
        if 100 <= abs(v) < 1e7:
            return f"{v:.1f}"
        return f"{v:.3e}"
    return str(v)


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_csv(comp: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*comp.columns, "best"])
    for row in comp.rows:
        writer.writerow([_csv_value(row[c]) for c in comp.columns] + [int(row["run"] == comp.best)])
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v


def to_markdown(comp: Comparison) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in comp.columns) + " |",
        "| " + " | ".join("---:" if _numeric_column(comp, c) else "---" for c in comp.columns) + " |",
    ]
    for row in comp.rows:
        cells = [cell(fmt(row[c], c)) for c in comp.columns]
        if row["run"] == comp.best:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _numeric_column(comp: Comparison, column: str) -> bool:
    values = [r[column] for r in comp.rows if r[column] != ""]
    return bool(values) and all(isinstance(v, (int, float)) for v in values)


def rich_table(comp: Comparison, sparklines: dict[str, str] | None = None, spark_metric: str | None = None) -> Any:
    from rich.table import Table

    title = f"{len(comp.rows)} runs by best {comp.metric} ({'lower' if lower_is_better(comp.metric) else 'higher'} is better)"
    table = Table(title=title, title_justify="left", header_style="bold")
    for c in comp.columns:
        table.add_column(c, justify="right" if _numeric_column(comp, c) else "left", no_wrap=c == "run")
    if sparklines:
        table.add_column(f"{spark_metric or comp.metric} curve", no_wrap=True)
    for row in comp.rows:
        cells = [fmt(row[c], c) for c in comp.columns]
        is_best = row["run"] == comp.best
        if is_best:
            cells[0] = f"{cells[0]} *"
        if sparklines:
            cells.append(sparklines.get(row["run"], ""))
        table.add_row(*cells, style="bold green" if is_best else None)
    if comp.best is not None:
        table.caption = f"* best: run {comp.best}"
        table.caption_justify = "left"
    return table


def summary_items(run: Run) -> list[tuple[str, str]]:
    """Facts of one run for its summary: what ran, where, when, on what, how it ended."""
    rec = run.record or {}
    items = [("run", str(run.path)), ("status", run.status)]
    if rec.get("error"):
        items.append(("error", str(rec["error"])))
    if rec.get("argv"):
        import shlex

        items.append(("command", shlex.join(str(a) for a in rec["argv"])))
    if run.params:
        items.append(("overrides", " ".join(f"{k}={v}" for k, v in run.params.items())))
    if rec.get("started"):
        items.append(("started", str(rec["started"])))
    if rec.get("finished"):
        items.append(("finished", str(rec["finished"])))
    if run.seconds is not None:
        items.append(("duration", f"{run.seconds:.1f} s"))
    if run.steps is not None:
        items.append(("steps", str(run.steps)))
    if rec.get("seed") is not None:
        items.append(("seed", str(rec["seed"])))
    git = rec.get("git")
    if isinstance(git, dict) and git.get("commit"):
        items.append(("git", f"{git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}"))
    if rec.get("llmkit_version"):
        items.append(("llmkit", str(rec["llmkit_version"])))
    dev = rec.get("device")
    if isinstance(dev, dict):
        where = (
            ", ".join(dev["cuda"]) if dev.get("cuda") else f"{dev.get('cpu', '?')} ({dev.get('cpu_count', '?')} cores)"
        )
        items.append(("device", where))
    pkgs = rec.get("packages")
    if isinstance(pkgs, dict) and "torch" in pkgs:
        items.append(("torch", str(pkgs["torch"])))
    if rec.get("from_run"):
        items.append(("reproduces", str(rec["from_run"])))
    return items


METRIC_COLUMNS = ["metric", "points", "first", "final", "min", "max"]


def metric_rows(run: Run) -> list[dict[str, Any]]:
    """Per metric of one run: points logged, first and final value, min and max (with their steps)."""
    out = []
    for name in run.metric_names():
        s = [(step, v) for step, v in run.series(name) if math.isfinite(v)]
        lo = min(s, key=lambda p: p[1]) if s else None
        hi = max(s, key=lambda p: p[1]) if s else None
        out.append(
            {
                "metric": name,
                "points": len(s),
                "first": s[0][1] if s else "",
                "final": _num(run.final(name)),
                "min": f"{fmt(lo[1])} @{lo[0]}" if lo else "",
                "max": f"{fmt(hi[1])} @{hi[0]}" if hi else "",
            }
        )
    return out
