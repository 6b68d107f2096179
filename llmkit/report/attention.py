"""Attention heat maps: one PNG per text (a grid of layers x heads), one self-contained HTML page.

Rows are queries, columns keys, the tokens label both axes; weights are drawn on a fixed 0..1
scale (square-root colour ramp, so weak but real weights stay visible). The HTML page carries its
data inline (a JSON ``<script>`` block, weights in ten-thousandths) and its own script and style:
no network. A reader picks the text, layer and head (or clicks a thumbnail) and sees the weight
of each cell on hover. PNGs need matplotlib (the ``report`` extra), through its object API.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import LlmkitError
from llmkit.report.plot import MATPLOTLIB_HINT, matplotlib_available

SCALE = 10_000  # HTML weights are integers: round(weight * SCALE)
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


@dataclass
class AttentionMap:
    """The attention of one text: ``weights`` (n_layer, n_head, T, T), row t = query t's weights over the keys."""

    title: str
    tokens: list[str]
    weights: np.ndarray
    generated_from: int | None = None  # first generated token (a line marks where the prompt ends)

    def __post_init__(self) -> None:
        if self.weights.ndim != 4 or self.weights.shape[2:] != (len(self.tokens),) * 2:
            raise ValueError(f"weights {self.weights.shape} do not fit {len(self.tokens)} tokens")


def visible_token(piece: str) -> str:
    """A token as a label: whitespace made visible, so that a space or newline token can be seen."""
    return "".join(_VISIBLE.get(ch, ch) for ch in piece) or "∅"


def require_matplotlib() -> None:
    if not matplotlib_available():
        raise LlmkitError(f"Attention PNGs need matplotlib: {MATPLOTLIB_HINT}; or png=false for the HTML page only.")


# ---------------------------------------------------------------------------- PNG


