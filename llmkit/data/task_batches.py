"""Fine-tuning examples as token ids, and batches of them as a pure function of (seed, step, rank).

Encoder models (BERT-style) see ``[CLS] a [SEP] (b [SEP])`` with segment ids and classify from
[CLS]; decoder models (GPT-style) see ``a (sep b) eos`` and classify from the last real token.
Token classification labels the first sub-token of each word and ignores the rest (-100), as in
Devlin et al. 2019, section 4.3. Instruction / seq2seq examples are ``prompt + response + eos``
with the loss on the response only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmkit.data.masking import IGNORE_INDEX
from llmkit.data.tasks import LabelledText, TaggedSentence, TextPair
from llmkit.errors import DataError, LlmkitError
from llmkit.tokenizer.base import Tokenizer


@dataclass
class Example:
    input_ids: np.ndarray  # (T,) int64
    labels: np.ndarray  # () for sequence labels, (T,) for token labels
    token_type_ids: np.ndarray | None = None
    word_starts: np.ndarray | None = None  # token_cls: position of each word's first sub-token (-1: truncated)
    input_pos: np.ndarray | None = None  # packed rows: each token's position within its own example
    document_ids: np.ndarray | None = None  # packed rows: which example of the row each token belongs to


def _label_id(label: str, label_to_id: dict[str, int], where: str) -> int:
    if label not in label_to_id:
        known = ", ".join(label_to_id)
        raise DataError(f"{where}: unknown label {label!r}; the model's labels are: {known}.")
    return label_to_id[label]


def _encoder_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """The tokenizer's ``(cls_id, sep_id)``, which an encoder task needs; a clear error if one is missing."""
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if cls_id is None or sep_id is None:
        missing = [n for n, i in (("cls_id", cls_id), ("sep_id", sep_id)) if i is None]
        raise LlmkitError(
            f"This encoder task needs the tokenizer's {', '.join(missing)}; train the tokenizer with "
            "tokenizer.user_special_tokens=[[CLS],[SEP],[MASK]]."
        )
    return cls_id, sep_id


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer segment until both fit in ``budget``."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def pair_ids(
    tokenizer: Tokenizer, a: list[int], b: list[int] | None, *, max_len: int, encoder: bool
) -> tuple[list[int], list[int] | None]:
    """A text (and an optional second one) as a model input of at most ``max_len`` tokens, and its
    token types: ``[CLS] a [SEP] (b [SEP])`` with types 0 / 1 for encoders, ``a (EOS b) EOS`` and
    no types for decoders. The longer segment is truncated first."""
    if encoder:
        cls_id, sep_id = _encoder_ids(tokenizer)
        a, b2 = _truncate_pair(a, b or [], max_len - (3 if b is not None else 2))
        ids = [cls_id, *a, sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b2, sep_id]
            types += [1] * (len(b2) + 1)
        return ids, types
    sep = [tokenizer.eos_id] if b is not None else []
    a, b2 = _truncate_pair(a, b or [], max_len - 1 - len(sep))
    return [*a, *sep, *b2, tokenizer.eos_id], None


def encode_labelled(
    examples: Iterable[LabelledText],
    tokenizer: Tokenizer,
    label_to_id: dict[str, int],
    *,
    max_len: int,
    encoder: bool,
    source: str = "data",
) -> list[Example]:
    out = []
    for i, ex in enumerate(examples):
        a = tokenizer.encode(ex.text)
        b = tokenizer.encode(ex.text_pair) if ex.text_pair is not None else None
        label = np.asarray(_label_id(ex.label, label_to_id, f"{source} example {i + 1}"), dtype=np.int64)
        ids, types = pair_ids(tokenizer, a, b, max_len=max_len, encoder=encoder)
        out.append(Example(np.asarray(ids, np.int64), label, None if types is None else np.asarray(types, np.int64)))
    return out


def encode_tagged(
    sentences: Iterable[TaggedSentence],
    tokenizer: Tokenizer,
    label_to_id: dict[str, int],
    *,
    max_len: int,
    encoder: bool,
    source: str = "data",
) -> list[Example]:
    out = []
    for i, sent in enumerate(sentences):
        cls_id, sep_id = _encoder_ids(tokenizer) if encoder else (None, None)
        ids: list[int] = [] if cls_id is None else [cls_id]
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        starts = []
        truncated = False
        budget = max_len - (1 if encoder else 0)
        for w, (word, tag) in enumerate(zip(sent.tokens, sent.tags)):
            pieces = tokenizer.encode(" " + word)  # words follow a space, as in running text
            tag_id = _label_id(tag, label_to_id, f"{source} sentence {i + 1}, word {w + 1}")
            truncated = truncated or len(ids) + len(pieces) > budget
            if truncated or not pieces:
                starts.append(-1)  # cut off (this word and every later one): scored as 'O'
                continue
            starts.append(len(ids))
            ids += pieces
            labels += [tag_id] + [IGNORE_INDEX] * (len(pieces) - 1)
        if sep_id is not None:
            ids.append(sep_id)
            labels.append(IGNORE_INDEX)
        out.append(
            Example(np.asarray(ids, np.int64), np.asarray(labels, np.int64), word_starts=np.asarray(starts, np.int64))
        )
    return out


def render_prompt(template: str, source: str) -> str:
    return template.format(source=source)


