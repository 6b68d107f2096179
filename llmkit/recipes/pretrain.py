"""``llmkit pretrain``: train a Transformer from scratch.

setup (dataset, tokenizer, model, optimizer, schedule, batches) -> fit -> save. Everything the
trainer needs is built here from the config; the trainer itself never sees the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from rich.console import Console

from llmkit import checkpoint, config
from llmkit.data.config import DataConfig
from llmkit.errors import LlmkitError
from llmkit.logger import LoggerConfig, build_loggers
from llmkit.model import CausalLM, MaskedLM, ModelConfig
from llmkit.optim import build_optimizer, for_device
from llmkit.recipes._common import config_yaml, resolve_device, seed_everything, set_threads
from llmkit.tokenizer.config import TokenizerConfig
from llmkit.trainer import cpu, distributed
from llmkit.trainer.config import TrainerConfig
from llmkit.trainer.perf import peak_flops, set_tf32
from llmkit.trainer.trainer import Interrupted, Trainer

console = Console(stderr=True)


@dataclass
class Config:
    out_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: dict = config.target()
    optim: dict = config.target("params")
    scheduler: dict = config.target("optimizer", "total_steps")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1337
    data_root: str = "data"
    dataset: str | None = None
    cache_dir: str = "~/.cache/llmkit"
    resume: str | None = None
    init_from: str | None = None  # continued pretraining: start from this checkpoint's weights and tokenizer


def prepare_dataset(c: Config) -> Path:
    """The tokenized dataset: ``c.dataset``, or a cache entry keyed by the data + tokenizer configs."""
    from llmkit.recipes import tokenize

    if c.dataset:
        return Path(c.dataset)
    spec = {"data": dataclasses.asdict(c.data), "tokenizer": dataclasses.asdict(c.tokenizer), "seed": c.seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(os.path.expanduser(c.cache_dir)) / "datasets" / f"{c.data.name}-{c.tokenizer.kind}-{key}"
    if (path / "meta.json").is_file():
        if _sources_unchanged(path):
            console.print(f"dataset: cached {path}")
            return path
        console.print(f"dataset: a source file changed since {path} was written; tokenizing again")
    console.print(f"dataset: tokenizing {c.data.name} into {path}")
    tokenize.tokenize_corpus(
        tokenize.Config(out_dir=str(path), tokenizer=c.tokenizer, data=c.data, seed=c.seed, data_root=c.data_root)
    )
    return path


MODEL_CLASSES = {"CausalLM": CausalLM, "MaskedLM": MaskedLM}  # objective.model_class -> model


def _sources_unchanged(dataset: Path) -> bool:
    """Whether every source file recorded in the cached dataset's meta.json still has its size and checksum."""
    from llmkit.io import sha256_file

    meta = json.loads((dataset / "meta.json").read_text(encoding="utf-8"))
    for src in meta.get("sources", []):
        path = Path(src.get("path", ""))
        if not path.is_file() or path.stat().st_size != src.get("bytes") or sha256_file(path) != src.get("sha256"):
            return False
    return True


def build_model(model_cfg: ModelConfig, vocab_size: int, model_class: str = "CausalLM") -> torch.nn.Module:
    if model_cfg.vocab_size == 0:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab_size)
    elif model_cfg.vocab_size < vocab_size:
        raise LlmkitError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary ({vocab_size}). "
            "Set model.vocab_size=0 to use the tokenizer's size."
        )
    if model_cfg.causal != (model_class == "CausalLM"):
        want = "a causal model (causal=true), e.g. model=gpt_baby" if model_class == "CausalLM" else (
            "an encoder (causal=false), e.g. model=bert_mini")
        raise LlmkitError(f"This objective trains a {model_class}, which needs {want}; model={model_cfg.name} has "
                          f"causal={str(model_cfg.causal).lower()}.")
    return MODEL_CLASSES[model_class].from_config(model_cfg)


