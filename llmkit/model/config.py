"""``ModelConfig``: every architecture knob of :class:`~llmkit.model.transformer.Transformer`.

One flat, keyword-only dataclass (litgpt style) covers GPT-2, Llama-style and BERT-style models.
It serialises to a plain dict (``to_dict``/``from_dict``) that is stored next to checkpoints, so
field names are part of the checkpoint format. Defaults describe a baby GPT-2.

Derived sizes are properties rather than stored fields, so a dict written today still means the
same model tomorrow:

* ``kv_heads``: ``n_kv_head`` or, when it is ``None``, ``n_head`` (plain multi-head attention).
* ``mlp_hidden_size``: ``intermediate_size`` or, when it is ``None``, ``4 * n_embd`` for
  gelu/gelu_tanh/relu (GPT-2), and for swiglu the Llama/litgpt rule
  ``round_up(int(2 * 4 * n_embd / 3), 64)``: two thirds of 4x keeps the parameter count of the
  three SwiGLU matrices equal to the two matrices of a 4x MLP (Shazeer 2020), rounded up to a
  multiple of 64 for efficient matmuls. ``n_embd=128`` gives 384, ``n_embd=4096`` gives 10944
  (Llama-7B rounds to 256 and has 11008: imported models set ``intermediate_size`` explicitly).

The modded-nanogpt options (Jordan et al. 2024, the GPT-2 speedrun; see ``transformer.py``) are
all off by default, so every config written before them means the same model: ``qk_norm``,
``mlp="relu2"``, ``zero_init_proj``, ``logit_softcap``, ``value_embeds`` and ``unet_skips``.

Build the model from a config whose ``vocab_size`` is set; ``0`` means "fill in from the
tokenizer", e.g. ``dataclasses.replace(cfg, vocab_size=len(tok))`` (``replace`` re-validates).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

MLPKind = Literal["gelu", "gelu_tanh", "relu", "relu2", "swiglu"]
NormKind = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
PosKind = Literal["learned", "sinusoidal", "rope"]

_SWIGLU_MULTIPLE_OF = 64


@dataclasses.dataclass(kw_only=True)
class ModelConfig:
    name: str = "gpt"
    causal: bool = True  # decoder (GPT/Llama) vs bidirectional encoder (BERT)
    vocab_size: int = 0  # 0 => filled in at runtime from the tokenizer; must be > 0 to build a model
    block_size: int = 64  # max positions
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention (Ainslie 2023); None => n_head
    n_embd: int = 128
    intermediate_size: int | None = None  # None => see ``mlp_hidden_size``
    mlp: MLPKind = "gelu"  # gelu (exact erf) | gelu_tanh (GPT-2 "gelu_new") | relu | relu2 (relu(x)^2) | swiglu
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"  # pre (GPT-2/Llama) | post (BERT: x = LN(x + sublayer(x)))
    pos: PosKind = "learned"
    rope_theta: float = 10000.0
    bias: bool = True  # bias in linear layers and layernorm
    tie_weights: bool = True  # LM/MLM head shares the token embedding matrix
    dropout: float = 0.0  # embeddings, attention probabilities, residual branches
    type_vocab_size: int = 0  # > 0 => token-type (segment) embeddings (BERT)
    embed_norm: bool = False  # norm right after the embedding sum (BERT)
    final_norm: bool = True  # norm after the last block (pre-LN models); False for post-LN BERT
    init_std: float = 0.02
    pad_token_id: int | None = None  # used by collators and to fill finished rows in generation
    # modded-nanogpt options, all off by default
    qk_norm: bool = False  # RMSNorm (learned weight, head_dim) of every q and k head before RoPE (Qwen3-style)
    zero_init_proj: bool = False  # residual output projections (attn/mlp c_proj) start at zero, not N(0, std/sqrt(2L))
    logit_softcap: float | None = None  # LM logits -> cap * tanh(logits / cap) (Gemma 2); None = off
    value_embeds: int = 0  # k > 0: k value-embedding tables mixed into v of the first k and last k layers
    unet_skips: bool = False  # layer L/2 + j adds a learned multiple of layer (L/2 - 1 - j)'s output

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if typing.get_origin(hints[f.name]) is Literal:
                choices = typing.get_args(hints[f.name])
                if getattr(self, f.name) not in choices:
                    raise ValueError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("vocab_size", "type_vocab_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must be > 0 and divide n_head ({self.n_head})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"pos='rope' needs an even head dim, got n_embd/n_head = {self.head_dim}")
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            raise ValueError(f"intermediate_size must be > 0 or None, got {self.intermediate_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("norm_eps", "init_std", "rope_theta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        self._validate_modded()
        pad = self.pad_token_id
        if pad is not None and (pad < 0 or (self.vocab_size > 0 and pad >= self.vocab_size)):
            raise ValueError(f"pad_token_id ({pad}) must be in [0, vocab_size={self.vocab_size})")

    def _validate_modded(self) -> None:
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or not cap > 0):
            raise ValueError(f"logit_softcap must be a number > 0 or None (off), got {cap!r}")
        if cap is not None and not self.causal:
            raise ValueError("logit_softcap caps the LM head of a causal model; this config has causal=False")
        ve = self.value_embeds
        if isinstance(ve, bool) or not isinstance(ve, int) or ve < 0 or 2 * ve > self.n_layer:
            raise ValueError(
                f"value_embeds must be an int in [0, n_layer/2 = {self.n_layer // 2}] (tables for the first "
                f"and the last value_embeds layers), got {ve!r}"
            )
        for name in ("qk_norm", "zero_init_proj", "unet_skips"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.unet_skips and self.n_layer % 2:
            raise ValueError(
                f"unet_skips pairs the first and second half of the layers: n_layer must be even, got {self.n_layer}"
            )

    # ------------------------------------------------------------------ derived sizes

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def mlp_hidden_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.mlp == "swiglu":
            hidden = int(2 * 4 * self.n_embd / 3)
            return _SWIGLU_MULTIPLE_OF * math.ceil(hidden / _SWIGLU_MULTIPLE_OF)
        return 4 * self.n_embd

    @property
    def non_embedding_params(self) -> int:
        """Parameters outside the vocabulary/position tables (wte, wpe, wtt, value embeddings, an untied LM head).

        Computed from the config alone; equals ``CausalLM.num_params(non_embedding=True)``.
        """
        c, hd, i = self.n_embd, self.head_dim, self.mlp_hidden_size
        norm = c * (2 if self.norm == "layernorm" and self.bias else 1)
        qkv_out = (self.n_head + 2 * self.kv_heads) * hd
        attn = c * qkv_out + self.n_head * hd * c + (qkv_out + c if self.bias else 0)
        if self.mlp == "swiglu":
            mlp = 3 * c * i + (2 * i + c if self.bias else 0)
        else:
            mlp = 2 * c * i + (i + c if self.bias else 0)
        block = 2 * norm + attn + mlp
        block += 2 * hd if self.qk_norm else 0  # q_norm, k_norm weights
        block += 2 if self.value_embeds else 0  # ve_lambdas
        skips = self.n_layer // 2 if self.unet_skips else 0  # skip_weights (value-embedding tables are tables)
        return self.n_layer * block + norm * (int(self.final_norm) + int(self.embed_norm)) + skips

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs (forward + backward) per token at context length ``seq_len``.

        The PaLM (Chowdhery 2022, App. B) / nanoGPT estimate ``6N + 12·L·H·Q·T``: 6 FLOPs per
        non-embedding parameter N (2 forward multiply-adds, 4 backward) plus the attention score
        and value matmuls, with L layers, H heads, Q head dim and T = ``seq_len``. Embedding
        lookups are free; the vocabulary projection is left out as in PaLM, which underestimates
        tiny models whose vocabulary matrix is large compared to the blocks.
        """
        return 6 * self.non_embedding_params + 12 * self.n_layer * self.n_head * self.head_dim * seq_len

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, model: Any) -> ModelConfig:
        """The config of an llmkit model (its ``.config``), typed; anything else is a TypeError."""
        cfg = getattr(model, "config", None)
        if not isinstance(cfg, cls):
            raise TypeError(f"{type(model).__name__} is not an llmkit model (no ModelConfig at .config)")
        return cfg

    @classmethod
    def from_dict(cls, d: typing.Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        return cls(**d)
