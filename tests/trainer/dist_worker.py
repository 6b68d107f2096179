"""torchrun worker for ``test_objectives_under_torchrun.py``: every objective case of
``tests/_objective_cases.py`` trained by this job's ranks (each with its slice of the global batch)
under DDP, DDP with 2 micro-batches per rank, and FSDP; rank 0 saves the weights and metrics.

    torchrun --standalone --nproc_per_node 2 tests/trainer/dist_worker.py OUT.pt
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _objective_cases

from _objective_cases import MUON, NAMES, train  # noqa: E402

from llmkit.trainer import distributed  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    env = distributed.init("ddp", backend="gloo")
    results = {}
    try:
        for kind, accum in (("ddp", 1), ("ddp", 2), ("fsdp", 1)):
            dist = dataclasses.replace(env, kind=kind)
            for name in NAMES:
                weights, metrics = train(name, grad_accum=accum, dist=dist)
                results[f"{kind}-x{accum}/{name}"] = {"weights": weights, "metrics": metrics}
        for name in ("clm", "mlm_nsp"):  # optim=muon under DDP (Muon refuses FSDP)
            weights, metrics = train(name, dist=dataclasses.replace(env, kind="ddp"), optim=MUON)
            results[f"ddp-x1-muon/{name}"] = {"weights": weights, "metrics": metrics}
        if env.is_main:
            torch.save(results, out)
    finally:
        env.destroy()


if __name__ == "__main__":
    main(sys.argv[1])
