"""Curves: PNG plots with matplotlib (an optional dependency) and text sparklines for the terminal.

matplotlib is used through its object API (``Figure`` + the Agg canvas), never ``pyplot``, so a
report changes no global backend state of the process that calls it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from llmkit.report.load import Run, lower_is_better

BARS = "▁▂▃▄▅▆▇█"
MATPLOTLIB_HINT = "pip install matplotlib (or: pip install 'llmkit[report]')"

# Panels of a one-run plot, in order, when logged: loss curves together, then the rest.
_PANELS = (
    ("loss", ("train_loss", "val_loss")),
    ("learning rate", ("lr",)),
    ("grad norm", ("grad_norm",)),
    ("tokens/s", ("tokens_per_s",)),
)


def matplotlib_available() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def sparkline(values: list[float], width: int = 24) -> str:
    """``[3, 2, 1.5, 1.2]`` -> ``'█▄▂▁'``: the curve resampled to ``width`` bars (bucket means)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return ""
    if len(values) > width:
        n = len(values)
        buckets = [values[i * n // width : (i + 1) * n // width] for i in range(width)]
        values = [sum(b) / len(b) for b in buckets if b]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return BARS[(len(BARS) - 1) // 2] * len(values)
    return "".join(BARS[round((v - lo) / (hi - lo) * (len(BARS) - 1))] for v in values)


def _figure(n_panels: int, *, width: float = 6.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 if n_panels == 1 else 2
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols * 0.85 if cols > 1 else width, 3.6 * rows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _style(ax, title: str, ylabel: str, *, log: bool = False) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if log:
        ax.set_yscale("log")


def run_plot(run: Run, path: Path) -> Path | None:
    """One run's curves: losses (train and val together), learning rate, grad norm, tokens/s."""
    panels = [(title, [m for m in names if run.series(m)]) for title, names in _PANELS]
    panels = [(t, ms) for t, ms in panels if ms]
    shown = {m for _, ms in panels for m in ms}
    redundant = {"mfu", "ms_per_step"} | {m for m in run.metric_names() if m.endswith("_ppl")}  # shown in other terms
    others = [m for m in run.metric_names() if m not in shown | redundant and len(run.series(m)) > 1]
    panels += [(m, [m]) for m in others[: max(0, 6 - len(panels))]]
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (title, metrics) in zip(axes, panels):
        for m in metrics:
            s = run.series(m)
            marker = "o" if len(s) < 30 else None
            ax.plot([p[0] for p in s], [p[1] for p in s], label=m, marker=marker, markersize=3, linewidth=1.4)
        _style(ax, title, title)
        if len(metrics) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"{run.name}  ({run.status})", fontsize=12)
    return _save(fig, path)


def compare_plot(
    runs: list[Run], metrics: list[str], labels: dict[str, str], path: Path, *, best: str | None = None
) -> Path | None:
    """Overlaid curves of ``metrics`` (one panel each) for ``runs``, labelled by their swept parameters."""
    metrics = [m for m in metrics if any(r.series(m) for r in runs)]
    if not metrics:
        return None
    fig, axes = _figure(len(metrics), width=7.2)
    cmap = _colors(len(runs))
    handles = []
    for i, (ax, m) in enumerate(zip(axes, metrics)):
        for color, run in zip(cmap, runs):
            s = run.series(m)
            if not s:
                continue
            is_best = run.name == best
            (line,) = ax.plot(
                [p[0] for p in s],
                [p[1] for p in s],
                color=color,
                linewidth=2.6 if is_best else 1.3,
                marker="o" if len(s) < 30 else None,
                markersize=3,
                zorder=3 if is_best else 2,
                label=labels.get(run.name, run.name) + ("  (best)" if is_best else ""),
            )
            if i == 0:
                handles.append(line)
        _style(ax, m, m, log=lower_is_better(m) and _spans_decade(runs, m))
    # one legend for all panels, below them: it never hides a curve
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 2 if len(metrics) == 1 else 3),
        fontsize=8,
        frameon=False,
    )
    return _save(fig, path)


def _spans_decade(runs: list[Run], metric: str) -> bool:
    vals = [v for r in runs for _, v in r.series(metric) if v > 0]
    return bool(vals) and max(vals) / min(vals) > 10


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]


def _save(fig, path: Path) -> Path:
    from llmkit.io import atomic_file

    path = Path(path)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png")
    return path