def run(cfg: Any) -> dict[str, float]:
    c = config.load(cfg, Config)
    from llmkit.data.shards import open_dataset

    seed_everything(c.seed)
    set_threads(c.trainer.threads)
    t = c.trainer
    # Under torchrun: the process group (nccl on cuda:LOCAL_RANK, gloo on the CPU); else one process.
    dist = distributed.init(t.distributed, backend=t.backend, device=resolve_device(t.device))
    try:
        return _run(c, cfg, dist, open_dataset)
    finally:
        dist.destroy()


def _run(c: Config, cfg: Any, dist: distributed.DistEnv, open_dataset: Any) -> dict[str, float]:
    t = c.trainer
    device = dist.device
    say = console.print if dist.is_main else (lambda *a, **k: None)  # rank 0 speaks for the job
    if device.type == "cuda":
        set_tf32(t.tf32)
    out_dir = Path(c.out_dir)
    ckpt_root = out_dir / "checkpoints"
    if not c.resume and checkpoint.list_checkpoints(ckpt_root):
        raise LlmkitError(
            f"{out_dir} already holds checkpoints of an earlier run; continue it with resume=auto, "
            "or choose another out_dir. Nothing was overwritten."
        )
    init_path = None
    if c.init_from:  # the corpus is encoded with the starting checkpoint's own tokenizer
        if c.init_from.startswith("hf:"):
            raise LlmkitError(f"init_from={c.init_from}: continued pretraining starts from an llmkit checkpoint; "
                              "Hugging Face models are read by finetune/evaluate/generate (init_from=hf:DIR).")
        init_path = checkpoint.resolve(c.init_from)
        c = _with_checkpoint_tokenizer(c, init_path)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    with distributed.rank_order(dist):  # one rank tokenizes into the cache, the others then read it
        dataset_dir = prepare_dataset(c)
    ds = open_dataset(dataset_dir)
    objective = instantiate(c.objective, _convert_="all")
    model = build_model(c.model, ds.tokenizer.vocab_size, objective.model_class).to(device)
    mcfg = model.config
    resume_from = _resume_weights(model, c, ckpt_root, dist, say) if c.resume else None
    if init_path is not None and resume_from is None:
        _init_weights(model, init_path, say)
    if dist.kind == "fsdp":
        dist.wrap(model)  # shards in place: the optimizer must see the sharded (DTensor) parameters
    optimizer = build_optimizer(for_device(c.optim, device), model)
    scheduler = instantiate(c.scheduler, optimizer=optimizer, total_steps=c.trainer.max_steps, _convert_="all")

    # The global batch (batch_size x world_size) is drawn per step; this rank takes its slice.
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    train = objective.make_batches(ds, block_size=mcfg.block_size, batch_size=t.batch_size, seed=c.seed, split="train",
                                   **shard)
    val = objective.make_batches(ds, block_size=mcfg.block_size, batch_size=t.batch_size, seed=c.seed, split="val",
                                 **shard)
    precision, cpu_peak = t.precision, None
    if dist.is_main:  # decided once (precision=auto measures the CPU), then the same on every rank
        precision, choice = cpu.resolve_precision(t.precision, device, say=console.print)
        cpu_peak = choice.peak_flops() if choice is not None else None
    precision, cpu_peak = dist.broadcast_object((precision, cpu_peak))
    if dist.enabled and dist.kind == "fsdp" and precision == "fp16":
        raise LlmkitError("trainer=fsdp trains in bf16 or fp32 (fp16 would need a sharded gradient scaler): "
                          "use trainer.precision=bf16.")
    if t.mfu_peak_flops:
        peak, peak_source = t.mfu_peak_flops, "trainer.mfu_peak_flops"
    elif cpu_peak:
        peak, peak_source = cpu_peak, f"measured {precision} matmul on cpu"
    else:
        peak, peak_source = peak_flops(device, precision)

    resolved_yaml = config_yaml(cfg)
    if dist.is_main:
        (out_dir / "config.yaml").write_text(resolved_yaml, encoding="utf-8")
    sharded = dist.enabled and dist.kind == "fsdp" and t.fsdp_state_dict == "sharded"
    layout = {"kind": dist.kind, "world_size": dist.world_size, "batch_size": t.batch_size,
              "global_batch": t.batch_size * dist.world_size, "state_dict": "sharded" if sharded else "full"}

    def save(trainer: Trainer) -> None:
        """Called on every rank (FSDP gathers are collectives); rank 0 writes, then all wait."""
        step = trainer.state.step
        shard_tmp = ckpt_root / f".sharded-{checkpoint.step_dir(ckpt_root, step).name}"
        if sharded:  # each rank writes its own shard into a folder the checkpoint then takes in
            if dist.is_main:
                shutil.rmtree(shard_tmp, ignore_errors=True)
            dist.barrier()
            dist.save_sharded(model, optimizer, shard_tmp)
            dist.barrier()
        state = trainer.state_dict(optimizer=not sharded)
        tensors = None if sharded else dist.model_state_for_save(model)  # FSDP full: gathered to rank 0
        if dist.is_main:
            checkpoint.save(
                ckpt_root,
                step,
                model=model,
                model_class=objective.model_class,
                model_config=mcfg.to_dict(),
                state=state,
                config_yaml=resolved_yaml,
                tokenizer_dir=Path(dataset_dir) / "tokenizer",
                extra={"dataset_dir": str(Path(dataset_dir).resolve()), "objective": objective.name,
                       "distributed": layout},
                keep_last=t.keep_last,
                tensors=tensors,
                sharded_dir=shard_tmp if sharded else None,
            )
        dist.barrier()

    loggers = build_loggers(c.logger, out_dir) if dist.is_main else []
    trainer = Trainer(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        train_batch=train.batch,
        val_batches=lambda: val.eval_batches(t.eval_batches),
        max_steps=t.max_steps,
        grad_accum=t.grad_accum,
        grad_clip=t.grad_clip,
        eval_every=t.eval_every,
        save_every=t.save_every,
        log_every=t.log_every,
        save_checkpoint=save,
        loggers=loggers,
        device=device,
        precision=precision,
        compile=t.compile,
        max_nonfinite=t.max_nonfinite,
        flops_per_token=mcfg.flops_per_token(mcfg.block_size),
        peak_flops=peak,
        progress=t.progress,
        dist=dist,
    )
    if resume_from is not None:
        _resume_state(trainer, resume_from, dist, say)

    n_params = sum(p.numel() for p in model.parameters())
    ranks = f" x {dist.world_size} ranks ({dist.kind}, {dist.backend})" if dist.enabled else ""
    say(
        f"pretrain: {mcfg.name} {n_params / 1e6:.2f}M parameters on {device}{ranks} ({precision}); "
        f"{len(ds.train):,} train / {len(ds.val):,} val tokens; peak {peak / 1e9:.0f} GFLOP/s ({peak_source}); "
        f"run dir {out_dir}"
    )
    try:
        final = trainer.fit()
    except Interrupted as stop:
        say(f"[yellow]{stop}. Continue with: llmkit pretrain ... out_dir={out_dir} resume=auto")
        raise SystemExit(128 + stop.signum) from None
    finally:
        for logger in loggers:
            logger.close()
    say(
        f"done: step {trainer.state.step}, val loss {final.get('val_loss', float('nan')):.4f}, "
        f"{trainer.state.train_seconds:.1f}s training; checkpoint {checkpoint.step_dir(ckpt_root, trainer.state.step)}"
    )
    return final


