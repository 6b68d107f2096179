"""Tokenization as independent tasks: running one task, checking what is done, merging the metadata.

    DIR/tasks-<fingerprint>/
        plan.json        the tasks: pieces of the sources (llmkit.data.shard_plan), the tokenizer's checksum
        tokenizer/       the tokenizer every task encodes with
        00000/           task 0: train.bin / val.bin (or train-00000.bin, ...) and meta.json, written last
        00001/ ...
    DIR/meta.json        written by the merge: lists every task's shards where they are (no copy)
    DIR/tokenizer/

A task is a complete small dataset (its meta.json names ``../tokenizer``), written with the
:class:`~llmkit.data.shards.DatasetWriter` protocol: meta.json present = the task is done. A task
that is re-run starts from an empty folder; one that is done is checked (each shard's size, and its
sha256 before it is skipped) so a deleted, truncated or modified output is re-run, alone.
The merge reads only the tasks' meta.json files: the shards stay where the tasks wrote them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.config import DataConfig
from llmkit.data.dataset import FORMAT, FORMAT_VERSION, META_FILE, SPLITS, TOKENIZER_DIR, split_shards
from llmkit.data.shard_plan import Piece, piece_source, text_split
from llmkit.errors import DataError
from llmkit.io import sha256_file, write_json


def task_state(path: Path, fingerprint: str, *, checksums: bool) -> str | None:
    """None if the task in ``path`` is done and intact, else why not (for the log)."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "not run" if not path.exists() else "no meta.json (interrupted)"
    except ValueError:
        return "meta.json unreadable"
    if meta.get("task", {}).get("plan") != fingerprint:
        return "from another plan"
    item = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        for shard in split_shards(meta, split):
            file = path / shard["file"]
            if not file.is_file():
                return f"{shard['file']} missing"
            if file.stat().st_size != shard["tokens"] * item:
                return f"{shard['file']} has the wrong size"
            if checksums and sha256_file(file) != shard["sha256"]:
                return f"{shard['file']} does not match its sha256"
    return None


def run_task(
    index: int,
    pieces: list[Piece],
    *,
    plan: Path,
    fingerprint: str,
    cfg: DataConfig,
    data_root: str | None,
    seed: int,
    workers: int = 1,
) -> dict:
    """Encode task ``index`` (its ``pieces`` of the corpus) into ``plan/<index>``; return its meta."""
    import llmkit.tokenizer
    from llmkit.data.corpus import Corpus
    from llmkit.data.encoding import ShardEncoder
    from llmkit.data.shards import DatasetWriter

    tok = llmkit.tokenizer.load(plan / TOKENIZER_DIR)
    corpus = Corpus(cfg, data_root=data_root)
    sources = corpus.sources
    corpus.sources = [piece_source(sources[p.source], p) for p in pieces]
    out = plan / f"{index:05d}"
    shutil.rmtree(out, ignore_errors=True)  # whatever an earlier, interrupted run of this task left

    def documents() -> Any:
        for src, doc in corpus.documents():
            yield text_split(seed, src.role, doc, cfg.val_fraction), doc

    with (
        DatasetWriter(out, tok, shard_tokens=cfg.shard_tokens, tokenizer_copy=False) as writer,
        ShardEncoder(tok, tokenizer_dir=writer.staged_tokenizer, workers=workers) as encoder,
    ):
        stats = encoder.encode(writer, documents())
        return writer.commit(
            {
                "tokenizer": {"dir": f"../{TOKENIZER_DIR}", "kind": tok.kind, "checksum": tok.checksum()},
                "task": {"index": index, "plan": fingerprint, "pieces": [[p.source, p.start, p.end] for p in pieces]},
                "sources": [s.record() for s in corpus.sources],
                "encoding_replacements": sum(s.replacements for s in corpus.sources),
                "hygiene": corpus.hygiene.counts(),
                "encode": {**stats, "text_bytes": sum(s.text_bytes for s in corpus.sources)},
            }
        )


def merge(out_dir: Path, plan: Path, n_tasks: int, extra: dict) -> dict:
    """Write ``out_dir/meta.json`` listing the shards of tasks ``0..n_tasks-1`` (each must be done),
    with the plan's tokenizer copied to ``out_dir/tokenizer``; meta.json last. Returns the meta."""
    from llmkit.data.shards import remove_stale_shards

    missing = []
    for k in range(n_tasks):
        why = task_state(plan / f"{k:05d}", plan.name.removeprefix("tasks-"), checksums=False)
        if why is not None:
            missing.append(f"{plan / f'{k:05d}'}: task {k} is not done ({why}); run it (data.task_index={k})")
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DataError("; ".join(missing[:5]) + more + ", then merge again.")
    metas = [json.loads((plan / f"{k:05d}" / META_FILE).read_text(encoding="utf-8")) for k in range(n_tasks)]
    if not sum(m["splits"][s]["documents"] for m in metas for s in SPLITS):
        h = [m["hygiene"] for m in metas]
        raise DataError(
            f"No document in any of the {n_tasks} tasks: the corpus holds no text, or data.min_chars dropped all "
            f"{sum(x['documents_read'] for x in h)} documents read. Check data.paths and data.min_chars."
        )
    first = metas[0]
    splits = {}
    for split in SPLITS:
        shards = [
            {**s, "file": f"{plan.name}/{k:05d}/{s['file']}"}
            for k, m in enumerate(metas)
            for s in split_shards(m, split)
        ]
        shards = [s for s in shards if s["tokens"]] or shards[:1]  # empty tasks add nothing
        splits[split] = {
            "tokens": sum(m["splits"][split]["tokens"] for m in metas),
            "documents": sum(m["splits"][split]["documents"] for m in metas),
            "bytes": sum(m["splits"][split]["bytes"] for m in metas),
            "shards": shards,
        }
    hygiene = dict(first["hygiene"])
    for key in ("documents_read", "dropped_short", "dropped_duplicate", "documents_kept"):
        hygiene[key] = sum(m["hygiene"][key] for m in metas)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer": {**first["tokenizer"], "dir": TOKENIZER_DIR},
        **{k: first[k] for k in ("vocab_size", "dtype", "special_ids", "special_tokens", "shard_tokens")},
        "document_separator": {**first["document_separator"], "text": extra.get("doc_separator")},
        "splits": splits,
        "sources": [r for m in metas for r in m["sources"]],
        "encoding_replacements": sum(m["encoding_replacements"] for m in metas),
        "hygiene": hygiene,
        "tasks": {"count": n_tasks, "plan": plan.name, "encode_seconds": [m["encode"]["seconds"] for m in metas]},
        **{k: v for k, v in extra.items() if k != "doc_separator"},
    }
    final = out_dir / META_FILE
    final.unlink(missing_ok=True)  # from here on the directory is not a complete dataset
    staged = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.", suffix=".tmp", dir=out_dir))
    shutil.copytree(plan / TOKENIZER_DIR, staged / TOKENIZER_DIR)
    shutil.rmtree(out_dir / TOKENIZER_DIR, ignore_errors=True)
    (staged / TOKENIZER_DIR).rename(out_dir / TOKENIZER_DIR)
    staged.rmdir()
    write_json(final, meta)
    remove_stale_shards(out_dir, keep=[])  # an earlier one-pass dataset's train.bin, val.bin, ...
    for old in out_dir.glob("tasks-*"):  # earlier plans' tasks: no meta.json lists them now
        if old.is_dir() and old.name != plan.name:
            shutil.rmtree(old, ignore_errors=True)
    return meta
