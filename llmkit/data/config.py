"""The ``data`` config group: where a corpus comes from and how it splits into documents.

Pretraining reads ``paths`` (a corpus of documents); fine-tuning and task evaluation read
``train_path`` / ``eval_path`` in a task format (a labelled table, CoNLL, or source/target pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    name: str = "files"
    builtin: Literal["pydoc_topics"] | None = None  # an offline corpus shipped with Python
    paths: list[str] = field(default_factory=list)  # files, directories, globs
    val_paths: list[str] = field(default_factory=list)  # explicit validation files
    glob: str = "**/*.txt"  # files of a directory to read
    jsonl_field: str = "text"  # field holding the text in *.jsonl files
    doc_separator: str | None = None  # null: one document per file / JSONL record
    split: Literal["documents", "tail"] = "documents"
    val_fraction: float = 0.1
    encoding_errors: Literal["fail", "replace"] = "fail"  # invalid UTF-8: stop, or replace and count
    # ---- hygiene (off by default): documents dropped before the split, counted in meta.json
    drop_duplicates: bool = False  # drop a document whose exact text came earlier (a 16-byte hash per document)
    min_chars: int = 0  # drop documents with fewer characters (leading/trailing whitespace not counted)
    # ---- the tokenized dataset (llmkit tokenize): shard files, tokenization as independent tasks
    shard_tokens: int = 1 << 28  # tokens per shard file (512 MiB of uint16): smaller corpora are one file per split
    tasks: int = (
        0  # 0: one pass in this process; N: N independent tasks by file and byte range (llmkit.data.shard_plan)
    )
    task_index: int | None = None  # with step=task: run only this task (a SLURM array job, a multirun job)
    # ---- fine-tuning tasks
    # auto: from the file suffix; sft also reads chat (JSONL "messages") and alpaca (instruction/input/output);
    # qa reads squad (SQuAD 1.1 / 2.0 JSON)
    format: Literal["auto", "tsv", "csv", "jsonl", "conll", "parallel", "chat", "alpaca", "squad"] = "auto"
    train_path: str | None = None
    eval_path: str | None = None  # validation file; `llmkit evaluate ... data.eval_path=FILE` scores any file
    train_target_path: str | None = None  # parallel: the line-aligned target file
    eval_target_path: str | None = None
    # the text column: null = "sentence" in tables (seq_cls, *.tsv/*.csv in a corpus), "text" in
    # *.parquet files and datasets folders of a pretraining corpus
    text_column: str | None = None
    text_pair_column: str | None = None  # seq_cls on sentence pairs
    label_column: str = "label"
    source_column: str = "prompt"  # sft tables
    target_column: str = "response"
    max_train_examples: int = 0  # 0 = all
    packing: bool = False  # sft: training examples packed into full rows (document masking; llmkit.data.packing)
    max_eval_examples: int = 0
    # ---- qa (SQuAD JSON)
    doc_stride: int = 128  # tokens two neighbouring windows of a long context share
    train_articles: list[int] = field(default_factory=list)  # indices into the file's "data" list; empty = all
    eval_articles: list[int] = field(default_factory=list)
    unanswerable: Literal["keep", "drop"] = "keep"  # drop: SQuAD 2.0's unanswerable questions left out (1.1 rules)

    @property
    def table_text_column(self) -> str:
        """The text column of a TSV/CSV table (``sentence``, GLUE's name, unless set)."""
        return self.text_column or "sentence"

    @property
    def record_text_column(self) -> str:
        """The text column of a Parquet file or datasets folder (``text``, Hugging Face's usual name, unless set)."""
        return self.text_column or "text"