def _resume_weights(model: torch.nn.Module, c: Config, ckpt_root: Path, dist: distributed.DistEnv,
                    say: Any) -> Path | None:
    """Pick the checkpoint to resume, check it fits this run, and load its full weights into the
    (not yet wrapped) model; a sharded checkpoint's weights are loaded later, with the optimizer."""
    where = ckpt_root if c.resume == "auto" else Path(c.resume)
    path = checkpoint.latest_valid(where) if where.name == "checkpoints" else checkpoint.resolve(where)
    if path is None:
        say(f"resume=auto: no checkpoint in {where}; starting from step 0")
        return None
    meta = checkpoint.read_meta(path)
    if meta["model_config"] != model.config.to_dict():
        raise LlmkitError(f"{path} was trained with another model config; it cannot be resumed with this one.")
    distributed.check_resume(meta.get("distributed") or _single_process_layout(path), batch_size=c.trainer.batch_size,
                             world_size=dist.world_size, where=str(path))
    if not (path / distributed.SHARDED_DIR).is_dir():
        checkpoint.load_weights(model, path)
    return path


def _with_checkpoint_tokenizer(c: Config, path: Path) -> Config:
    """``c`` with ``tokenizer.path`` set to the tokenizer saved in checkpoint ``path`` (refusing another one)."""
    tok_dir = path / "tokenizer"
    if not tok_dir.is_dir():
        raise LlmkitError(f"init_from={c.init_from}: {path} has no tokenizer directory; continued pretraining "
                          "encodes the new corpus with the checkpoint's own tokenizer.")
    if c.tokenizer.path and Path(c.tokenizer.path).resolve() != tok_dir.resolve():
        raise LlmkitError(f"init_from={c.init_from} brings its tokenizer ({tok_dir}); tokenizer.path={c.tokenizer.path} "
                          "names another one. Leave tokenizer.path unset.")
    return dataclasses.replace(c, tokenizer=dataclasses.replace(c.tokenizer, path=str(tok_dir)))


