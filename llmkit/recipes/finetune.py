"""``llmkit finetune``: adapt a pretrained model to a task.

setup (pretrained model + tokenizer, task data, task model, strategy, optimizer) -> fit with
early stopping on a validation metric -> the best checkpoint in ``out_dir/best``. Tasks:
``seq_cls`` (sentence / sentence-pair classification), ``token_cls`` (NER on CoNLL files) and
``sft`` (instruction / sequence-to-sequence generation, loss on the response only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from rich.console import Console

from llmkit import checkpoint, config
from llmkit.data.config import DataConfig
from llmkit.data.task_batches import ExampleBatches, eval_batches, epochs_to_steps
from llmkit.errors import LlmkitError
from llmkit.finetune.config import GenerationEvalConfig
from llmkit.finetune.pretrained import build_task_model, load_pretrained
from llmkit.finetune.strategy import FinetuneConfig, apply_strategy
from llmkit.finetune.strategy import build_optimizer as build_task_optimizer
from llmkit.finetune.tasks import encode_task, label_set, load_task_data, task_metrics
from llmkit.logger import LoggerConfig, build_loggers
from llmkit.optim import for_device
from llmkit.recipes._common import config_yaml, resolve_device, seed_everything, set_threads
from llmkit.trainer import cpu, distributed
from llmkit.trainer.config import TrainerConfig
from llmkit.trainer.trainer import EarlyStopping, Interrupted, Trainer

console = Console(stderr=True)

DEFAULT_METRIC = {"seq_cls": ("val_accuracy", "max"), "token_cls": ("val_f1", "max"), "sft": ("val_loss", "min")}


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    metric: str = "auto"  # auto: val_accuracy (seq_cls), val_f1 (token_cls), val_loss (sft)
    mode: str = "auto"  # min | max | auto
    patience: int = 3  # evaluations without improvement before stopping
    min_delta: float = 0.0


@dataclass
class Config:
    out_dir: str
    init_from: str  # an llmkit checkpoint or run directory, or hf:DIR
    data: DataConfig = field(default_factory=DataConfig)
    objective: dict = config.target()
    optim: dict = config.target("params")
    scheduler: dict = config.target("optimizer", "total_steps")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    generation: GenerationEvalConfig = field(default_factory=GenerationEvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    epochs: float = 3.0  # > 0: trainer.max_steps = epochs x steps per epoch
    max_len: int = 128  # tokens per example (truncated beyond)
    group_by_length: bool = False  # batches of similar lengths (less padding; Hugging Face's group_by_length)
    dropout: float | None = None  # override the pretrained model's dropout
    labels: list[str] = field(default_factory=list)  # the label set; empty = every label of the training data
    seed: int = 1337
    data_root: str = "data"


def run(cfg: Any) -> dict[str, float]:
    c = config.load(cfg, Config)
    seed_everything(c.seed)
    set_threads(c.trainer.threads)
    if c.trainer.distributed == "fsdp" and distributed.DistEnv.from_env().enabled:
        raise LlmkitError("trainer=fsdp is for pretraining; fine-tune on several GPUs with trainer=ddp.")
    # Under torchrun: DDP over the process group (batch_size per rank, examples split across ranks).
    dist = distributed.init(c.trainer.distributed, backend=c.trainer.backend, device=resolve_device(c.trainer.device))
    try:
        return _run(c, cfg, dist)
    finally:
        dist.destroy()


def _run(c: Config, cfg: Any, dist: distributed.DistEnv) -> dict[str, float]:
    device = dist.device
    say = console.print if dist.is_main else (lambda *a, **k: None)  # rank 0 speaks for the job
    out_dir = Path(c.out_dir)
    if checkpoint.list_checkpoints(out_dir / "checkpoints") or (out_dir / "best").exists():
        raise LlmkitError(f"{out_dir} already holds checkpoints of an earlier run; choose another out_dir.")
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    objective = instantiate(c.objective, _convert_="all")
    task = objective.task
    template = getattr(objective, "prompt_template", "")
    pre = load_pretrained(c.init_from)
    tokenizer = pre.tokenizer
    encoder = not pre.config.causal
    train_rows = load_task_data(task, c.data, "train")
    eval_rows = load_task_data(task, c.data, "eval")
    labels = label_set(task, train_rows, c.labels) if task != "sft" else []
    max_len = min(c.max_len, pre.config.block_size)
    train = encode_task(task, train_rows, tokenizer, labels, max_len=max_len, encoder=encoder, template=template,
                   source=str(c.data.train_path))
    val = encode_task(task, eval_rows, tokenizer, labels, max_len=max_len, encoder=encoder, template=template,
                 source=str(c.data.eval_path))

    model = build_task_model(task, pre, num_labels=len(labels), dropout=c.dropout).to(device)
    report = apply_strategy(model, c.finetune)
    optimizer = build_task_optimizer(for_device(c.optim, device), model, layerwise_lr_decay=c.finetune.layerwise_lr_decay)
    t = c.trainer
    batches = ExampleBatches(train, batch_size=t.batch_size, seed=c.seed, pad_id=tokenizer.pad_id, grad_accum=t.grad_accum,
                             rank=dist.rank, world_size=dist.world_size, group_by_length=c.group_by_length)
    max_steps = epochs_to_steps(c.epochs, batches.steps_per_epoch) if c.epochs > 0 else t.max_steps
    eval_every = t.eval_every or batches.steps_per_epoch
    scheduler = instantiate(c.scheduler, optimizer=optimizer, total_steps=max_steps, _convert_="all")

    def eval_fn() -> dict[str, float]:
        flat, _ = task_metrics(task, model, tokenizer, val, eval_rows, labels, batch_size=t.batch_size * 2,
                               template=template, generation=c.generation, max_generate=c.generation.max_examples)
        return {f"val_{k}": v for k, v in flat.items()}

    es = None
    if c.early_stopping.enabled:
        metric, mode = DEFAULT_METRIC[task]
        es = EarlyStopping(
            metric=metric if c.early_stopping.metric == "auto" else c.early_stopping.metric,
            mode=mode if c.early_stopping.mode == "auto" else c.early_stopping.mode,
            patience=c.early_stopping.patience,
            min_delta=c.early_stopping.min_delta,
        )

    precision = t.precision
    if dist.is_main:  # precision=auto measures the CPU once; every rank then uses rank 0's choice
        precision = cpu.resolve_precision(t.precision, device, say=console.print)[0]
    precision = dist.broadcast_object(precision)
    resolved_yaml = config_yaml(cfg)
    if dist.is_main:
        (out_dir / "config.yaml").write_text(resolved_yaml, encoding="utf-8")
    extra = {"task": task, "labels": labels, "max_len": max_len, "prompt_template": template,
             "init_from": c.init_from, "strategy": c.finetune.strategy}
    if c.finetune.strategy == "lora":
        extra["base"] = str(Path(pre.source).resolve()) if not pre.source.startswith("hf:") else pre.source
        extra["lora"] = {"rank": c.finetune.lora_rank, "alpha": c.finetune.lora_alpha, "targets": c.finetune.lora_targets}

    def save(trainer: Trainer, name: str | None = None) -> None:
        """Called on every rank; rank 0 writes, then all wait (DDP replicas are identical)."""
        if not dist.is_main:
            dist.barrier()
            return
        tensors = None
        if c.finetune.strategy == "lora":  # adapters + head only; the base is referenced, not copied
            tensors = {n: p for n, p in model.named_parameters() if p.requires_grad}
        checkpoint.save(
            out_dir if name else out_dir / "checkpoints",
            trainer.state.step,
            model=model,
            model_class=type(model).__name__,
            model_config=model.config.to_dict(),
            state=trainer.state_dict() if name is None else {"trainer": dataclasses.asdict(trainer.state)},
            config_yaml=resolved_yaml,
            tokenizer_dir=None,
            extra=extra,
            keep_last=0 if name else t.keep_last,
            tensors=tensors,
            name=name,
        )
        tok_dir = (out_dir / name if name else checkpoint.step_dir(out_dir / "checkpoints", trainer.state.step)) / "tokenizer"
        tokenizer.save(tok_dir)
        dist.barrier()

    loggers = build_loggers(c.logger, out_dir) if dist.is_main else []
    trainer = Trainer(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        train_batch=batches.batch,
        val_batches=lambda: eval_batches(val, batch_size=t.batch_size * 2, pad_id=tokenizer.pad_id),
        max_steps=max_steps,
        grad_accum=t.grad_accum,
        grad_clip=t.grad_clip,
        eval_every=eval_every,
        save_every=t.save_every,
        log_every=t.log_every,
        save_checkpoint=save,
        eval_fn=eval_fn,
        early_stopping=es,
        save_best=lambda tr: save(tr, "best"),
        loggers=loggers,
        device=device,
        precision=precision,
        compile=t.compile,
        max_nonfinite=t.max_nonfinite,
        progress=t.progress,
        dist=dist,
    )
    say(
        f"finetune: {task} from {pre.source} ({pre.model_class}); {report.trainable:,} of {report.total:,} parameters "
        f"trainable ({100 * report.fraction:.2f}%, {c.finetune.strategy}); {len(train):,} train / {len(val):,} eval "
        f"examples; {max_steps} steps ({batches.steps_per_epoch}/epoch); run dir {out_dir}"
    )
    try:
        final = trainer.fit()
    except Interrupted as stop:
        say(f"[yellow]{stop}.")
        raise SystemExit(128 + stop.signum) from None
    finally:
        for logger in loggers:
            logger.close()
    if es is None:
        save(trainer, "best")
    best = trainer.state.best_metric
    say(
        f"done: step {trainer.state.step}; best {es.metric if es else 'final'} "
        f"{best if best is not None else float('nan'):.4f} at step {trainer.state.best_step}; best checkpoint {out_dir / 'best'}"
    )
    return {**final, "trainable_params": report.trainable, "trainable_fraction": report.fraction,
            **({"best_" + es.metric: best} if es and best is not None else {})}
