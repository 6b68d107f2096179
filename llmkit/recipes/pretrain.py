"""``llmkit pretrain``: train a Transformer from scratch.

setup (dataset, tokenizer, model, optimizer, schedule, batches) -> fit -> save. Everything the
trainer needs is built here from the config; the trainer itself never sees the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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
from llmkit.optim import build_optimizer
from llmkit.recipes._common import config_yaml, resolve_device, seed_everything, set_threads
from llmkit.tokenizer.config import TokenizerConfig
from llmkit.trainer.config import TrainerConfig
from llmkit.trainer.perf import peak_flops
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


def prepare_dataset(c: Config) -> Path:
    """The tokenized dataset: ``c.dataset``, or a cache entry keyed by the data + tokenizer configs."""
    from llmkit.recipes import tokenize

    if c.dataset:
        return Path(c.dataset)
    spec = {"data": dataclasses.asdict(c.data), "tokenizer": dataclasses.asdict(c.tokenizer), "seed": c.seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(os.path.expanduser(c.cache_dir)) / "datasets" / f"{c.data.name}-{c.tokenizer.kind}-{key}"
    if (path / "meta.json").is_file():
        console.print(f"dataset: cached {path}")
        return path
    console.print(f"dataset: tokenizing {c.data.name} into {path}")
    tokenize.tokenize_corpus(
        tokenize.Config(out_dir=str(path), tokenizer=c.tokenizer, data=c.data, seed=c.seed, data_root=c.data_root)
    )
    return path


MODEL_CLASSES = {"CausalLM": CausalLM, "MaskedLM": MaskedLM}  # objective.model_class -> model


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
    device = resolve_device(c.trainer.device)
    out_dir = Path(c.out_dir)
    ckpt_root = out_dir / "checkpoints"
    if not c.resume and checkpoint.list_checkpoints(ckpt_root):
        raise LlmkitError(
            f"{out_dir} already holds checkpoints of an earlier run; continue it with resume=auto, "
            "or choose another out_dir. Nothing was overwritten."
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    dataset_dir = prepare_dataset(c)
    ds = open_dataset(dataset_dir)
    objective = instantiate(c.objective, _convert_="all")
    model = build_model(c.model, ds.tokenizer.vocab_size, objective.model_class).to(device)
    mcfg = model.config
    optimizer = build_optimizer(c.optim, model)
    scheduler = instantiate(c.scheduler, optimizer=optimizer, total_steps=c.trainer.max_steps, _convert_="all")

    t = c.trainer
    train = objective.make_batches(ds, block_size=mcfg.block_size, batch_size=t.batch_size, seed=c.seed, split="train")
    val = objective.make_batches(ds, block_size=mcfg.block_size, batch_size=t.batch_size, seed=c.seed, split="val")
    peak, peak_source = (t.mfu_peak_flops, "trainer.mfu_peak_flops") if t.mfu_peak_flops else peak_flops(device, t.precision)

    resolved_yaml = config_yaml(cfg)
    (out_dir / "config.yaml").write_text(resolved_yaml, encoding="utf-8")

    def save(trainer: Trainer) -> None:
        checkpoint.save(
            ckpt_root,
            trainer.state.step,
            model=model,
            model_class=objective.model_class,
            model_config=mcfg.to_dict(),
            state=trainer.state_dict(),
            config_yaml=resolved_yaml,
            tokenizer_dir=Path(dataset_dir) / "tokenizer",
            extra={"dataset_dir": str(Path(dataset_dir).resolve()), "objective": objective.name},
            keep_last=t.keep_last,
        )

    loggers = build_loggers(c.logger, out_dir)
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
        precision=t.precision,
        compile=t.compile,
        max_nonfinite=t.max_nonfinite,
        flops_per_token=mcfg.flops_per_token(mcfg.block_size),
        peak_flops=peak,
        progress=t.progress,
    )
    if c.resume:
        _resume(trainer, model, ckpt_root if c.resume == "auto" else Path(c.resume))

    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"pretrain: {mcfg.name} {n_params / 1e6:.2f}M parameters on {device} ({t.precision}); "
        f"{len(ds.train):,} train / {len(ds.val):,} val tokens; peak {peak / 1e9:.0f} GFLOP/s ({peak_source}); "
        f"run dir {out_dir}"
    )
    try:
        final = trainer.fit()
    except Interrupted as stop:
        console.print(f"[yellow]{stop}. Continue with: llmkit pretrain ... out_dir={out_dir} resume=auto")
        raise SystemExit(128 + stop.signum) from None
    finally:
        for logger in loggers:
            logger.close()
    console.print(
        f"done: step {trainer.state.step}, val loss {final.get('val_loss', float('nan')):.4f}, "
        f"{trainer.state.train_seconds:.1f}s training; checkpoint {checkpoint.step_dir(ckpt_root, trainer.state.step)}"
    )
    return final


def _resume(trainer: Trainer, model: torch.nn.Module, where: Path) -> None:
    path = checkpoint.latest_valid(where) if where.name == "checkpoints" else checkpoint.resolve(where)
    if path is None:
        console.print(f"resume=auto: no checkpoint in {where}; starting from step 0")
        return
    meta = checkpoint.read_meta(path)
    if meta["model_config"] != model.config.to_dict():
        raise LlmkitError(f"{path} was trained with another model config; it cannot be resumed with this one.")
    checkpoint.load_weights(model, path)
    trainer.load_state_dict(checkpoint.load_state(path))
    console.print(f"resumed from {path} at step {trainer.state.step}")
