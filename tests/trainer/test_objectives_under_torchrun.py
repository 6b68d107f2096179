"""Every objective under torchrun: 2 gloo ranks with B/2 rows each give the weights one process
with B rows gives, under DDP (also with 2 micro-batches per rank) and FSDP.

The cases (tiny float64 models, batches whose slices hold different numbers of targets) are
``tests/_objective_cases.py``; ``dist_worker.py`` trains them under torchrun in one job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cli import REPO
from _objective_cases import MUON, NAMES, train

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "results.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DEBUG",)}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp-x1", "ddp-x2", "fsdp-x1"])
@pytest.mark.parametrize("name", NAMES)
def test_two_ranks_of_half_the_batch_make_the_step_of_one_process(two_ranks, layout, name):
    one, m1 = train(name)
    got = two_ranks[f"{layout}/{name}"]
    two, m2 = got["weights"], got["metrics"]
    assert set(two) <= set(one) and len(two) >= len(one) - 2  # FSDP leaves tied aliases out
    for k in two:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-10, msg=k)
    for key in ("train_loss", "grad_norm", "val_loss"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-9), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clm", "mlm_nsp"])
def test_muon_under_ddp_makes_the_step_of_one_process(two_ranks, name):
    one, m1 = train(name, optim=MUON)
    got = two_ranks[f"ddp-x1-muon/{name}"]
    # Newton-Schulz runs in bf16: equal up to a bf16 rounding flip of the orthogonalised update
    frozen, _ = train(name, optim={**MUON, "lr": 0.0, "adamw_lr": 0.0})
    moved = [k for k in one if not torch.equal(one[k], frozen[k])]
    assert any(k.startswith("transformer.h.") for k in moved), "Muon moved no block matrix"
    for k in got["weights"]:
        torch.testing.assert_close(got["weights"][k], one[k], rtol=0, atol=1e-6, msg=k)
    assert got["metrics"]["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-6)
