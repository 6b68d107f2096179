"""Token shards: the writer of a dataset's flat train/val arrays (parallel encoding into them:
``llmkit.data.encoding``; reading them back: ``llmkit.data.dataset``, re-exported here).

A dataset directory (the ``out_dir`` of ``llmkit tokenize``)::

    tokenizer/      the tokenizer (tokenizer.json [+ tokenizer.model])
    train.bin       flat array of token ids (uint16 if vocab_size < 65536, else uint32):
    val.bin         each document's tokens followed by eos_id, the document separator
    meta.json       counts, dtype, special ids, the shards with token counts and sha256, sources, configs

A split larger than ``shard_tokens`` (``data.shard_tokens``) is several files, ``train-00000.bin``,
``train-00001.bin``, ..., cut at exactly that many tokens (a document may continue in the next
file); read back they are one stream (``llmkit.data.sharded``). A dataset tokenized as tasks
(``llmkit.data.shard_tasks``) lists the shards of its tasks, which stay where the tasks wrote them.

Writes are ordered so that an interrupted run never leaves a dataset that looks complete: the
tokenizer and shards are written under temporary names; only at the end are the old meta.json
removed, the new files renamed into place and meta.json written, last of all. meta.json present
= dataset complete; a failure before that leaves a previous dataset in the directory untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# The format and the reading side (Dataset, open_dataset, verify_dataset) live in llmkit.data.dataset;
# re-exported here, where callers look for them.
from llmkit.data.dataset import (  # noqa: F401
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    SPLITS,
    TOKENIZER_DIR,
    Dataset,
    iter_documents,
    open_dataset,
    verify_dataset,
)
from llmkit.io import write_json
from llmkit.tokenizer.base import Tokenizer

DEFAULT_SHARD_TOKENS = 1 << 28
"""Tokens per shard file unless set (``data.shard_tokens``): 512 MiB of uint16, so a corpus under
about a gigabyte of text stays one ``train.bin`` and one ``val.bin``."""


def shard_name(split: str, index: int, count: int) -> str:
    """``train.bin`` when a split has one shard, else ``train-00000.bin``, ``train-00001.bin``, ..."""
    return f"{split}.bin" if count == 1 else f"{split}-{index:05d}.bin"


class _SplitShards:
    """One split's shard files under temporary names, cut every ``shard_tokens`` tokens."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.split, self.dtype, self.budget = out_dir, split, dtype, shard_tokens
        self.done: list[dict] = []  # closed shards: tmp path, tokens, sha256
        self.file: Any = None
        self.tmp = ""
        self.tokens = 0  # in the open shard
        self.sha = hashlib.sha256()
        self._open()

    def _open(self) -> None:
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.split}.bin.", suffix=".tmp", dir=self.out_dir)
        self.file = os.fdopen(fd, "wb")
        self.tokens, self.sha = 0, hashlib.sha256()

    def _close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.done.append({"tmp": self.tmp, "tokens": self.tokens, "sha256": self.sha.hexdigest()})

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self.tokens == self.budget:
                self._close()
                self._open()
            part, tokens = tokens[: self.budget - self.tokens], tokens[self.budget - self.tokens :]
            data = np.ascontiguousarray(part, dtype=self.dtype).data
            self.file.write(data)
            self.sha.update(data)
            self.tokens += int(part.size)

    def finish(self) -> list[dict]:
        """Close the last shard; the list of shards (an empty split is one empty shard)."""
        self._close()
        return self.done

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        for tmp in [d["tmp"] for d in self.done] + [self.tmp]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class DatasetWriter:
    """Collects a dataset under temporary names in ``out_dir``; :meth:`commit` makes it visible.

        with DatasetWriter(out_dir, tokenizer) as w:
            w.append("train", tokens, n_docs)
            w.commit(extra_meta)
    Leaving the block without ``commit`` (an exception, Ctrl-C) deletes the temporary files.
    Each split is cut into shards of ``shard_tokens`` tokens (the last one shorter): the token
    stream does not depend on it. ``tokenizer_copy=False`` writes no tokenizer folder (a task of a
    tokenization spread over tasks: ``llmkit.data.shard_tasks``); its meta.json says where it is.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        tokenizer: Tokenizer,
        *,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        tokenizer_copy: bool = True,
    ) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.tokenizer = tokenizer
        self.dtype = tokenizer.dtype
        self.shard_tokens = shard_tokens
        self.tokenizer_copy = tokenizer_copy
        self.tokens = {s: 0 for s in SPLITS}
        self.documents = {s: 0 for s in SPLITS}
        self.tokenizer_tmp: Path | None = None
        self._splits: dict[str, _SplitShards] = {}
        self.committed = False

    @property
    def staged_tokenizer(self) -> Path:
        """The tokenizer folder written beside the shards (moved into place on commit)."""
        if self.tokenizer_tmp is None:
            raise RuntimeError("DatasetWriter is not open: use it as a context manager")
        return self.tokenizer_tmp

    def __enter__(self) -> DatasetWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer_tmp = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.", suffix=".tmp", dir=self.out_dir))
        self.tokenizer.save(self.tokenizer_tmp)
        for split in SPLITS:
            self._splits[split] = _SplitShards(self.out_dir, split, self.dtype, self.shard_tokens)
        return self

    def append(self, split: str, tokens: np.ndarray, n_docs: int) -> None:
        self._splits[split].write(tokens)
        self.tokens[split] += int(tokens.size)
        self.documents[split] += n_docs

    def commit(self, extra: dict | None = None) -> dict:
        """Rename everything into place and write meta.json (last); return the meta."""
        shards = {}
        for split in SPLITS:
            done = self._splits[split].finish()
            shards[split] = [(d["tmp"], {**d, "file": shard_name(split, i, len(done))}) for i, d in enumerate(done)]
        meta = self._meta(extra or {}, {s: [info for _, info in shards[s]] for s in SPLITS})
        final = self.out_dir / META_FILE
        final.unlink(missing_ok=True)  # from here on the directory is not a complete dataset
        tok_dir = self.out_dir / TOKENIZER_DIR
        if not self.tokenizer_copy:
            shutil.rmtree(self.staged_tokenizer, ignore_errors=True)
        elif tok_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.", suffix=".old", dir=self.out_dir))
            os.replace(tok_dir, old / TOKENIZER_DIR)
            os.replace(self.staged_tokenizer, tok_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.staged_tokenizer, tok_dir)
        written = [self.out_dir / info["file"] for s in SPLITS for _, info in shards[s]]
        for tmp, info in (pair for s in SPLITS for pair in shards[s]):
            os.replace(tmp, self.out_dir / info["file"])
        write_json(final, meta)
        self.committed = True
        remove_stale_shards(self.out_dir, keep=written)
        _default_permissions([*([tok_dir, *tok_dir.iterdir()] if self.tokenizer_copy else []), *written, final])
        return meta

    def __exit__(self, *exc: object) -> None:
        if self.committed:
            return
        for split in self._splits.values():
            split.discard()
        if self.tokenizer_tmp is not None:
            shutil.rmtree(self.tokenizer_tmp, ignore_errors=True)

    def _meta(self, extra: dict, shards: dict[str, list[dict]]) -> dict:
        tok = self.tokenizer
        special = {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id}
        for name in ("cls", "sep", "mask"):
            if getattr(tok, f"{name}_id") is not None:
                special[name] = getattr(tok, f"{name}_id")
        item = self.dtype.itemsize
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer": {"dir": TOKENIZER_DIR, "kind": tok.kind, "checksum": tok.checksum()},
            "vocab_size": tok.vocab_size,
            "dtype": self.dtype.name,
            "special_ids": special,
            "special_tokens": dict(tok.special_tokens),
            "document_separator": {"token": "eos", "id": tok.eos_id},
            "shard_tokens": self.shard_tokens,
            "splits": {
                s: {
                    "tokens": self.tokens[s],
                    "documents": self.documents[s],
                    "bytes": self.tokens[s] * item,
                    "shards": [
                        {"file": d["file"], "tokens": d["tokens"], "bytes": d["tokens"] * item, "sha256": d["sha256"]}
                        for d in shards[s]
                    ],
                }
                for s in SPLITS
            },
            **extra,
        }


def remove_stale_shards(out_dir: Path, *, keep: Iterable[Path]) -> None:
    """After a commit: delete the shard files of an earlier dataset in ``out_dir`` that the new
    meta.json does not list (``train.bin``, ``train-00007.bin``, ...; nothing else is touched)."""
    kept = {p.name for p in keep}
    for split in SPLITS:
        for f in [out_dir / f"{split}.bin", *out_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].bin")]:
            if f.name not in kept:
                f.unlink(missing_ok=True)


def _default_permissions(paths: Iterable[Path]) -> None:
    """Temporary files are created private (0600); give the results the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        with contextlib.suppress(OSError):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


# --- encoding -----------------------------------------------------------------------------------
