"""``llmkit pretrain``: train a Transformer from scratch.

setup (dataset, tokenizer, model, optimizer, schedule, batches) -> fit -> save. Everything the
trainer needs is built here from the config; the trainer itself never sees the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from rich.console import Console

from llmkit import checkpoint, checks, config
from llmkit.data.config import DataConfig
from llmkit.data.loader import RandomWindows
from llmkit.data.pairs import MLMBatches, NSPPairBatches
from llmkit.data.shards import open_dataset
from llmkit.errors import LlmkitError
from llmkit.logger import LoggerConfig
from llmkit.model import ModelConfig, registry
from llmkit.optim import build_optimizer, for_device
from llmkit.recipes import tokenize, training
from llmkit.tokenizer.config import TokenizerConfig
from llmkit.trainer import distributed
from llmkit.trainer.config import TrainerConfig
from llmkit.trainer.trainer import Trainer

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


def _sources_unchanged(dataset: Path) -> bool:
    """Whether every source (file or datasets folder) recorded in the cached dataset's meta.json still has its size and checksum."""
    meta = json.loads((dataset / "meta.json").read_text(encoding="utf-8"))
    from llmkit.data.readers import unchanged

    return all(unchanged(src) for src in meta.get("sources", []))


@dataclass(frozen=True)
class Pretraining:
    """What an objective trains: the model class and the batch builder (the recipe's choice)."""

    model_class: str
    batches: Callable[..., Any]  # (objective, dataset, split, **shape) -> an object with batch / eval_batches
    frozen: tuple[str, ...] = ()  # submodules this objective does not train (kept as initialised or loaded)


def _windows(objective: Any, ds: Any, *, split: str, **kw: Any) -> Any:
    return RandomWindows(ds.split(split), name=split, **kw)


def _mlm(objective: Any, ds: Any, *, split: str, **kw: Any) -> Any:
    return MLMBatches.from_dataset(
        ds,
        split=split,
        masking=objective.masking,
        min_doc_tokens=objective.min_doc_tokens,
        within_documents=objective.windows == "within",
        **kw,
    )


def _nsp(objective: Any, ds: Any, *, split: str, **kw: Any) -> Any:
    return NSPPairBatches.from_dataset(
        ds, split=split, masking=objective.masking, min_doc_tokens=objective.min_doc_tokens, **kw
    )


OBJECTIVES = {  # objective.name -> what it trains on
    "clm": Pretraining("CausalLM", _windows),
    "mlm": Pretraining("MaskedLM", _mlm, frozen=("pooler", "nsp_head")),
    "mlm_nsp": Pretraining("MaskedLM", _nsp),
}


def build_model(model_cfg: ModelConfig, vocab_size: int, model_class: str = "CausalLM") -> torch.nn.Module:
    if model_cfg.vocab_size == 0:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab_size)
    elif model_cfg.vocab_size < vocab_size:
        raise LlmkitError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary ({vocab_size}). "
            "Set model.vocab_size=0 to use the tokenizer's size."
        )
    if model_cfg.causal != (model_class == "CausalLM"):
        want = (
            "a causal model (causal=true), e.g. model=gpt_baby"
            if model_class == "CausalLM"
            else ("an encoder (causal=false), e.g. model=bert_mini")
        )
        raise LlmkitError(
            f"This objective trains a {model_class}, which needs {want}; model={model_cfg.name} has "
            f"causal={str(model_cfg.causal).lower()}."
        )
    return registry.model_class(model_class).from_config(model_cfg)


def run(cfg: Any) -> dict[str, float]:
    c = config.load(cfg, Config)
    checks.require("pretrain", c)  # value ranges (the CLI checks them before Hydra; Python callers here)
    with training.session(c.trainer, seed=c.seed, out_dir=c.out_dir, cfg=cfg) as job:
        return _run(c, job)


