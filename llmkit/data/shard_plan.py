"""Tokenization as independent tasks: how a corpus is cut into ``data.tasks`` tasks (the plan).

The sources, in corpus order, are cut into N runs of about equal file bytes. A cut that falls
inside a plain (uncompressed) JSONL file moves forward to the next line start; inside a plain text
file cut into documents at ``data.doc_separator``, to just after the next separator. So every task
holds whole documents, and the documents of all tasks, in task order, are those of the corpus.
A file that cannot be cut (compressed, Parquet, a datasets folder, a table, a text file that is
one document, or a separator that can overlap itself such as ``"\\n\\n"``, whose split points depend
on everything before them) goes whole to one task: the cut moves to the file boundary nearest to it,
so 20 such files of about equal size make 10 + 10 for 2 tasks (not 11 + 9 when the cut falls just
inside the 11th); a task can be empty.

A task reads only its pieces (``Source.start`` / ``end``) and sends each document to train or
validation by a seeded hash of its text (:func:`text_split`), which needs nothing from the other
tasks: the token stream of the merged dataset does not depend on N (tested for 1 and 3).

The plan lives in ``DIR/tasks-<fingerprint>/plan.json`` beside the tokenizer every task uses; the
fingerprint covers the data and tokenizer configs, the seed, N and each source's path, size and
modification time, so a changed corpus or config gets a new plan and never mixes with old tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmkit.data.config import DataConfig
from llmkit.data.corpus import unit_hash
from llmkit.data.readers import CHUNK, Source
from llmkit.errors import ConfigError

PLAN_FILE = "plan.json"
PLAN_FORMAT = "llmkit.tokenize_plan"


@dataclass(frozen=True)
class Piece:
    """File bytes ``[start, end)`` of the corpus's source ``source`` (an index)."""

    source: int
    start: int
    end: int


def check_task_config(cfg: DataConfig) -> list[str]:
    """What a corpus tokenized as tasks cannot do (each needs the whole corpus in one pass)."""
    problems = []
    if not isinstance(cfg.tasks, int) or cfg.tasks < 0:
        problems.append(f"data.tasks: must be an integer >= 0 (0: one pass, no tasks), got {cfg.tasks!r}")
    elif cfg.tasks:
        if cfg.split == "tail" and not cfg.val_paths:
            problems.append(
                "data.split=tail: the validation text is the last data.val_fraction of the whole corpus, which "
                "no task knows; with data.tasks use data.split=documents or data.val_paths (or data.tasks=0)"
            )
        if cfg.drop_duplicates and cfg.tasks > 1:
            problems.append(
                "data.drop_duplicates: exact duplicates are found across the whole corpus in one pass; with "
                f"data.tasks={cfg.tasks} a task would see only its own documents. Use data.tasks=0 or 1"
            )
    if cfg.task_index is not None and not (isinstance(cfg.task_index, int) and 0 <= cfg.task_index < cfg.tasks):
        problems.append(f"data.task_index: {cfg.task_index!r} is not a task of data.tasks={cfg.tasks} (0 to N - 1)")
    return problems