def write_png(amap: AttentionMap, path: str | Path) -> Path:
    """A grid of heat maps, a row per layer and a column per head, tokens on both axes of each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    n_layer, n_head, T, _ = amap.weights.shape
    panel = min(max(2.2, 0.13 * T), 7.0)  # inches per heat map
    step = max(1, math.ceil(T / 64))  # long texts: label every step-th token
    fontsize = max(3.0, min(8.0, 0.75 * panel * 72 / math.ceil(T / step)))
    fig = Figure(figsize=(panel * n_head + 1.2, panel * n_layer + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_layer, n_head, squeeze=False)
    labels = [visible_token(t) for t in amap.tokens][::step]
    ticks = list(range(0, T, step))
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(amap.weights[layer, head], cmap="Blues", norm=norm, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=9)
            ax.set_xticks(ticks, labels, rotation=90, fontsize=fontsize)
            ax.set_yticks(ticks, labels, fontsize=fontsize)
            ax.tick_params(length=0, pad=1)
            if amap.generated_from is not None:
                for line in (ax.axhline, ax.axvline):
                    line(amap.generated_from - 0.5, color="tab:red", linewidth=0.6, linestyle="--")
            if layer == n_layer - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
            if head == 0:
                ax.set_ylabel("query", fontsize=8)
    fig.colorbar(
        ScalarMappable(norm=norm, cmap="Blues"), ax=axes, shrink=min(0.6, 4.0 / n_layer + 0.1), label="attention weight"
    )
    fig.suptitle(amap.title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------- HTML


def page_data(maps: list[AttentionMap]) -> list[dict]:
    """What the HTML page embeds: per text its title, tokens and integer weights [layer][head][query][key]."""
    return [
        {
            "title": m.title,
            "tokens": list(m.tokens),
            "generated_from": m.generated_from,
            "weights": np.rint(np.asarray(m.weights, dtype=np.float64) * SCALE).astype(np.int64).tolist(),
        }
        for m in maps
    ]


def read_page_data(text: str) -> list[dict]:
    """The data block of a page written by :func:`write_html` (for tests and tools)."""
    start = text.index('<script type="application/json" id="attention-data">')
    start = text.index(">", start) + 1
    return json.loads(text[start : text.index("</script>", start)])


def write_html(maps: list[AttentionMap], path: str | Path, *, title: str) -> Path:
    # "</" inside a <script> block would end it: JSON allows the escaped "<\/".
    data = json.dumps(page_data(maps), ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.replace("@TITLE@", html.escape(title)).replace("@DATA@", data).replace("@SCALE@", str(SCALE))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>@TITLE@</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
label { margin-right: 1em; }
#thumbs { display: flex; flex-wrap: wrap; gap: 6px; margin: 0.8em 0; }
#thumbs canvas { border: 2px solid #ddd; cursor: pointer; image-rendering: pixelated; }
#thumbs canvas.on { border-color: #c33; }
table.map { border-collapse: collapse; font-size: 11px; }
table.map td { width: 14px; height: 14px; padding: 0; }
table.map th { font-weight: normal; padding: 0 3px; white-space: pre; }
table.map thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
table.map tbody th { text-align: right; }
.gen { color: #c33; }
#hover { min-height: 1.4em; font-family: monospace; }
</style></head><body>
<h2>@TITLE@</h2>
<p>Rows: queries; columns: the keys they attend to; darker = more weight (square-root scale).
Red tokens were generated.</p>
<div><label>text <select id="text"></select></label>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label></div>
<h3 id="caption"></h3>
<div id="thumbs"></div>
<div id="hover"></div>
<table class="map" id="map"></table>
<script type="application/json" id="attention-data">@DATA@</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("attention-data").textContent);
const SCALE = @SCALE@;
const $ = (id) => document.getElementById(id);
const shade = (w) => { const s = Math.sqrt(w / SCALE);
  return `rgb(${Math.round(255 - 247 * s)},${Math.round(255 - 207 * s)},${Math.round(255 - 148 * s)})`; };
const show = (t) => t.replace(/ /g, "\\u2423").replace(/\\n/g, "\\u21b5").replace(/\\t/g, "\\u21e5") || "\\u2205";
function options(select, n, prefix) {
  select.innerHTML = "";
  for (let i = 0; i < n; i++) { const o = document.createElement("option"); o.value = i;
    o.textContent = prefix ? `${prefix} ${i}` : DATA[i].title; select.appendChild(o); }
}
function thumbs(d, layer) {
  const box = $("thumbs"); box.innerHTML = "";
  const T = d.tokens.length, px = Math.max(1, Math.floor(96 / T));
  d.weights[layer].forEach((w, h) => {
    const c = document.createElement("canvas"); c.width = T; c.height = T;
    c.style.width = c.style.height = `${T * px}px`; c.title = `layer ${layer} head ${h}`;
    const g = c.getContext("2d");
    w.forEach((row, q) => row.forEach((v, k) => { g.fillStyle = shade(v); g.fillRect(k, q, 1, 1); }));
    if (h === +$("head").value) c.className = "on";
    c.onclick = () => { $("head").value = h; draw(); };
    box.appendChild(c);
  });
}
function draw() {
  const d = DATA[+$("text").value], layer = +$("layer").value, head = +$("head").value;
  $("caption").textContent = `${d.title}: layer ${layer}, head ${head}`;
  thumbs(d, layer);
  const gen = (i) => d.generated_from !== null && i >= d.generated_from ? "gen" : "";
  const table = $("map"); table.innerHTML = "";
  const top = table.createTHead().insertRow(); top.appendChild(document.createElement("th"));
  d.tokens.forEach((t, k) => { const th = document.createElement("th"); th.textContent = show(t);
    th.className = gen(k); top.appendChild(th); });
  const body = table.createTBody();
  d.weights[layer][head].forEach((row, q) => {
    const tr = body.insertRow(); const th = document.createElement("th");
    th.textContent = show(d.tokens[q]); th.className = gen(q); tr.appendChild(th);
    row.forEach((v, k) => { const td = tr.insertCell(); td.style.background = shade(v);
      td.onmouseenter = () => { $("hover").textContent =
        `query ${q} "${show(d.tokens[q])}" -> key ${k} "${show(d.tokens[k])}": ${(v / SCALE).toFixed(4)}`; }; });
  });
}
function pickText() {
  const d = DATA[+$("text").value];
  options($("layer"), d.weights.length, "layer"); options($("head"), d.weights[0].length, "head"); draw();
}
options($("text"), DATA.length, null);
$("text").onchange = pickText; $("layer").onchange = draw; $("head").onchange = draw;
pickText();
</script></body></html>
"""

__all__ = ["SCALE", "AttentionMap", "read_page_data", "require_matplotlib", "visible_token", "write_html", "write_png"]