def _run(c: Config, job: training.Run) -> dict[str, float]:
    t, dist = c.trainer, job.dist
    job.claim_out_dir(resume=c.resume)
    init_path = None
    if c.init_from:  # the corpus is encoded with the starting checkpoint's own tokenizer
        if c.init_from.startswith("hf:"):
            raise LlmkitError(
                f"init_from={c.init_from}: continued pretraining starts from an llmkit checkpoint; "
                "Hugging Face models are read by finetune/evaluate/generate (init_from=hf:DIR)."
            )
        init_path = checkpoint.resolve(c.init_from)
        c = _with_checkpoint_tokenizer(c, init_path)
    objective = instantiate(c.objective, _convert_="all")
    if getattr(objective, "name", None) not in OBJECTIVES:  # before any tokenizing: a fine-tuning objective
        raise LlmkitError(
            f"objective={getattr(objective, 'name', type(objective).__name__)} is not a pretraining objective "
            f"({', '.join(OBJECTIVES)}); fine-tuning objectives run with llmkit finetune."
        )
    plan = OBJECTIVES[objective.name]
    with distributed.rank_order(dist):  # one rank tokenizes into the cache, the others then read it
        dataset_dir = prepare_dataset(c)
    ds = open_dataset(dataset_dir)
    model = build_model(c.model, ds.tokenizer.vocab_size, plan.model_class).to(job.device)
    for name in plan.frozen:
        getattr(model, name).requires_grad_(False)
    mcfg = ModelConfig.of(model)
    ckpt = job.checkpointer(
        model,
        model_class=plan.model_class,
        tokenizer_dir=Path(dataset_dir) / "tokenizer",
        extra={"dataset_dir": str(Path(dataset_dir).resolve()), "objective": objective.name},
    )
    resume_from = ckpt.resume_weights(c.resume, batch_size=t.batch_size)
    if init_path is not None and resume_from is None:
        _init_weights(model, init_path, job.say)
    if dist.kind == "fsdp":
        dist.wrap(model)  # shards in place: the optimizer must see the sharded (DTensor) parameters
    optimizer = build_optimizer(for_device(c.optim, job.device), model)
    if dist.kind == "fsdp" and not getattr(optimizer, "supports_fsdp", True):
        raise LlmkitError(
            f"optim={type(optimizer).__name__} does not run under trainer=fsdp (Muon orthogonalises whole "
            "matrices; FSDP shards them): use trainer=ddp, or optim=adamw."
        )
    scheduler = instantiate(c.scheduler, optimizer=optimizer, total_steps=t.max_steps, _convert_="all")

    # The global batch (batch_size x world_size) is drawn per step; this rank takes its slice.
    shape = {
        "block_size": mcfg.block_size,
        "batch_size": t.batch_size,
        "seed": c.seed,
        "rank": dist.rank,
        "world_size": dist.world_size,
    }
    train = plan.batches(objective, ds, split="train", **shape)
    val = plan.batches(objective, ds, split="val", **shape)
    job.resolve_precision()
    trainer = Trainer(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        train_batch=train.batch,
        val_batches=lambda: val.eval_batches(t.eval_batches),
        settings=job.settings(flops_per_token=mcfg.flops_per_token(mcfg.block_size)),
        save_checkpoint=ckpt.save,
        loggers=job.loggers(c.logger),
        dist=dist,
    )
    ckpt.restore(trainer, resume_from)

    n_params = sum(p.numel() for p in model.parameters())
    job.say(
        f"pretrain: {mcfg.name} {n_params / 1e6:.2f}M parameters on {job.device}{job.describe_ranks()} "
        f"({job.precision}); {len(ds.train):,} train / {len(ds.val):,} val tokens; peak {job.peak / 1e9:.0f} GFLOP/s "
        f"({job.peak_source}); run dir {job.out_dir}"
    )
    final = job.fit(trainer, command="pretrain")
    job.say(
        f"done: step {trainer.state.step}, val loss {final.get('val_loss', float('nan')):.4f}, "
        f"{trainer.state.train_seconds:.1f}s training; checkpoint {checkpoint.step_dir(job.ckpt_root, trainer.state.step)}"
    )
    return final


def _with_checkpoint_tokenizer(c: Config, path: Path) -> Config:
    """``c`` with ``tokenizer.path`` set to the tokenizer saved in checkpoint ``path`` (refusing another one)."""
    tok_dir = path / "tokenizer"
    if not tok_dir.is_dir():
        raise LlmkitError(
            f"init_from={c.init_from}: {path} has no tokenizer directory; continued pretraining "
            "encodes the new corpus with the checkpoint's own tokenizer."
        )
    if c.tokenizer.path and Path(c.tokenizer.path).resolve() != tok_dir.resolve():
        raise LlmkitError(
            f"init_from={c.init_from} brings its tokenizer ({tok_dir}); tokenizer.path={c.tokenizer.path} "
            "names another one. Leave tokenizer.path unset."
        )
    return dataclasses.replace(c, tokenizer=dataclasses.replace(c.tokenizer, path=str(tok_dir)))


# Model settings that change no weight shape or meaning: a continued run may set them anew.
_FREE_MODEL_KEYS = ("name", "dropout")


def _init_weights(model: torch.nn.Module, path: Path, say: Any) -> None:
    """Load a pretrained checkpoint's weights into a fresh model of the same architecture (step 0,
    new optimizer and schedule: continued pretraining, as litgpt's ``--initial_checkpoint_dir``)."""
    meta = checkpoint.read_meta(path)
    if "task" in meta:
        raise LlmkitError(
            f"init_from: {path} is a fine-tuned {meta['task']} model; continue pretraining from a "
            "pretraining checkpoint."
        )
    theirs, ours = meta["model_config"], ModelConfig.of(model).to_dict()
    diff = [
        f"model.{k}: checkpoint {theirs.get(k)!r} vs this run {ours.get(k)!r}"
        for k in sorted(set(theirs) | set(ours))
        if k not in _FREE_MODEL_KEYS and theirs.get(k) != ours.get(k)
    ]
    if diff:
        raise LlmkitError(
            f"init_from: {path} holds another model than this run builds (" + "; ".join(diff) + "). "
            "Use the checkpoint's model config (its config.yaml)."
        )
    checkpoint.load_weights(model, path)
    say(f"init_from: weights of {path} (step {meta.get('step', '?')}); training starts at step 0")