def encode_pairs(pairs: Iterable[TextPair], tokenizer: Tokenizer, *, template: str, max_len: int) -> list[Example]:
    """``prompt + response + eos``; labels are the next tokens of the response only."""
    out = []
    for pair in pairs:
        prompt = tokenizer.encode(render_prompt(template, pair.source))
        response = tokenizer.encode(pair.target) + [tokenizer.eos_id]
        ids = (prompt + response)[: max_len + 1]
        if len(prompt) >= len(ids):
            continue  # the prompt alone fills the window: nothing to learn from
        x = np.asarray(ids[:-1], np.int64)
        y = np.asarray(ids[1:], np.int64)
        y[: len(prompt) - 1] = IGNORE_INDEX  # no loss on predicting the prompt
        out.append(Example(x, y))
    return out


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels (QA windows: start_positions
    and end_positions) (+ token_type_ids)."""
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    spans = getattr(examples[0], "offsets", None) is not None  # QA windows (llmkit.data.squad): labels = (start, end)
    token_level = examples[0].labels.ndim == 1 and not spans
    if token_level:
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    else:
        labels = torch.empty((B, 2) if spans else (B,), dtype=torch.long)
    types = torch.zeros((B, T), dtype=torch.long) if examples[0].token_type_ids is not None else None
    packed = examples[0].document_ids is not None
    # packed rows: padding is position 0 of a document of its own (-1), which no real token sees
    pos = torch.zeros((B, T), dtype=torch.long) if packed else None
    docs = torch.full((B, T), -1, dtype=torch.long) if packed else None
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.from_numpy(e.input_ids)
        mask[i, :n] = 1
        if token_level:
            labels[i, :n] = torch.from_numpy(e.labels)
        else:
            labels[i] = torch.from_numpy(e.labels) if spans else int(e.labels)
        if types is not None:
            types[i, :n] = torch.from_numpy(e.token_type_ids)
        if pos is not None and docs is not None:
            pos[i, :n] = torch.from_numpy(e.input_pos)
            docs[i, :n] = torch.from_numpy(e.document_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if spans:
        batch["start_positions"], batch["end_positions"] = labels[:, 0].contiguous(), labels[:, 1].contiguous()
    else:
        batch["labels"] = labels
    if types is not None:
        batch["token_type_ids"] = types
    if pos is not None and docs is not None:
        batch["input_pos"], batch["document_ids"] = pos, docs
    return batch


GROUP_CHUNK = 50  # global batches per length-sorted chunk (Hugging Face's mega-batch factor)


class ExampleBatches:
    """Shuffled mini-batches over epochs; batch ``(step, micro)`` is a pure function of its arguments.

    Micro-batch ``g = step * grad_accum + micro`` of the run lies in epoch ``g // steps_per_epoch``,
    whose order is a permutation seeded by (seed, epoch). The global batch is split across ranks.

    ``group_by_length``: batches of similar lengths, as Hugging Face's ``group_by_length``. The
    epoch's permutation is cut into chunks of :data:`GROUP_CHUNK` global batches; each chunk is
    sorted by length and cut into batches, and the batches of the epoch are then shuffled (same
    seed). Padding to the longest example of a batch then wastes little: on SST-2 with batch 32
    about 2.5x fewer token positions per epoch than random batches, at the same examples per epoch.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        batch_size: int,
        seed: int,
        pad_id: int,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        group_by_length: bool = False,
    ) -> None:
        if len(examples) < batch_size * world_size:
            raise DataError(f"{len(examples)} training examples are fewer than one batch ({batch_size * world_size}).")
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.micro_per_epoch = len(examples) // (batch_size * world_size)  # the last partial batch is dropped
        self.group_by_length = group_by_length
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation): drawn once per epoch

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.micro_per_epoch // self.grad_accum)

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``: a permutation seeded by (seed, epoch), cached for the epoch."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.examples))
            if self.group_by_length:
                order = self._grouped(order, rng)
            self._order = (epoch, order)
        return self._order[1]

    def _grouped(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``order`` regrouped so that each global batch holds examples of similar length."""
        size = self.batch_size * self.world_size
        used = self.micro_per_epoch * size  # the dropped tail stays out, as without grouping
        lengths = np.fromiter((len(self.examples[i].input_ids) for i in order[:used]), dtype=np.int64, count=used)
        chunk = GROUP_CHUNK * size
        batches = []
        for start in range(0, used, chunk):
            idx, lens = order[start : start + chunk], lengths[start : start + chunk]
            ranked = idx[np.argsort(-lens, kind="stable")]
            batches += [ranked[i : i + size] for i in range(0, len(ranked), size)]
        return np.concatenate([batches[b] for b in rng.permutation(len(batches))] + [order[used:]])

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        g = step * self.grad_accum + micro
        epoch, pos = divmod(g, self.micro_per_epoch)
        order = self.order(epoch)
        size = self.batch_size * self.world_size
        rows = order[pos * size : (pos + 1) * size][self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return collate([self.examples[i] for i in rows], self.pad_id)


def eval_batches(examples: Sequence[Example], *, batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every example once, in order (sorted by length within a chunk would be faster; order is kept for predictions)."""
    for i in range(0, len(examples), batch_size):
        yield collate(examples[i : i + batch_size], pad_id)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch))