# Model settings that change no weight shape or meaning: a continued run may set them anew.
_FREE_MODEL_KEYS = ("name", "dropout")


def _init_weights(model: torch.nn.Module, path: Path, say: Any) -> None:
    """Load a pretrained checkpoint's weights into a fresh model of the same architecture (step 0,
    new optimizer and schedule: continued pretraining, as litgpt's ``--initial_checkpoint_dir``)."""
    meta = checkpoint.read_meta(path)
    if "task" in meta:
        raise LlmkitError(f"init_from: {path} is a fine-tuned {meta['task']} model; continue pretraining from a "
                          "pretraining checkpoint.")
    theirs, ours = meta["model_config"], model.config.to_dict()
    diff = [f"model.{k}: checkpoint {theirs.get(k)!r} vs this run {ours.get(k)!r}"
            for k in sorted(set(theirs) | set(ours)) if k not in _FREE_MODEL_KEYS and theirs.get(k) != ours.get(k)]
    if diff:
        raise LlmkitError(f"init_from: {path} holds another model than this run builds (" + "; ".join(diff) + "). "
                          "Use the checkpoint's model config (its config.yaml).")
    checkpoint.load_weights(model, path)
    say(f"init_from: weights of {path} (step {meta.get('step', '?')}); training starts at step 0")


def _single_process_layout(path: Path) -> dict[str, int] | None:
    """A checkpoint written before distributed training was recorded: one rank, its config's batch."""
    try:
        return {"world_size": 1, "global_batch": int(checkpoint.saved_config(path)["trainer"]["batch_size"])}
    except (KeyError, TypeError, ValueError):
        return None


def _resume_state(trainer: Trainer, path: Path, dist: distributed.DistEnv, say: Any) -> None:
    if (path / distributed.SHARDED_DIR).is_dir():  # weights + optimizer from the per-rank shards
        dist.load_sharded(trainer.model, trainer.optimizer, path / distributed.SHARDED_DIR)
    trainer.load_state_dict(checkpoint.load_state(path))
    say(f"resumed from {path} at step {trainer.state.step}")
