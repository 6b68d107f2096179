"""SentencePiece BPE and unigram tokenizers (Sennrich et al. 2016; Kudo 2018), set up to be lossless.

Why these trainer settings:
  - ``normalization_rule_name=identity``, ``add_dummy_prefix=False``, ``remove_extra_whitespaces=False``:
    no NFKC, no leading space, no squeezed spaces, so ``decode(encode(s)) == s``.
  - ``byte_fallback``: a character outside the vocabulary becomes its UTF-8 bytes (``<0xNN>``),
    never ``<unk>``, so arbitrary Unicode round-trips.
  - ``"\\n"`` is a user-defined symbol (after the user special tokens): a newline is always one
    cheap token, with or without byte fallback. Training sentences are the lines of the sample,
    so no learned piece spans a newline.
  - ``allow_whitespace_only_pieces``: runs of spaces (code indentation) become single pieces.
SentencePiece writes a space as U+2581 ("▁"), so a literal "▁" in the text would decode as a
space; with byte fallback llmkit encodes a literal "▁" as its three byte tokens instead.

Segment cache (encoding speed): no piece of these models has "▁" after another character
(SentencePiece splits training text into "▁word" units), so no token spans the boundary between a
non-space character and the space after it. Text cut at those boundaries ("Hello", " world",
"  again", a trailing "  ") encodes to exactly the concatenation of its segments' encodings, and the segments of
natural text repeat (Zipf): llmkit caches segment -> ids and runs SentencePiece on new segments
only, as word-level caches in Hugging Face ``tokenizers`` do. The cache is bounded and used only
when the model's pieces satisfy that condition (checked on load), and only for BPE: BPE merges
inside a segment do not depend on what is around it, while unigram's Viterbi search breaks ties
between equal-score paths (e.g. "▁"+"▁▁▁" vs "▁▁▁"+"▁") by floating-point sums that do.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llmkit.errors import DataError, LlmkitError
from llmkit.io import atomic_file
from llmkit.tokenizer.base import BASE_SPECIALS, META_FILE, Tokenizer, write_meta
from llmkit.tokenizer.config import TokenizerConfig

MODEL_FILE = "tokenizer.model"
NEWLINE = "\n"
_SPACE = "\u2581"  # SentencePiece's whitespace symbol
_CACHE_ENTRIES = 1 << 16  # per cache dict, cleared when full: memory stays bounded (~20 MB each)
_CACHE_MAX_SEGMENT = 48  # longer segments (URLs, long numbers) rarely repeat: not cached


class SentencePieceTokenizer(Tokenizer):
    def __init__(
        self, model: bytes, *, kind: str, user_special_tokens: Sequence[str], source: str = "<memory>"
    ) -> None:
        super().__init__(user_special_tokens=user_special_tokens)
        self.kind = kind
        self._model = bytes(model)
        self.sp = spm.SentencePieceProcessor(model_proto=self._model)
        self.vocab_size = self.sp.get_piece_size()
        got = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if got != (self.pad_id, self.unk_id, self.bos_id, self.eos_id):
            raise LlmkitError(
                f"{source}: SentencePiece model has special ids pad/unk/bos/eos = {got}; llmkit needs (0, 1, 2, 3). "
                "Train it with `llmkit tokenize` (or with pad_id=0 unk_id=1 bos_id=2 eos_id=3)."
            )
        for tok, i in self.special_tokens.items():
            if self.sp.id_to_piece(i) != tok:
                raise LlmkitError(f"{source}: id {i} is {self.sp.id_to_piece(i)!r} in the model, expected {tok!r}.")
        self.byte_fallback = self.sp.piece_to_id("<0x00>") != self.unk_id
        # A literal U+2581 would come back as a space; encode it as its UTF-8 bytes instead.
        self._space_bytes = (
            [self.sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE.encode()] if self.byte_fallback else None
        )
        self._checksum: str | None = None
        crossing = re.compile(f"[^{_SPACE}]{_SPACE}")
        self.segment_cache = kind == "bpe" and not any(
            crossing.search(self.sp.id_to_piece(i)) for i in range(self.vocab_size)
        )
        self._after_space: dict[str, list[int]] = {}  # segment cache: word -> ids of " " + word
        self._other: dict[str, list[int]] = {}  # segment cache: any other segment -> its ids

    # --- encoding -------------------------------------------------------------------------------
    def _encode_many(self, texts: list[str], *, num_threads: int = 1) -> list[list[int]]:
        if self.segment_cache and num_threads <= 1:
            out = []
            for t in texts:
                ids: list[int] = []
                self._extend_cached(ids, t)
                out.append(ids)
            return out
        out = self.sp.encode(texts, num_threads=num_threads) if texts else []
        if self._space_bytes is not None:
            for i, t in enumerate(texts):
                if _SPACE in t:
                    out[i] = self._encode_with_literal_space(t)
        return out

    def _extend_cached(self, ids: list[int], text: str) -> None:
        """Append the ids of ``text`` to ``ids``, running SentencePiece only on segments not seen
        before. Segments come from ``str.split(" ")``: a word after one space (most of them) is
        looked up as the bare word in ``_after_space``; the first word, words after several
        spaces and trailing spaces are looked up as the full segment in ``_other``. (Measured
        faster than a regex, batched misses or a vectorised numpy gather.)"""
        if self._space_bytes is not None and _SPACE in text:
            ids += self._encode_with_literal_space(text)
            return
        words = text.split(" ")
        if words[0]:
            ids += self._lookup(self._other, words[0], words[0])
        spaces = 0  # spaces seen since the last word, beyond the one that leads the next word
        for w in words[1:]:
            if not w:
                spaces += 1
            elif spaces:
                seg = " " * (spaces + 1) + w
                ids += self._lookup(self._other, seg, seg)
                spaces = 0
            else:
                seg_ids = self._after_space.get(w)
                ids += seg_ids if seg_ids is not None else self._lookup(self._after_space, w, " " + w)
        if spaces:  # trailing spaces
            seg = " " * spaces
            ids += self._lookup(self._other, seg, seg)

    def _lookup(self, cache: dict[str, list[int]], key: str, segment: str) -> list[int]:
        seg_ids = cache.get(key)
        if seg_ids is None:
            seg_ids = self.sp.encode(segment)
            if len(segment) <= _CACHE_MAX_SEGMENT:
                if len(cache) >= _CACHE_ENTRIES:
                    cache.clear()
                cache[key] = seg_ids
        return seg_ids

    def encode_documents(self, texts: list[str], *, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if not self.segment_cache or num_threads > 1:
            return super().encode_documents(texts, num_threads=num_threads)
        flat: list[int] = []
        lengths = []
        eos = self.eos_id
        for t in texts:
            start = len(flat)
            self._extend_cached(flat, t)
            flat.append(eos)
            lengths.append(len(flat) - start)
        return np.array(flat, dtype=self.dtype), np.array(lengths, dtype=np.int64)

    def _encode_with_literal_space(self, text: str) -> list[int]:
        parts = text.split(_SPACE)
        ids: list[int] = []
        for j, ids_part in enumerate(self.sp.encode(parts)):
            if j:
                ids.extend(self._space_bytes)  # type: ignore[arg-type]
            ids.extend(ids_part)
        return ids

    # --- decoding -------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        # control symbols (pad, bos, eos) decode to "" in SentencePiece; unk to " ⁇ "
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    # --- files ----------------------------------------------------------------------------------
    def checksum(self) -> str:
        if self._checksum is None:
            import hashlib

            self._checksum = hashlib.sha256(self._model).hexdigest()
        return self._checksum

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(directory / MODEL_FILE, "wb") as f:
            f.write(self._model)
        write_meta(
            directory,
            self._meta(
                model_file=MODEL_FILE, byte_fallback=self.byte_fallback, newline_id=self.sp.piece_to_id(NEWLINE)
            ),
        )
        return directory

    @classmethod
    def from_dir(cls, directory: Path, meta: dict) -> SentencePieceTokenizer:
        from llmkit.io import sha256_file

        model = directory / MODEL_FILE
        if not model.is_file():
            raise LlmkitError(
                f"{directory}: {MODEL_FILE} is missing; {META_FILE} says this is a {meta['kind']} tokenizer."
            )
        if sha256_file(model) != meta.get("checksum"):
            raise LlmkitError(
                f"{model}: its sha256 does not match the checksum in {META_FILE}; the file was changed or damaged. "
                "Re-run `llmkit tokenize` to rebuild the tokenizer."
            )
        tok = cls(
            model.read_bytes(),
            kind=meta["kind"],
            user_special_tokens=meta.get("user_special_tokens", []),
            source=str(model),
        )
        if tok.vocab_size != meta.get("vocab_size"):
            raise LlmkitError(f"{model}: {tok.vocab_size} pieces, but {META_FILE} says {meta.get('vocab_size')}.")
        return tok


# --- training -----------------------------------------------------------------------------------
def _sentences(texts: Iterable[str], *, max_bytes: int, budget: int, stats: dict) -> Iterator[str]:
    """Lines of ``texts`` (SentencePiece sentences have no newline), cut to at most ``max_bytes``
    UTF-8 bytes (at a space where possible), until about ``budget`` characters were given."""
    step = max(1, max_bytes // 4)  # characters: at most 4 UTF-8 bytes each
    for text in texts:
        for line in text.split(NEWLINE):
            if not line:
                continue
            while line:
                if len(line) <= step or len(line.encode("utf-8")) <= max_bytes:
                    piece, line = line, ""
                else:
                    cut = line.rfind(" ", step // 2, step)
                    cut = cut if cut > 0 else step
                    piece, line = line[:cut], line[cut:]
                stats["sentences"] += 1
                stats["chars"] += len(piece)
                yield piece
                if stats["chars"] >= budget:
                    return


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_sentencepiece(cfg: TokenizerConfig, texts: Iterable[str], *, seed: int) -> SentencePieceTokenizer:
    """Train on ``texts`` (at most ``cfg.train_sample_bytes`` characters of them)."""
    stats = {"sentences": 0, "chars": 0}
    sentences = list(_sentences(texts, max_bytes=cfg.max_sentence_length, budget=cfg.train_sample_bytes, stats=stats))
    if not sentences:
        raise DataError("The tokenizer's training sample holds no text (every document is empty or only newlines).")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    quiet = os.environ.get("LLMKIT_DEBUG", "") in ("", "0", "false")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=cfg.kind,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=cfg.byte_fallback,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            pad_piece=BASE_SPECIALS[0],
            unk_piece=BASE_SPECIALS[1],
            bos_piece=BASE_SPECIALS[2],
            eos_piece=BASE_SPECIALS[3],
            user_defined_symbols=[*cfg.user_special_tokens, NEWLINE],
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            max_sentence_length=cfg.max_sentence_length,
            input_sentence_size=0,  # the sample is already bounded; use all of it
            hard_vocab_limit=True,
            num_threads=max(1, os.cpu_count() or 1),
            minloglevel=2 if quiet else 0,
        )
    except RuntimeError as e:
        raise _training_error(cfg, str(e), stats) from None
    finally:
        del sentences
    return SentencePieceTokenizer(model.getvalue(), kind=cfg.kind, user_special_tokens=cfg.user_special_tokens)


def _training_error(cfg: TokenizerConfig, msg: str, stats: dict) -> LlmkitError:
    sample = f"{stats['chars'] / 1e6:.2f}M characters in {stats['sentences']} lines"
    if m := _TOO_HIGH.search(msg):
        return DataError(
            f"tokenizer.vocab_size={cfg.vocab_size} is more than this corpus can support: SentencePiece "
            f"{cfg.kind} can build at most {m.group(2)} pieces from the training sample ({sample}). "
            f"Set tokenizer.vocab_size to {m.group(2)} or less, or train on more text."
        )
    if m := _TOO_LOW.search(msg):
        return DataError(
            f"tokenizer.vocab_size={cfg.vocab_size} is too small: the special tokens, the byte tokens and the "
            f"characters of the training sample ({sample}, character_coverage={cfg.character_coverage}) need at "
            f"least {m.group(2)} pieces. Raise tokenizer.vocab_size to {m.group(2)} or more, or lower "
            "tokenizer.character_coverage."
        )
    return LlmkitError(
        f"SentencePiece could not train the {cfg.kind} tokenizer on the sample ({sample}): {msg.strip()}"
    )
