"""Heads that turn trunk hidden states into predictions, and the models users build from them.

Composition, not inheritance (torchtune style): a model is a ``Transformer`` plus small heads,
each a module with one forward that returns one tensor. ``CausalLM`` is the decoder-only LM;
encoder models (BERT-style MLM + NSP, classifiers) compose the same trunk with ``Pooler``,
``MLMHead``, ``NSPHead`` and the classification heads below.

Heads own weight tying: ``LMHead`` and ``MLMHead`` take the trunk's ``wte`` and, when
``config.tie_weights`` is set, use its weight as their output matrix (Press & Wolf 2017;
GPT-2, BERT). A tied matrix then appears under both names in ``state_dict()``
(``transformer.wte.weight`` and ``lm_head.weight``), as in nanoGPT; savers that reject
shared tensors (safetensors ``save_file``) must de-duplicate.

Parameter names: ``lm_head.weight``; ``pooler.dense``; ``mlm_head.{dense, norm, weight, bias}``;
``nsp_head.proj``; classification heads ``proj`` (attribute names chosen by the composing model).
"""

from __future__ import annotations

import typing
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmkit.model.config import ModelConfig
from llmkit.model.transformer import KVCache, Transformer, build_activation, build_norm, init_weights


def _vocab_matrix(config: ModelConfig, wte: nn.Embedding) -> nn.Parameter:
    """``wte``'s weight when tying, else a fresh (vocab_size, n_embd) matrix with the GPT-2 init."""
    if config.tie_weights:
        return typing.cast(nn.Parameter, wte.weight)
    weight = nn.Parameter(torch.empty_like(wte.weight))
    nn.init.normal_(weight, mean=0.0, std=config.init_std)
    return weight


class LMHead(nn.Module):
    """Hidden states (..., n_embd) -> vocabulary logits (..., vocab_size), no bias.

    With ``config.logit_softcap = c`` the logits are ``c * tanh(logits / c)``: smooth, near the
    identity for |logit| << c and bounded by c (Gemma 2's final-logit soft-capping; modded-nanogpt
    caps at 15). Training, evaluation and generation all read logits from here.
    """

    def __init__(self, *, config: ModelConfig, wte: nn.Embedding) -> None:
        super().__init__()
        self.weight = _vocab_matrix(config, wte)
        self.softcap = config.logit_softcap

    def forward(self, x: Tensor) -> Tensor:
        logits = F.linear(x, self.weight)
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


class CausalLM(nn.Module):
    """Decoder-only language model: ``Transformer`` trunk + ``LMHead``. Returns logits (B, T, V)."""

    def __init__(self, *, transformer: Transformer, lm_head: LMHead) -> None:
        super().__init__()
        if not transformer.config.causal:
            raise ValueError("CausalLM needs a causal config (causal=True), got a bidirectional encoder")
        self.config = transformer.config
        self.transformer = transformer
        self.lm_head = lm_head

    @classmethod
    def from_config(cls, config: ModelConfig) -> CausalLM:
        transformer = Transformer(config=config)
        return cls(transformer=transformer, lm_head=LMHead(config=config, wte=transformer.wte))

    def forward(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        hidden = self.transformer(
            idx, attention_mask=attention_mask, kv_cache=kv_cache, input_pos=input_pos, document_ids=document_ids
        )
        return self.lm_head(hidden)  # (B, T, vocab_size)

    def init_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return self.transformer.init_kv_cache(batch_size, max_len)

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count, a tied matrix counted once. ``non_embedding`` leaves out the vocabulary
        and position tables (wte, wpe, wtt and the LM head matrix, tied or not): the N of
        ``ModelConfig.flops_per_token``; value-embedding tables are tables too."""
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            t = self.transformer
            tables = (t.wte, t.wpe, t.wtt, *t.ve)
            for table in (self.lm_head.weight, *(m.weight for m in tables if m is not None)):
                params.pop(id(table), None)
        return sum(p.numel() for p in params.values())


# ---------------------------------------------------------------------------- encoder heads


class Pooler(nn.Module):
    """BERT pooler: tanh(dense(h[:, 0])), the first ([CLS]) token's state. (B, T, C) -> (B, C)."""

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.apply(partial(init_weights, std=config.init_std))

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class MLMHead(nn.Module):
    """BERT masked-LM head: dense -> activation -> norm -> vocabulary matrix + per-token bias.

    (..., C) -> (..., vocab_size); gather the masked positions first to save the big matmul.
    """

    def __init__(self, *, config: ModelConfig, wte: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.act = build_activation(config.mlp)
        self.norm = build_norm(config)
        self.apply(partial(init_weights, std=config.init_std))
        self.weight = _vocab_matrix(config, wte)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size, device=wte.weight.device, dtype=wte.weight.dtype))

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(self.norm(self.act(self.dense(hidden))), self.weight, self.bias)


