"""Token shards: the writer of a dataset's flat train/val arrays (parallel encoding into them:
``llmkit.data.encoding``; reading them back: ``llmkit.data.dataset``, re-exported here).

A dataset directory (the ``out_dir`` of ``llmkit tokenize``)::

    tokenizer/      the tokenizer (tokenizer.json [+ tokenizer.model])
    train.bin       flat array of token ids (uint16 if vocab_size < 65536, else uint32):
    val.bin         each document's tokens followed by eos_id, the document separator
    meta.json       counts, dtype, special ids, sources with sizes and sha256, configs, seed

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


class DatasetWriter:
    """Collects a dataset under temporary names in ``out_dir``; :meth:`commit` makes it visible.

        with DatasetWriter(out_dir, tokenizer) as w:
            w.append("train", tokens, n_docs)
            w.commit(extra_meta)
    Leaving the block without ``commit`` (an exception, Ctrl-C) deletes the temporary files.
    """

    def __init__(self, out_dir: str | os.PathLike, tokenizer: Tokenizer) -> None:
        self.out_dir = Path(out_dir)
        self.tokenizer = tokenizer
        self.dtype = tokenizer.dtype
        self.tokens = {s: 0 for s in SPLITS}
        self.documents = {s: 0 for s in SPLITS}
        self.tokenizer_tmp: Path | None = None
        self._files: dict[str, Any] = {}
        self._tmp: dict[str, str] = {}
        self._sha = {s: hashlib.sha256() for s in SPLITS}  # of each shard's bytes, for meta.json
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
            fd, tmp = tempfile.mkstemp(prefix=f".{split}.bin.", suffix=".tmp", dir=self.out_dir)
            self._tmp[split] = tmp
            self._files[split] = os.fdopen(fd, "wb")
        return self

    def append(self, split: str, tokens: np.ndarray, n_docs: int) -> None:
        if tokens.size:
            data = np.ascontiguousarray(tokens, dtype=self.dtype).data
            self._files[split].write(data)
            self._sha[split].update(data)
        self.tokens[split] += int(tokens.size)
        self.documents[split] += n_docs

    def commit(self, extra: dict | None = None) -> dict:
        """Rename everything into place and write meta.json (last); return the meta."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        meta = self._meta(extra or {})
        final = self.out_dir / META_FILE
        final.unlink(missing_ok=True)  # from here on the directory is not a complete dataset
        tok_dir = self.out_dir / TOKENIZER_DIR
        if tok_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.", suffix=".old", dir=self.out_dir))
            os.replace(tok_dir, old / TOKENIZER_DIR)
            os.replace(self.staged_tokenizer, tok_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.staged_tokenizer, tok_dir)
        for split in SPLITS:
            os.replace(self._tmp[split], self.out_dir / f"{split}.bin")
        write_json(final, meta)
        self.committed = True
        _default_permissions([tok_dir, *tok_dir.iterdir(), *(self.out_dir / f"{s}.bin" for s in SPLITS), final])
        return meta

    def __exit__(self, *exc: object) -> None:
        if self.committed:
            return
        for f in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
        for tmp in self._tmp.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if self.tokenizer_tmp is not None:
            shutil.rmtree(self.tokenizer_tmp, ignore_errors=True)

    def _meta(self, extra: dict) -> dict:
        tok = self.tokenizer
        special = {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id}
        for name in ("cls", "sep", "mask"):
            if getattr(tok, f"{name}_id") is not None:
                special[name] = getattr(tok, f"{name}_id")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer": {"dir": TOKENIZER_DIR, "kind": tok.kind, "checksum": tok.checksum()},
            "vocab_size": tok.vocab_size,
            "dtype": self.dtype.name,
            "special_ids": special,
            "special_tokens": dict(tok.special_tokens),
            "document_separator": {"token": "eos", "id": tok.eos_id},
            "splits": {
                s: {
                    "file": f"{s}.bin",
                    "tokens": self.tokens[s],
                    "documents": self.documents[s],
                    "bytes": self.tokens[s] * self.dtype.itemsize,
                    "sha256": self._sha[s].hexdigest(),
                }
                for s in SPLITS
            },
            **extra,
        }


def _default_permissions(paths: Iterable[Path]) -> None:
    """Temporary files are created private (0600); give the results the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        with contextlib.suppress(OSError):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


# --- encoding -----------------------------------------------------------------------------------
