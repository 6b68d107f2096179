"""Data parallelism through torch.distributed: the process group, DDP / FSDP wrapping, the few
collectives the trainer needs, and checkpoint state under FSDP. llmkit writes no engine of its own.

A run is launched by torchrun (``torchrun --nproc_per_node 8 -m llmkit pretrain trainer=ddp``),
which sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :class:`DistEnv` reads them and is the
single-process default when they are absent. Conventions every rank follows:

- Batches: ``trainer.batch_size`` is the per-rank batch; the *global* batch (batch_size x
  world_size) is drawn from (seed, step, micro) and rank r takes rows [r*B, (r+1)*B) (see
  ``llmkit.data.loader``). W ranks with B/W rows each see what one process with B rows sees.
- Decisions: the logged loss, validation metrics and the stop-signal flag are all-reduced, so every
  rank skips a non-finite step, stops early or stops on a signal at the same step.
- Files: rank 0 owns the run folder (config, metrics, checkpoints); the other ranks write nothing.
  Checkpoint saving is still *called* on every rank, because FSDP's gather is a collective.

DDP (Li et al. 2020) keeps a full replica per rank and all-reduces gradients, overlapped with the
backward pass; ``no_sync`` skips that all-reduce on the non-final micro-steps of gradient
accumulation. FSDP (Zhao et al. 2023) shards parameters, gradients and optimizer state; llmkit uses
FSDP2 (``torch.distributed.fsdp.fully_shard``: one group per Transformer block plus the root), whose
parameters are DTensors, so the optimizer must be built *after* :meth:`DistEnv.wrap` shards the
model. FSDP checkpoints are either a full state dict gathered to rank 0 (``model.safetensors`` +
``state.pt``, the same files as a single-process checkpoint, loadable at any world size) or sharded
with ``torch.distributed.checkpoint`` (each rank writes its own shard into ``<checkpoint>/sharded``,
no gather; resumable under trainer=fsdp at any world size; ``python -m
llmkit.checkpoint.consolidate`` turns it into a full checkpoint for evaluate/generate).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.trainer.optim_state import fqn_to_ids, ids_to_fqn

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

KINDS = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job: its rank, the world size and how the model is wrapped.

    ``DistEnv()`` is a single process (every collective below is then a no-op that returns its input).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    kind: str = "none"  # none | ddp | fsdp (ddp/fsdp with one process run as none)
    backend: str | None = None  # gloo | nccl once the process group is up
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Rank, local rank and world size as torchrun sets them (one process when unset)."""
        env = os.environ if environ is None else environ
        try:
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
            world = int(env.get("WORLD_SIZE", "1"))
        except ValueError as e:
            raise LlmkitError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers (as torchrun sets them): {e}") from None
        if world < 1 or not 0 <= rank < world:
            raise LlmkitError(f"RANK={rank} is not within WORLD_SIZE={world}.")
        return cls(rank=rank, local_rank=local, world_size=world)

    @property
    def enabled(self) -> bool:
        """More than one process: collectives run."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ wrapping
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward pass goes through.

        ddp: a ``DistributedDataParallel`` around ``model`` (same parameters: build the optimizer
        before or after). fsdp: ``model`` itself, sharded in place with ``fully_shard`` (idempotent;
        its parameters become DTensors, so build the optimizer after this call). none: ``model``.
        """
        if not self.enabled or self.kind == "none":
            return model
        if self.kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            if isinstance(model, DDP):
                return model
            ids = [self.device.index] if self.device.type == "cuda" else None
            # llmkit's buffers are constant tables (rope, sinusoids): the per-forward buffer broadcast
            # would be pure overhead (and a collective in evaluation). Newer torch renames the switch.
            no_sync_bufs: dict[str, Any] = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False}
            )
            return DDP(model, device_ids=ids, **no_sync_bufs)
        return shard(model, self.device)

    def no_sync(self, forward_model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """DDP: skip the gradient all-reduce on a non-final micro-step (``last=False``).

        FSDP keeps reducing every micro-step: it keeps gradients sharded, which is what it is for.
        """
        if not last and self.enabled and self.kind == "ddp" and hasattr(forward_model, "no_sync"):
            return cast("DistributedDataParallel", forward_model).no_sync()  # what wrap() made it
        return contextlib.nullcontext()

    def reshard(self, model: nn.Module) -> None:
        """FSDP: shard again what a forward pass without backward (evaluation) left gathered.

        FSDP2 keeps the root's parameters gathered after its forward (the backward needs them at
        once); with no backward they stay gathered, and the module's parameters are then not the
        ones the optimizer holds, which breaks the optimizer state dict and wastes memory.
        """
        if self.enabled and self.kind == "fsdp":
            from torch.distributed.fsdp import FSDPModule

            for m in model.modules():
                if isinstance(m, FSDPModule):
                    m.reshard()

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, values: list[torch.Tensor]) -> list[float]:
        """The sums over ranks of scalar tensors, on the host (one collective, one sync)."""
        if not values:
            return []
        t = torch.stack([v.detach().reshape(()).to(torch.float64) for v in values])
        if self.enabled:
            t = t.to(self._comm_device())
            torch.distributed.all_reduce(t)
        return t.tolist()

    def all_reduce_mean_dict(self, values: dict[str, Any]) -> dict[str, Any]:
        """The numeric entries averaged over ranks (one collective; the key sets must match)."""
        if not self.enabled:
            return values
        keys = sorted(k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        if not keys:
            return values
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        out = dict(values)
        out.update({k: float(v) / self.world_size for k, v in zip(keys, t.tolist())})
        return out

    def any_flag(self, flag: int) -> int:
        """The largest ``flag`` over ranks (0 = unset): a stop signal seen by any rank stops all of them."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (for decisions made once, e.g. precision=auto)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.device.index or 0])
            else:
                torch.distributed.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ gradients
    def clip_grad_norm(self, parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """The global gradient norm as a tensor (no host sync), clipped to ``max_norm`` when > 0;
        the same on every rank. Under FSDP the gradients are DTensor shards and
        ``clip_grad_norm_`` reduces across ranks."""
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return torch.zeros(())
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
        return _full(norm)

    # ------------------------------------------------------------------ checkpoint state
    def model_state_for_save(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """FSDP: the full weights gathered to rank 0 (CPU, one entry per tied group; ``{}`` on other
        ranks). Called on every rank (a collective). Other kinds: None (save the module itself)."""
        if not (self.enabled and self.kind == "fsdp"):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from llmkit.model.state_dict import tied_aliases

        # a full state dict holds plain tensors (the stub's value type covers sharded ones and nesting)
        full = cast(
            dict[str, torch.Tensor],
            get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
        )
        return {k: v for k, v in full.items() if k not in tied_aliases(model)}  # as save_model stores them

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state in the single-process format (integer parameter ids, full tensors).

        FSDP: gathered to rank 0 (collective; other ranks get ``{}``), so a checkpoint saved under
        FSDP resumes at any world size, under any kind.
        """
        if not (self.enabled and self.kind == "fsdp"):
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return fqn_to_ids(full, model, optimizer) if full else {}

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        if not (self.enabled and self.kind == "fsdp"):
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            model, optimizer, ids_to_fqn(state, model, optimizer), options=StateDictOptions(full_state_dict=True)
        )

    def save_sharded(self, model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path) -> None:
        """Every rank writes its shard of the weights and optimizer state into ``directory`` (DCP)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory))

    def load_sharded(self, model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path) -> None:
        """Load a :meth:`save_sharded` directory; DCP re-shards when the world size changed."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}  # what dcp.load fills in place
        dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

    def destroy(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init(
    kind: str = "none",
    *,
    backend: str = "auto",
    device: torch.device | None = None,
    environ: Mapping[str, str] | None = None,
    timeout_min: float = 30.0,
) -> DistEnv:
    """The :class:`DistEnv` of this process; with more than one, the process group is initialised.

    ``backend=auto``: nccl on CUDA, gloo on CPU. The device of a CUDA run becomes ``cuda:LOCAL_RANK``.
    ``kind`` ddp/fsdp with a single process (no torchrun, or ``--nproc_per_node 1``) runs as ``none``.
    """
    if kind not in KINDS:
        raise LlmkitError(f"trainer.distributed={kind!r} is not one of {', '.join(KINDS)}.")
    env = DistEnv.from_env(environ)
    device = device if device is not None else torch.device("cpu")
    if env.world_size == 1:
        return replace(env, kind="none", device=device)
    if kind == "none":
        raise LlmkitError(
            f"This process is rank {env.rank} of {env.world_size} (launched by torchrun), but trainer.distributed=none: "
            "every rank would train its own copy and write the same files. Use trainer=ddp or trainer=fsdp."
        )
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise LlmkitError(
                f"LOCAL_RANK={env.local_rank}, but this node has {torch.cuda.device_count()} GPU(s): "
                "set torchrun --nproc_per_node to at most the number of GPUs."
            )
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise LlmkitError(
            "trainer.backend=nccl needs CUDA GPUs; this run is on the CPU: use trainer.backend=gloo (or auto)."
        )
    if not torch.distributed.is_available():
        raise LlmkitError("This torch build has no torch.distributed; multi-process training is not possible here.")
    if not torch.distributed.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=timeout_min)}
        if backend == "nccl":
            kwargs["device_id"] = device  # eager NCCL init, bound to this rank's GPU
        torch.distributed.init_process_group(**kwargs)
    return replace(env, kind=kind, backend=backend, device=device)