class NSPHead(nn.Module):
    """BERT next-sentence prediction: pooled (B, C) -> logits (B, 2) for (is next, is random)."""

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.n_embd, 2)
        self.apply(partial(init_weights, std=config.init_std))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.proj(pooled)


class ClassificationHead(nn.Module):
    """Dropout + linear over the last dim: (..., C) -> (..., num_labels).

    ``dropout`` defaults to ``config.dropout``. ``bias=False``: no bias (transformers' GPT-2 / Llama
    sequence classifiers score without one; ``llmkit.hf.heads``).
    """

    def __init__(
        self, *, config: ModelConfig, num_labels: int, dropout: float | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        if num_labels <= 0:
            raise ValueError(f"num_labels must be > 0, got {num_labels}")
        self.drop = nn.Dropout(config.dropout if dropout is None else dropout)
        self.proj = nn.Linear(config.n_embd, num_labels, bias=bias)
        self.apply(partial(init_weights, std=config.init_std))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.drop(x))


class SequenceClassificationHead(ClassificationHead):
    """One label per sequence: pooled states (B, C) -> logits (B, num_labels)."""


class TokenClassificationHead(ClassificationHead):
    """One label per token: hidden states (B, T, C) -> logits (B, T, num_labels)."""


# ---------------------------------------------------------------------------- encoder models


class MaskedLMOutput(NamedTuple):
    """What ``MaskedLM.forward`` returns, always both fields.

    mlm_logits: (N, vocab_size) at the N positions selected by ``mlm_mask`` (row-major order,
        the order of ``labels[mlm_mask]``); every position (N = B*T) when no mask is given.
    nsp_logits: (B, 2) next-sentence logits from the pooled [CLS] state; class 0 = B follows A.
    """

    mlm_logits: Tensor
    nsp_logits: Tensor


