"""Encoding documents into token shards in parallel: worker processes (or threads) encode batches of
documents while the parent writes the finished batches in order (``ShardEncoder``), so the token
stream is the same for any number of workers. The shards themselves: ``llmkit.data.shards``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from typing import Any, Literal

import numpy as np

from llmkit.data.shards import DatasetWriter
from llmkit.tokenizer.base import Tokenizer

_SPLIT_CODE = {"train": 0, "val": 1}

Backend = Literal["processes", "threads"]


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- writing ------------------------------------------------------------------------------------


def encode_pieces(
    tok: Tokenizer, texts: list[str], splits: bytes, ends: bytes, num_threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Encode a batch of pieces into (train tokens, val tokens), eos after each document's last piece.

    ``splits[i]`` is 0 (train) or 1 (val); ``ends[i]`` is 0 when piece ``i`` is not the end of its
    document (a long document cut after a newline), so no eos follows it.
    """
    flat, lengths = tok.encode_documents(texts, num_threads=num_threads)
    end = np.frombuffer(ends, dtype=np.uint8)
    if not end.all():  # drop the eos after pieces that do not end their document
        keep = np.ones(flat.size, dtype=bool)
        keep[(np.cumsum(lengths) - 1)[end == 0]] = False
        flat = flat[keep]
        lengths = lengths - (end == 0)
    split = np.frombuffer(splits, dtype=np.uint8)
    if not split.any():
        return flat, flat[:0]
    if split.all():
        return flat[:0], flat
    per_token = np.repeat(split, lengths)
    return flat[per_token == 0], flat[per_token == 1]


_WORKER_TOKENIZER: Tokenizer | None = None  # set in a worker; inherited (with its warm cache) under fork