@contextlib.contextmanager
def rank_order(env: DistEnv) -> Iterator[bool]:
    """Run the body on rank 0 first, then on each node's local rank 0, then on everyone else.

    For work that fills a cache every rank then reads (tokenizing a corpus): done once on a shared
    file system, once per node on node-local caches, never by two ranks at the same time. Yields
    whether this rank goes first.
    """
    if not env.enabled:
        yield True
        return
    first = env.rank == 0
    if not first:
        env.barrier()  # rank 0 is done
        if env.local_rank != 0:
            env.barrier()  # the other nodes' local rank 0 are done
    yield first
    if first:
        env.barrier()
        env.barrier()
    elif env.local_rank == 0:
        env.barrier()


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: ``fully_shard`` each Transformer block, then the root (embeddings, final norm, heads)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return model
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    blocks = [m for m in model.modules() if type(m).__name__ == "Block"]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ---------------------------------------------------------------------- resuming across world sizes


def check_resume(saved: Mapping[str, Any] | None, *, batch_size: int, world_size: int, where: str) -> None:
    """Refuse a resume whose global batch differs from the checkpoint's, naming the batch_size to set.

    The batch of step s is drawn per *global* batch (batch_size x world_size) and split across
    ranks, so resuming with the same global batch on another number of ranks continues the same
    batch sequence; with another global batch it would silently train on different data.
    """
    if not saved:
        return
    old_world = int(saved.get("world_size", 1))
    old_global = int(saved.get("global_batch", 0)) or None
    if old_global is None:
        return
    new_global = batch_size * world_size
    if new_global == old_global:
        return
    if old_global % world_size:
        hint = (
            f"{old_global} rows cannot be split evenly across {world_size} rank(s): use a number of ranks that "
            f"divides {old_global}"
        )
    else:
        hint = f"set trainer.batch_size={old_global // world_size} to resume on {world_size} rank(s)"
    raise LlmkitError(
        f"{where} was trained with a global batch of {old_global} (trainer.batch_size={old_global // old_world} x "
        f"{old_world} rank(s)); this run has {new_global} (trainer.batch_size={batch_size} x {world_size} rank(s)). "
        f"Batches are drawn per global batch, so a resumed run must keep it: {hint}."
    )