class MaskedLM(nn.Module):
    """BERT-style encoder for pretraining: trunk + ``Pooler`` + ``MLMHead`` + ``NSPHead``.

    ``forward`` runs every head inside itself (so DDP/FSDP hooks see each parameter use) and
    returns :class:`MaskedLMOutput`. The MLM head runs on the selected positions only: gathering
    first saves the (B*T, C) x (C, V) vocabulary matmul on the ~85% unselected positions.
    An objective without NSP freezes ``pooler`` and ``nsp_head`` (``requires_grad_(False)``).
    """

    def __init__(self, *, transformer: Transformer, pooler: Pooler, mlm_head: MLMHead, nsp_head: NSPHead) -> None:
        super().__init__()
        if transformer.config.causal:
            raise ValueError("MaskedLM needs a bidirectional config (causal=False)")
        self.config = transformer.config
        self.transformer = transformer
        self.pooler = pooler
        self.mlm_head = mlm_head
        self.nsp_head = nsp_head

    @classmethod
    def from_config(cls, config: ModelConfig) -> MaskedLM:
        transformer = Transformer(config=config)
        return cls(
            transformer=transformer,
            pooler=Pooler(config=config),
            mlm_head=MLMHead(config=config, wte=transformer.wte),
            nsp_head=NSPHead(config=config),
        )

    def forward(
        self,
        idx: Tensor,
        *,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        mlm_mask: Tensor | None = None,
    ) -> MaskedLMOutput:
        """``idx`` (B, T); ``mlm_mask`` (B, T) bool, True at the positions to predict."""
        hidden = self.transformer(idx, token_type_ids=token_type_ids, attention_mask=attention_mask)  # (B, T, C)
        selected = hidden.flatten(0, 1) if mlm_mask is None else hidden[mlm_mask]  # (N, C)
        return MaskedLMOutput(self.mlm_head(selected), self.nsp_head(self.pooler(hidden)))  # (N, V), (B, 2)

    def encode(
        self, idx: Tensor, *, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """The trunk's hidden states (B, T, C), for inspection and feature extraction (no heads)."""
        return self.transformer(idx, token_type_ids=token_type_ids, attention_mask=attention_mask)


# ---------------------------------------------------------------------------- fine-tuning models


def last_token_states(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, T, C) -> (B, C): each row's state at its last real (non-pad) position."""
    if attention_mask is None:
        return hidden[:, -1]
    last = attention_mask.long().sum(dim=1).clamp(min=1) - 1  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class SequenceClassifier(nn.Module):
    """One label per sequence: trunk -> pooled state -> ``SequenceClassificationHead``.

    Encoders pool the [CLS] state through ``pooler`` (BERT); decoders, whose first token sees
    nothing else, take the last real token's state (GPT-2 / Radford 2018). Returns (B, num_labels).
    """

    def __init__(
        self, *, transformer: Transformer, head: SequenceClassificationHead, pooler: Pooler | None = None
    ) -> None:
        super().__init__()
        self.config = transformer.config
        self.transformer = transformer
        self.pooler = pooler
        self.head = head

    @classmethod
    def from_config(
        cls, config: ModelConfig, *, num_labels: int, dropout: float | None = None, head_bias: bool = True
    ) -> SequenceClassifier:
        return cls(
            transformer=Transformer(config=config),
            head=SequenceClassificationHead(config=config, num_labels=num_labels, dropout=dropout, bias=head_bias),
            pooler=None if config.causal else Pooler(config=config),
        )

    def forward(
        self, idx: Tensor, *, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        hidden = self.transformer(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)
        pooled = last_token_states(hidden, attention_mask) if self.pooler is None else self.pooler(hidden)
        return self.head(pooled)  # (B, num_labels)


class TokenClassifier(nn.Module):
    """One label per token: trunk -> ``TokenClassificationHead``. Returns (B, T, num_labels)."""

    def __init__(self, *, transformer: Transformer, head: TokenClassificationHead) -> None:
        super().__init__()
        self.config = transformer.config
        self.transformer = transformer
        self.head = head

    @classmethod
    def from_config(
        cls, config: ModelConfig, *, num_labels: int, dropout: float | None = None, head_bias: bool = True
    ) -> TokenClassifier:
        return cls(
            transformer=Transformer(config=config),
            head=TokenClassificationHead(config=config, num_labels=num_labels, dropout=dropout, bias=head_bias),
        )

    def forward(
        self, idx: Tensor, *, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        hidden = self.transformer(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.head(hidden)  # (B, T, num_labels)


class SpanLogits(NamedTuple):
    """What ``QuestionAnswering.forward`` returns: start and end logits, each (B, T)."""

    start_logits: Tensor
    end_logits: Tensor


class SpanHead(nn.Module):
    """Extractive QA: hidden states (B, T, C) -> (B, T, 2), a start and an end score per token
    (Devlin et al. 2019, section 4.2; transformers' ``qa_outputs``, no dropout in front)."""

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.n_embd, 2)
        self.apply(partial(init_weights, std=config.init_std))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden)


class QuestionAnswering(nn.Module):
    """Answer spans: encoder trunk -> ``SpanHead``. Returns :class:`SpanLogits` ((B, T) each)."""

    def __init__(self, *, transformer: Transformer, head: SpanHead) -> None:
        super().__init__()
        if transformer.config.causal:
            raise ValueError("QuestionAnswering needs a bidirectional encoder (causal=False)")
        self.config = transformer.config
        self.transformer = transformer
        self.head = head

    @classmethod
    def from_config(cls, config: ModelConfig, **_: object) -> QuestionAnswering:
        """``num_labels`` / ``head_bias`` (what the other task models take) do not apply: two outputs, with bias."""
        return cls(transformer=Transformer(config=config), head=SpanHead(config=config))

    def forward(
        self, idx: Tensor, *, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> SpanLogits:
        hidden = self.transformer(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)
        start, end = self.head(hidden).unbind(-1)  # (B, T, 2) -> 2 x (B, T)
        return SpanLogits(start, end)
