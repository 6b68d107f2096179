"""PredictionWriter: streamed JSONL/text lines, written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmkit.metric import PredictionWriter


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "out" / "predictions.jsonl"
    with PredictionWriter(path) as w:
        w.write({"id": 0, "pred": "Mädchen", "label": torch.tensor(3), "probs": torch.tensor([0.5, 0.25])})
        w.write_many({"id": i, "pred": np.int64(i), "tags": ("B-PER", "O")} for i in range(1, 4))
        assert not path.exists()  # only the temporary sibling exists while writing
    assert w.count == 4
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "Mädchen" in lines[0]  # UTF-8, not \\u escapes
    recs = [json.loads(ln) for ln in lines]
    assert recs[0] == {"id": 0, "pred": "Mädchen", "label": 3, "probs": [0.5, 0.25]}
    assert recs[3] == {"id": 3, "pred": 3, "tags": ["B-PER", "O"]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.jsonl"]


def test_txt_one_line_per_prediction(tmp_path):
    path = tmp_path / "hyp.txt"
    with PredictionWriter(path, fmt="txt") as w:
        w.write_many(["Ein Hund.", "zwei\nZeilen", ""])
        with pytest.raises(TypeError, match="writes strings"):
            w.write({"a": 1})
    assert path.read_text(encoding="utf-8") == "Ein Hund.\nzwei Zeilen\n\n"


def test_failure_leaves_no_file_and_keeps_old_one(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"), PredictionWriter(path) as w:
        w.write({"id": 0})
        raise RuntimeError("boom")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]


def test_misuse(tmp_path):
    with pytest.raises(ValueError, match="unknown predictions format"):
        PredictionWriter(tmp_path / "x", fmt="csv")
    w = PredictionWriter(tmp_path / "x.jsonl")
    with pytest.raises(RuntimeError, match="outside"):
        w.write({})
    with pytest.raises(TypeError, match="cannot write"), PredictionWriter(tmp_path / "y.jsonl") as w:
        w.write({"x": object()})
    assert not (tmp_path / "y.jsonl").exists()