def text_split(seed: int, role: str, doc: str, fraction: float) -> str:
    """``train`` / ``val`` for a document of a task: its source's role, or (a ``split`` source) a
    seeded hash of its text below ``fraction`` (so equal texts always land in the same split)."""
    if role != "split":
        return "val" if role == "val" else "train"
    key = int.from_bytes(hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return "val" if unit_hash(seed, key) < fraction else "train"


def delimiter(src: Source, cfg: DataConfig) -> bytes | None:
    """The bytes after which ``src`` may be cut, or None if it goes to one task whole."""
    if src.compression:
        return None
    if src.format == "jsonl":
        return b"\n"
    sep = cfg.doc_separator
    if src.format == "text" and sep and not any(sep[:k] == sep[-k:] for k in range(1, len(sep))):
        return sep.encode("utf-8")
    return None


def next_boundary(path: str, at: int, delim: bytes, size: int) -> int:
    """The first offset ``>= at`` that follows an occurrence of ``delim`` (or the file's size)."""
    if at <= 0:
        return 0
    pos = max(0, at - len(delim))
    buf = b""
    with open(path, "rb") as f:
        f.seek(pos)
        while chunk := f.read(CHUNK):
            buf += chunk
            j = buf.find(delim)
            if j >= 0:
                return pos + j + len(delim)
            keep = len(delim) - 1  # a delimiter may straddle two reads
            pos += len(buf) - keep
            buf = buf[len(buf) - keep :] if keep else b""
    return size


def plan_tasks(sources: list[Source], cfg: DataConfig, n: int) -> list[list[Piece]]:
    """``n`` tasks of about equal bytes, each a list of pieces, in corpus order (see the module doc)."""
    total = sum(s.size for s in sources)
    bounds = [(0, 0)]  # (source index, offset) where each task starts; then the end
    base, k = 0, 1
    for i, src in enumerate(sources):
        delim = delimiter(src, cfg)
        while k < n and k * total // n < base + src.size:
            local = k * total // n - base
            if delim:
                off = next_boundary(src.path, local, delim, src.size)
            else:  # whole, to the side of the cut that holds most of it (the nearest file boundary)
                off = 0 if 2 * local <= src.size else src.size
            bounds.append(max(bounds[-1], (i, off)))
            k += 1
        base += src.size
    bounds += [(len(sources), 0)] * (n - k + 1)
    tasks = []
    for (i0, o0), (i1, o1) in zip(bounds, bounds[1:]):
        pieces = []
        for i in range(i0, min(i1, len(sources) - 1) + 1):
            lo = o0 if i == i0 else 0
            hi = o1 if i == i1 else sources[i].size
            if hi > lo or (sources[i].size == 0 and i != i1):
                pieces.append(Piece(i, lo, hi))
        tasks.append(pieces)
    return tasks


def piece_source(src: Source, piece: Piece) -> Source:
    """The source a task reads for ``piece``: the whole file, or the byte range."""
    from dataclasses import replace

    whole = piece.start == 0 and piece.end >= src.size
    return replace(src, start=piece.start, end=None if whole else piece.end, text_bytes=piece.end - piece.start)


def fingerprint(cfg: DataConfig, tokenizer_cfg: Any, seed: int, sources: list[Source], extra: str = "") -> str:
    """12 hex digits naming a plan: configs, seed, N and each source's path, size and mtime."""
    data = {k: v for k, v in asdict(cfg).items() if k != "task_index"}
    files = []
    for s in sources:
        for f in s.files or [s.path]:
            st = os.stat(f)
            files.append([f, st.st_size, st.st_mtime_ns])
    spec = {"data": data, "tokenizer": asdict(tokenizer_cfg), "seed": seed, "files": files, "extra": extra}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_dir(out_dir: Path, fp: str) -> Path:
    return out_dir / f"tasks-{fp}"


def task_dir(plan: Path, index: int) -> Path:
    return plan / f"{index:05d}"


def write_plan(path: Path, fp: str, sources: list[Source], tasks: list[list[Piece]], tokenizer: dict) -> None:
    from llmkit.io import write_json

    write_json(
        path / PLAN_FILE,
        {
            "format": PLAN_FORMAT,
            "fingerprint": fp,
            "tasks": [[[p.source, p.start, p.end] for p in t] for t in tasks],
            "sources": [{"path": s.path, "bytes": s.size} for s in sources],
            "tokenizer": tokenizer,
        },
    )


def read_plan(path: Path) -> tuple[dict, list[list[Piece]]]:
    """The plan in ``path`` (a ``tasks-<fingerprint>`` folder) and its tasks."""
    try:
        plan = json.loads((path / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError([f"{path / PLAN_FILE}: not a readable task plan ({e})"]) from None
    return plan, [[Piece(*p) for p in t] for t in plan["tasks"]]
