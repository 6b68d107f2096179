"""Attention heat maps: the PNG grid and the self-contained HTML page (its data read back)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from llmkit.errors import LlmkitError
from llmkit.report import attention as maps


def _weights(L: int, H: int, T: int, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).random((L, H, T, T))
    return w / w.sum(-1, keepdims=True)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_html_holds_every_layer_and_head_and_the_tokens(tmp_path):
    tokens = ["<b>", "</script>", " ", "\n", "é"]  # markup, a script end, whitespace, non-ASCII
    a = maps.AttentionMap("first", tokens, _weights(2, 3, 5), generated_from=3)
    b = maps.AttentionMap("second", ["x", "y"], _weights(1, 2, 2, seed=1))
    path = maps.write_html([a, b], tmp_path / "page.html", title="t <&>")
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # self-contained
    assert "<title>t &lt;&amp;&gt;</title>" in text
    data = maps.read_page_data(text)
    assert [d["title"] for d in data] == ["first", "second"]
    assert data[0]["tokens"] == tokens and data[0]["generated_from"] == 3 and data[1]["generated_from"] is None
    for d, m in zip(data, (a, b), strict=True):
        got = np.asarray(d["weights"]) / maps.SCALE
        assert got.shape == m.weights.shape
        np.testing.assert_allclose(got, m.weights, rtol=0, atol=0.5 / maps.SCALE)


@pytest.mark.slow  # matplotlib's first import and render: ~9 s on a loaded 2-core machine
def test_png_is_a_grid_of_layers_by_heads(tmp_path):
    small = maps.write_png(maps.AttentionMap("a", list("abcd"), _weights(1, 2, 4)), tmp_path / "small.png")
    tall = maps.write_png(maps.AttentionMap("b", list("abcd"), _weights(3, 2, 4)), tmp_path / "tall.png")
    (w1, h1), (w2, h2) = _png_size(small), _png_size(tall)
    assert w1 == w2 and h2 > 2 * h1  # three rows of panels instead of one


def test_weights_that_do_not_fit_the_tokens_are_refused():
    with pytest.raises(ValueError, match="do not fit 3 tokens"):
        maps.AttentionMap("x", list("abc"), _weights(1, 1, 4))


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(maps, "matplotlib_available", lambda: False)
    with pytest.raises(LlmkitError, match=r"pip install matplotlib.*png=false"):
        maps.require_matplotlib()


def test_whitespace_tokens_are_visible():
    assert maps.visible_token(" a\n") == "␣a↵"
    assert maps.visible_token("") == "∅"
