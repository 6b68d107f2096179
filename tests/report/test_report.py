"""``llmkit report`` on hand-made run folders with known curves: tables, sorting, PNG, HTML.

The run folders are written the way llmkit writes them (run.json, metrics.jsonl,
.hydra/overrides.yaml); tests/recipes/test_sweep_report.py does the same on real runs.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from llmkit.errors import LlmkitError
from llmkit.report import compare, load_runs, make_report
from llmkit.report.plot import sparkline

# job -> (lr, n_layer, val_loss curve at steps 10, 20, 30, status)
JOBS = {
    0: ("1e-4", "2", [4.0, 3.8, 3.7], "completed"),
    1: ("1e-4", "4", [3.9, 3.5, 3.1], "completed"),  # lowest *final* val_loss
    2: ("3e-3", "2", [3.2, 2.9, 3.3], "completed"),  # lowest *best* val_loss (step 20), then diverges
    3: ("3e-3", "4", [], "failed"),  # died before its first eval
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run: Path, overrides: list[str], val: list[float], status: str, *, host: str | None = None,
               pid: int | None = None) -> None:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = []
    for i, v in enumerate(val):
        step = 10 * (i + 1)
        rows.append({"step": step - 5, "time": 0.0, "train_loss": v + 0.3, "lr": 1e-3})
        rows.append({"step": step, "time": 0.0, "train_loss": v + 0.2, "lr": 1e-3, "val_loss": v})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {
        "command": "pretrain", "argv": ["llmkit", "pretrain", *overrides], "status": status,
        "error": "RuntimeError: boom" if status == "failed" else None, "seconds": 12.5, "seed": 1337,
        "metrics": {"val_loss": val[-1], "train_loss": val[-1] + 0.2} if val else {},
        "git": {"commit": "a" * 40, "dirty": True}, "device": {"cpu": "Test CPU", "cpu_count": 2},
        "overrides": overrides, "host": host or "elsewhere", "pid": pid,
        "config": {"optim": {"lr": float(overrides[0].split("=")[1])}, "out_dir": str(run)},
    }
    (run / "run.json").write_text(json.dumps(record))


@pytest.fixture()
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for job, (lr, n_layer, val, status) in JOBS.items():
        _write_run(root / str(job), [f"optim.lr={lr}", f"model.n_layer={n_layer}", "trainer.max_steps=30",
                                     f"out_dir={root}"], val, status)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def _console() -> Console:
    return Console(record=True, width=220, force_terminal=False)


def test_loads_every_job_of_a_sweep_in_numeric_order(sweep):
    shutil.copytree(sweep / "3", sweep / "10")
    runs = load_runs([sweep])
    assert [r.name for r in runs] == ["0", "1", "2", "3", "10"]
    assert runs[1].params == {"optim.lr": "1e-4", "model.n_layer": "4", "trainer.max_steps": "30"}
    assert runs[2].series("val_loss") == [(10, 3.2), (20, 2.9), (30, 3.3)]
    assert runs[2].best("val_loss") == (20, 2.9) and runs[2].final("val_loss") == 3.3
    # a run folder inside: (checkpoints/, report/ and .hydra/ are never runs)
    (sweep / "0" / "checkpoints" / "step_1").mkdir(parents=True)
    (sweep / "0" / "checkpoints" / "step_1" / "metrics.jsonl").write_text("{}\n")
    assert len(load_runs([sweep])) == 5
    assert [r.name for r in load_runs([sweep / "1"])] == ["sweep/1"]
    assert [r.name for r in load_runs([sweep / "1" / "run.json", sweep / "2"])] == ["1", "2"]


def test_table_picks_the_best_run_and_sorts(sweep):
    comp = compare(load_runs([sweep]))
    assert comp.metric == "val_loss"
    assert comp.params == ["optim.lr", "model.n_layer"]  # only what differs between the jobs
    assert comp.best == "2"  # best val_loss 2.9 at step 20, though its final (3.3) is not the lowest
    assert [r["run"] for r in comp.rows] == ["2", "1", "0", "3"]  # the failed run, without a value, last
    assert [r["run"] for r in compare(load_runs([sweep]), sort="final").rows] == ["1", "2", "0", "3"]
    assert [r["run"] for r in compare(load_runs([sweep]), sort="model.n_layer").rows][:2] in (["0", "2"], ["2", "0"])
    assert [r["run"] for r in compare(load_runs([sweep]), sort="name").rows] == ["0", "1", "2", "3"]
    tl = compare(load_runs([sweep]), metric="train_loss")
    assert tl.best == "2" and tl.rows[0]["best train_loss"] == pytest.approx(3.1)
    with pytest.raises(LlmkitError, match="--metric accuracy: no run logged it; logged metrics: lr, train_loss"):
        compare(load_runs([sweep]), metric="accuracy")
    with pytest.raises(LlmkitError, match="--sort color: not a column"):
        compare(load_runs([sweep]), sort="color")


def test_csv_and_markdown_tables(sweep, tmp_path):
    out = tmp_path / "t.csv"
    make_report([sweep], csv=out, markdown=tmp_path / "t.md", plot=False, console=_console())
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["run"] for r in rows] == ["2", "1", "0", "3"]
    assert rows[0]["best"] == "1" and float(rows[0]["best val_loss"]) == 2.9 and rows[0]["optim.lr"] == "3e-3"
    assert rows[3]["status"] == "failed" and rows[3]["final val_loss"] == ""
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0].startswith("| run | status | optim.lr | model.n_layer | steps | final val_loss | best val_loss |")
    assert md[2].startswith("| **2** (best) | completed | 3e-3 | 2 | 30 | 3.3000 | 2.9000 | 20 |")


def test_terminal_table_marks_the_best_run(sweep, tmp_path):
    console = _console()
    report = make_report([sweep], out_dir=tmp_path / "plots", plot=False, console=console)
    text = console.export_text()
    assert "4 runs by best val_loss (lower is better)" in text
    assert re.search(r"│ 2 \* +│ completed │ 3e-3 +│ 2 ", text)
    assert "* best: run 2" in text and "failed" in text
    assert report.plots == [] and not (tmp_path / "plots").exists()


def test_a_narrow_terminal_keeps_the_numbers_and_drops_the_curves(sweep, tmp_path):
    wide, narrow = _console(), Console(record=True, width=110, force_terminal=False)
    make_report([sweep], plot=False, console=wide)
    make_report([sweep], plot=False, console=narrow)
    assert "loss curve" in wide.export_text()
    text = narrow.export_text()
    assert "loss curve" not in text and "3.3000" in text and "completed" in text
    assert re.search(r"│ 2 \* +│ completed │ 3e-3 +│ 2 ", text)


def test_single_run_summary(sweep):
    console = _console()
    make_report([sweep / "2"], plot=False, console=console)
    text = console.export_text()
    assert "run sweep/2" in text and "aaaaaaaaaaaa (dirty)" in text and "Test CPU (2 cores)" in text
    assert re.search(r"val_loss +│ +3 │ +3\.2000 │ +3\.3000 │ +2\.9000 @20 │ +3\.3000 @30 │ ", text)


def test_a_run_whose_process_is_gone_is_shown_as_died(tmp_path):
    proc = subprocess.Popen(["true"])  # a finished child: its pid names no process now
    proc.wait()
    _write_run(tmp_path / "r", ["optim.lr=1"], [1.0], "running", host=socket.gethostname(), pid=proc.pid)
    assert load_runs([tmp_path / "r"])[0].status == "died"
    _write_run(tmp_path / "s", ["optim.lr=1"], [1.0], "running", host=socket.gethostname(), pid=os.getpid())
    assert load_runs([tmp_path / "s"])[0].status == "running"


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(LlmkitError, match="no runs found"):
        load_runs([tmp_path])
    with pytest.raises(LlmkitError, match="no such file or folder"):
        load_runs([tmp_path / "nope"])


def test_sparkline():
    assert sparkline([3.0, 2.0, 1.0, 0.0]) == "█▆▃▁"
    assert sparkline([0.0, float("nan"), 7.0]) == "▁█"
    assert sparkline([1.0] * 3) == "▄▄▄"
    assert len(sparkline([float(i) for i in range(1000)], width=24)) == 24
    assert sparkline([]) == ""


def test_without_matplotlib_the_terminal_gets_sparklines(sweep, tmp_path, monkeypatch):
    from llmkit.report import plot

    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    console = _console()
    report = make_report([sweep], out_dir=tmp_path / "plots", html=tmp_path / "r.html", console=console)
    text = console.export_text()
    assert "matplotlib is not installed" in text and "pip install" in text
    assert "▁" in text and report.plots == [] and not (tmp_path / "plots").exists()
    page = (tmp_path / "r.html").read_text()
    assert "matplotlib is not installed" in page and "<img" not in page and "<table>" in page


def _decode_png(path: Path):
    from matplotlib import image

    data = Path(path).read_bytes()
    assert data.startswith(PNG_MAGIC)
    return image.imread(io.BytesIO(data), format="png")


def test_png_plots_are_valid_images(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    report = make_report([sweep], out_dir=tmp_path / "plots", console=_console())
    assert report.plots == [tmp_path / "plots" / "compare.png"]
    img = _decode_png(report.plots[0])
    h, w = img.shape[:2]
    assert 300 < h < 2000 and 600 < w < 3000
    assert img[..., :3].std() > 0.05  # not a blank canvas
    one = make_report([sweep / "1"], console=_console())
    assert one.plots == [sweep / "1" / "report" / "curves.png"]
    assert _decode_png(one.plots[0]).shape[0] > 300


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_html_is_self_contained_and_renders_in_a_headless_browser(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    report = make_report([sweep], html=page, out_dir=tmp_path / "plots", console=_console())
    text = page.read_text()
    srcs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing to fetch
    embedded = base64.b64decode(srcs[0].split(",", 1)[1])
    assert embedded == report.plots[0].read_bytes()
    assert '<tr class="best"><td>2 &#9733;</td>' in text

    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here: apt-get install chromium")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1200",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    img = _decode_png(shot)[..., :3]
    # the embedded plot was decoded and drawn: its curves' tab10 colours are on the page
    def pixels(rgb: tuple[int, int, int]) -> int:
        return int(((abs(img - [c / 255 for c in rgb]) < 0.02).all(axis=-1)).sum())

    assert pixels((0x1F, 0x77, 0xB4)) > 200 and pixels((0xFF, 0x7F, 0x0E)) > 200  # tab10 blue and orange
