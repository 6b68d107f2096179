"""A self-contained HTML report: inline CSS, tables, and the PNG plots embedded as base64 data."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path

from llmkit.report.load import Run
from llmkit.report.table import (
    METRIC_COLUMNS,
    Comparison,
    fmt,
    metric_rows,
    summary_items,
)

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1d2330; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #dde; }
.meta { color: #667; font-size: .9rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #e4e6ee; text-align: left; }
th { background: #f3f4f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #e5f6e8; font-weight: 600; }
.spark { font-family: ui-monospace, monospace; color: #2b6cb0; letter-spacing: -1px; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e4e6ee; }
figcaption { color: #667; font-size: .85rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; font-size: .9rem; }
dt { color: #667; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
details { margin: .3rem 0; } summary { cursor: pointer; }
.note { background: #fff8e1; padding: .5rem .8rem; border-left: 3px solid #f0b400; }
"""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _table(
    columns: list[str],
    rows: list[dict],
    *,
    best: str | None = None,
    key: str = "run",
    spark: dict[str, str] | None = None,
) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns) + ("<th>curve</th>" if spark else "")
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cls = ' class="num"' if isinstance(v, (int, float)) else ""
            text = html.escape(fmt(v, c)) + (
                " &#9733;" if c == key and best is not None and row.get(key) == best else ""
            )
            cells.append(f"<td{cls}>{text}</td>")
        if spark:
            cells.append(f'<td class="spark">{html.escape(spark.get(str(row.get(key)), ""))}</td>')
        css = ' class="best"' if best is not None and row.get(key) == best else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary(run: Run) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in summary_items(run))
    return f"<dl>{items}</dl>"


def write_html(
    path: Path,
    *,
    runs: list[Run],
    comparison: Comparison,
    plots: list[tuple[Path, str]],
    sparklines: dict[str, str],
    sources: list[str],
    note: str | None = None,
) -> Path:
    """Write the report to ``path``; it needs no other file to display."""
    from llmkit.io import atomic_file

    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>llmkit report: {html.escape(', '.join(sources))}</title><style>{_CSS}</style></head><body>",
        "<h1>llmkit report</h1>",
        f'<p class="meta">{html.escape(", ".join(sources))} &middot; {len(runs)} run(s) &middot; generated {now}</p>',
    ]
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    if len(runs) == 1:
        run = runs[0]
        parts += ["<h2>Run</h2>", _summary(run), "<h2>Metrics</h2>"]
        spark = {r["metric"]: s for r in metric_rows(run) if (s := sparklines.get(f"{run.name}/{r['metric']}"))}
        parts.append(_table(METRIC_COLUMNS, metric_rows(run), key="metric", spark=spark or None))
    else:
        parts += [
            f"<h2>Comparison by best {html.escape(comparison.metric)}</h2>",
            _table(comparison.columns, comparison.rows, best=comparison.best, spark=sparklines or None),
        ]
        if comparison.best is not None:
            parts.append(f'<p class="meta">&#9733; best run: {html.escape(comparison.best)}</p>')
    if plots:
        parts.append("<h2>Curves</h2>")
        parts += [_img(p, caption) for p, caption in plots]
    if len(runs) > 1:
        parts.append("<h2>Runs</h2>")
        for run in comparison.runs:
            parts.append(
                f"<details><summary>{html.escape(run.name)} &middot; {html.escape(run.status)}</summary>"
                f"{_summary(run)}</details>"
            )
    parts.append("</body></html>")
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return Path(path)