def _worker_init(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    if _WORKER_TOKENIZER is None:  # forkserver / spawn: load it
        from llmkit.tokenizer import load

        _WORKER_TOKENIZER = load(tokenizer_dir)


def _worker_encode(texts: list[str], splits: bytes, ends: bytes) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_TOKENIZER is not None
    return encode_pieces(_WORKER_TOKENIZER, texts, splits, ends)


@dataclass
class _Batch:
    texts: list[str]
    splits: bytearray
    ends: bytearray
    docs: dict[str, int]
    chars: int = 0
    read: int = 0  # corpus bytes read when the batch was closed (progress)


def batches(
    docs: Iterable[tuple[str, str]],
    batch_chars: int,
    bytes_read: Callable[[], int] = lambda: 0,
    *,
    cut_long: bool = True,
) -> Iterator[_Batch]:
    """Group documents into batches of about ``batch_chars`` characters.

    With ``cut_long`` a document longer than that is cut after a newline into pieces (so several
    workers share it); this is exact for llmkit's tokenizers because none of their tokens spans a
    newline: "\\n" is a symbol of its own for SentencePiece and a character for char tokenizers.
    (Not so for e.g. GPT-2's byte-level BPE, which has tokens like ".\\n\\n".)
    """
    b = _Batch([], bytearray(), bytearray(), {"train": 0, "val": 0})
    for split, text in docs:
        code = _SPLIT_CODE[split]
        while cut_long and len(text) > batch_chars:
            cut = text.rfind("\n", batch_chars // 2, batch_chars)
            if cut < 0:
                break  # no newline to cut at: the rest is one piece
            b.texts.append(text[: cut + 1])
            b.splits.append(code)
            b.ends.append(0)
            b.chars += cut + 1
            text = text[cut + 1 :]
            b.read = bytes_read()
            yield b
            b = _Batch([], bytearray(), bytearray(), {"train": 0, "val": 0})
        b.texts.append(text)
        b.splits.append(code)
        b.ends.append(1)
        b.docs[split] += 1
        b.chars += len(text)
        if b.chars >= batch_chars:
            b.read = bytes_read()
            yield b
            b = _Batch([], bytearray(), bytearray(), {"train": 0, "val": 0})
    if b.texts:
        b.read = bytes_read()
        yield b


def _ready(task: Any) -> bool:
    """A batch's result is here: encoded in this process, or a worker's that has finished."""
    return not isinstance(task, AsyncResult) or task.ready()


def _start_method() -> str:
    """fork when this process runs no other thread (instant start, nothing to reload), else
    forkserver: forking a process whose other threads may hold locks is unsafe."""
    import threading

    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class ShardEncoder:
    """Encodes ``(split, text)`` documents into a :class:`DatasetWriter`'s shards, in order.

    ``backend="processes"`` with ``workers`` encoders (0 = one per core): this process reads the
    batches of about ``batch_chars`` characters and writes them in order; a pool of ``workers - 1``
    worker processes encodes a batch while they hold fewer than two each, else this process
    encodes it itself, so the share this process encodes adapts to what reading and writing cost
    it (with alternate turns instead, reading made it the bottleneck: 1.25x for 2 workers on a
    40 MB JSONL.gz corpus, ``scripts/bench_corpus_scale.py``). It encodes the first batch before
    it starts the pool, so under fork the workers inherit the tokenizer with its segment cache
    warm (no reload, fewer cold misses). Measured: a pool of ``workers`` processes beside an idle
    parent costs more CPU in all (another cold cache, more pickling), which is slower on a busy
    machine. At most ``4 * workers`` batches are in flight, so memory does not grow with the
    corpus. ``workers=1`` encodes in this process only. ``backend="threads"``: SentencePiece's
    own multi-threaded batch encode in this process (no segment cache).

    fork is used when this process runs no other thread (llmkit's progress bar has none), else
    forkserver: forking a process whose other threads may hold locks is unsafe.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        tokenizer_dir: str | os.PathLike,
        workers: int = 0,
        backend: Backend = "processes",
        batch_chars: int = 1 << 18,
        start_method: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokenizer_dir = str(tokenizer_dir)
        self.workers = workers or default_workers()
        self.backend = backend
        self.batch_chars = batch_chars
        self.start_method = start_method
        self.pool: Any = None

    def __enter__(self) -> ShardEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def _start_pool(self) -> None:
        global _WORKER_TOKENIZER
        self.start_method = self.start_method or _start_method()
        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            ctx.set_forkserver_preload(["llmkit.data.shards", "llmkit.tokenizer"])
        if self.start_method == "fork":
            _WORKER_TOKENIZER = self.tokenizer  # the children inherit it, cache and all
        try:
            self.pool = ctx.Pool(self.workers - 1, initializer=_worker_init, initargs=(self.tokenizer_dir,))
        finally:
            _WORKER_TOKENIZER = None

    def _write_head(self, inflight: deque, write: Callable) -> None:
        batch, task = inflight.popleft()
        write(batch, task.get() if isinstance(task, AsyncResult) else task)

    def encode(
        self,
        writer: DatasetWriter,
        docs: Iterable[tuple[str, str]],
        *,
        bytes_read: Callable[[], int] = lambda: 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict:
        """Encode and append to ``writer``; ``on_progress(bytes_read_advance)`` after each batch."""
        t0 = time.perf_counter()
        chars = 0
        last_read = 0

        def write(batch: _Batch, result: tuple[np.ndarray, np.ndarray]) -> None:
            nonlocal chars, last_read
            train, val = result
            writer.append("train", train, batch.docs["train"])
            writer.append("val", val, batch.docs["val"])
            chars += batch.chars
            if on_progress is not None:
                on_progress(batch.read - last_read)
            last_read = batch.read

        cut_long = self.tokenizer.kind in ("bpe", "unigram", "char")  # no token spans a newline
        stream = batches(docs, self.batch_chars, bytes_read, cut_long=cut_long)
        if self.backend == "threads" or self.workers == 1:
            threads = self.workers if self.backend == "threads" else 1
            for b in stream:
                write(b, encode_pieces(self.tokenizer, b.texts, bytes(b.splits), bytes(b.ends), num_threads=threads))
        else:
            # in order of the stream: a batch goes to a worker while the workers have fewer than
            # two each in hand (one encoding, one queued), else this process encodes it now; so
            # this process reads, writes and encodes only what the workers leave (any load, any speed)
            inflight: deque[tuple[_Batch, Any]] = deque()
            busy = 2 * (self.workers - 1)
            for i, b in enumerate(stream):
                if i == 0:  # encoded here before the pool starts: the workers inherit a warm cache
                    write(b, encode_pieces(self.tokenizer, b.texts, bytes(b.splits), bytes(b.ends)))
                    continue
                if self.pool is None:
                    self._start_pool()
                while inflight and _ready(inflight[0][1]):
                    self._write_head(inflight, write)
                if sum(1 for _, t in inflight if isinstance(t, AsyncResult) and not t.ready()) < busy:
                    task: Any = self.pool.apply_async(_worker_encode, (b.texts, bytes(b.splits), bytes(b.ends)))
                    b.texts = []  # the task holds the text until it is sent; keep nothing else
                else:
                    task = encode_pieces(self.tokenizer, b.texts, bytes(b.splits), bytes(b.ends))
                inflight.append((b, task))
                while len(inflight) > 4 * self.workers:  # bounded memory: wait for the oldest
                    self._write_head(inflight, write)
            while inflight:
                self._write_head(inflight, write)
        if on_progress is not None and bytes_read() > last_read:
            on_progress(bytes_read() - last_read)
        seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "characters": chars,
            "workers": self.workers,
            "backend": self.backend,
            "start_method": self.start_method if self.pool is not None else None,
        }
