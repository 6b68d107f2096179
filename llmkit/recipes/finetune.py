"""``llmkit finetune``: adapt a pretrained model to a task.

setup (pretrained model + tokenizer, task data, task model, strategy, optimizer) -> fit with
early stopping on a validation metric -> the best checkpoint in ``out_dir/best``. Tasks:
``seq_cls`` (sentence / sentence-pair classification), ``token_cls`` (NER on CoNLL files) and
``sft`` (instruction / sequence-to-sequence generation, loss on the response only) and ``qa``
(extractive question answering on SQuAD JSON: an encoder predicts the answer's span).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from rich.console import Console

from llmkit import checks, config
from llmkit.data.chat_template import resolve_template
from llmkit.data.config import DataConfig
from llmkit.data.packing import fill_ratio, pack_examples
from llmkit.data.task_batches import ExampleBatches, epochs_to_steps, eval_batches
from llmkit.errors import ConfigError
from llmkit.finetune.config import GenerationEvalConfig
from llmkit.finetune.pretrained import build_task_model, load_pretrained
from llmkit.finetune.strategy import FinetuneConfig, apply_strategy
from llmkit.finetune.strategy import build_optimizer as build_task_optimizer
from llmkit.finetune.tasks import encode_task, label_set, load_task_data, qa_decoding, task_metrics
from llmkit.logger import LoggerConfig
from llmkit.model import ModelConfig
from llmkit.optim import for_device
from llmkit.recipes import training
from llmkit.trainer.config import TrainerConfig
from llmkit.trainer.trainer import EarlyStopping, Trainer

console = Console(stderr=True)

DEFAULT_METRIC = {"seq_cls": ("val_accuracy", "max"), "token_cls": ("val_f1", "max"), "sft": ("val_loss", "min"),
                  "qa": ("val_f1", "max")}  # fmt: skip


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    metric: str = "auto"  # auto: val_accuracy (seq_cls), val_f1 (token_cls, qa), val_loss (sft)
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
    resume: str | None = None  # auto: continue from the newest checkpoint in out_dir/checkpoints | a checkpoint


def run(cfg: Any) -> dict[str, float]:
    c = config.load(cfg, Config)
    checks.require("finetune", c)  # value ranges (the CLI checks them before Hydra; Python callers here)
    with training.session(c.trainer, seed=c.seed, out_dir=c.out_dir, cfg=cfg) as job:
        return _run(c, job)


def _run(c: Config, job: training.Run) -> dict[str, float]:
    t, dist, device = c.trainer, job.dist, job.device
    job.claim_out_dir(resume=c.resume, also=("best",))

    objective = instantiate(c.objective, _convert_="all")
    task = objective.task
    if c.data.packing and task != "sft":
        raise ConfigError([f"data.packing=true packs generation examples (objective=sft); this run is {task}"])
    pre = load_pretrained(c.init_from)
    tokenizer = pre.tokenizer
    template = None
    if task == "sft":  # every conversation through one chat template (llmkit.data.chat_template)
        template = resolve_template(
            objective.chat_template, tokenizer, data_format=c.data.format, prompt_template=objective.prompt_template
        )
    encoder = not pre.config.causal
    train_rows = load_task_data(task, c.data, "train")
    eval_rows = load_task_data(task, c.data, "eval")
    labels = label_set(task, train_rows, c.labels) if task != "sft" else []
    max_len = min(c.max_len, pre.config.block_size)
    train = encode_task(
        task,
        train_rows,
        tokenizer,
        labels,
        max_len=max_len,
        encoder=encoder,
        template=template,
        source=str(c.data.train_path),
        doc_stride=c.data.doc_stride,
    )
    val = encode_task(
        task,
        eval_rows,
        tokenizer,
        labels,
        max_len=max_len,
        encoder=encoder,
        template=template,
        source=str(c.data.eval_path),
        doc_stride=c.data.doc_stride,
    )

    packing_note = ""
    if c.data.packing:
        unpacked = len(train)
        train = pack_examples(train, block_size=max_len, seed=c.seed)
        packing_note = f" packed into {len(train):,} rows ({100 * fill_ratio(train, max_len):.0f}% full)"
        train_examples = unpacked
    else:
        train_examples = len(train)

    model = build_task_model(task, pre, num_labels=len(labels), dropout=c.dropout, head_bias=c.finetune.head_bias).to(
        device
    )
    report = apply_strategy(model, c.finetune)
    lora = c.finetune.strategy == "lora"
    extra = {
        "task": task,
        "labels": labels,
        "max_len": max_len,
        "prompt_template": getattr(objective, "prompt_template", ""),
        **(
            {"chat_template": template.source, "chat_template_name": template.name, "end_of_turn": template.end_of_turn}
            if template is not None
            else {}
        ),
        **({"qa": _qa_settings(objective, c, train_rows)} if task == "qa" else {}),
        "init_from": c.init_from,
        "strategy": c.finetune.strategy,
        "head_bias": c.finetune.head_bias,
    }
    if lora:  # adapters + head only; the base is referenced, not copied
        extra["base"] = str(Path(pre.source).resolve()) if not pre.source.startswith("hf:") else pre.source
        extra["lora"] = {
            "rank": c.finetune.lora_rank,
            "alpha": c.finetune.lora_alpha,
            "targets": c.finetune.lora_targets,
        }
    ckpt = job.checkpointer(
        model, model_class=type(model).__name__, extra=extra, tokenizer=tokenizer, adapter_only=lora
    )
    resume_from = ckpt.resume_weights(c.resume, batch_size=t.batch_size)
    if dist.kind == "fsdp":
        dist.wrap(model)  # shards in place: the optimizer must see the sharded (DTensor) parameters
    optimizer = build_task_optimizer(
        for_device(c.optim, device), model, layerwise_lr_decay=c.finetune.layerwise_lr_decay
    )
    batches = ExampleBatches(
        train,
        batch_size=t.batch_size,
        seed=c.seed,
        pad_id=tokenizer.pad_id,
        grad_accum=t.grad_accum,
        rank=dist.rank,
        world_size=dist.world_size,
        group_by_length=c.group_by_length,
    )
    max_steps = epochs_to_steps(c.epochs, batches.steps_per_epoch) if c.epochs > 0 else t.max_steps
    eval_every = t.eval_every or batches.steps_per_epoch
    scheduler = instantiate(c.scheduler, optimizer=optimizer, total_steps=max_steps, _convert_="all")

    decoding = qa_decoding(extra.get("qa"))

    def eval_fn() -> dict[str, float]:
        flat, _ = task_metrics(
            task,
            model,
            tokenizer,
            val,
            eval_rows,
            labels,
            batch_size=t.batch_size * 2,
            template=template,
            generation=c.generation,
            max_generate=c.generation.max_examples,
            decoding=decoding,
        )
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
    job.resolve_precision()
    mcfg = ModelConfig.of(model)
    trainer = Trainer(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        train_batch=batches.batch,
        val_batches=lambda: eval_batches(val, batch_size=t.batch_size * 2, pad_id=tokenizer.pad_id),
        settings=job.settings(
            max_steps=max_steps, eval_every=eval_every, flops_per_token=mcfg.flops_per_token(max_len)
        ),
        eval_fn=eval_fn,
        early_stopping=es,
        save_checkpoint=ckpt.save,
        save_best=lambda tr: ckpt.save(tr, "best"),
        loggers=job.loggers(c.logger),
        dist=dist,
    )
    ckpt.restore(trainer, resume_from)
    job.say(
        f"finetune: {task} from {pre.source} ({pre.model_class}) on {device}{job.describe_ranks()} ({job.precision}); "
        f"{report.trainable:,} of {report.total:,} parameters trainable ({100 * report.fraction:.2f}%, "
        f"{c.finetune.strategy}); {train_examples:,} train{packing_note} / {len(val):,} eval examples; {max_steps} steps "
        f"({batches.steps_per_epoch}/epoch); run dir {job.out_dir}"
    )
    final = job.fit(trainer, command="finetune")
    if es is None:
        ckpt.save(trainer, "best")
    best = trainer.state.best_metric
    if es is not None and best is not None:
        best_text = f"best {es.metric} {best:.4f} at step {trainer.state.best_step}"
    else:
        best_text = "the final weights (early stopping is off)"
    job.say(f"done: step {trainer.state.step}; {best_text}; best checkpoint {job.out_dir / 'best'}")
    return {
        **final,
        "trainable_params": report.trainable,
        "trainable_fraction": report.fraction,
        **({"best_" + es.metric: best} if es and best is not None else {}),
    }


def _qa_settings(objective: Any, c: Config, train_rows: list) -> dict[str, Any]:
    """What a QA checkpoint records to decode answers as it was trained to: "no answer" is a
    possible prediction when the training data has unanswerable questions (SQuAD 2.0)."""
    return {
        "n_best": objective.n_best,
        "max_answer_len": objective.max_answer_len,
        "null_score_diff_threshold": objective.null_score_diff_threshold,
        "allow_null": any(r.is_impossible for r in train_rows),
        "doc_stride": c.data.doc_stride,
    }
