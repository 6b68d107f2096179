"""On resume, metrics.jsonl rows logged after the resumed step are dropped (issue 17)."""

from __future__ import annotations

import json

from llmkit.logger import JSONLLogger, read_jsonl, truncate_metrics


def test_rows_after_the_resumed_step_are_dropped(tmp_path):
    log = JSONLLogger(tmp_path / "metrics.jsonl")
    for step in (5, 10, 15, 20):
        log.log({"train_loss": 1.0 / step}, step)
    log.log({"val_loss": 0.5}, 15)
    log.close()
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 25, "train_lo')  # torn by a SIGKILL
    assert truncate_metrics(tmp_path, 10) == 4
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [5, 10]
    # a replayed run appends after the kept rows: one row per step
    log = JSONLLogger(tmp_path / "metrics.jsonl")
    log.log({"train_loss": 0.1}, 15)
    log.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [5, 10, 15]


def test_nothing_to_drop_leaves_the_file(tmp_path):
    assert truncate_metrics(tmp_path, 3) == 0  # no file
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n")
    mtime = path.stat().st_mtime_ns
    assert truncate_metrics(tmp_path, 3) == 0
    assert path.stat().st_mtime_ns == mtime
