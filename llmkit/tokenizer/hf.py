"""Hugging Face tokenizer directories behind llmkit's ``Tokenizer`` interface (no ``transformers``).

A pretrained model's directory holds its tokenizer in one of three forms, tried in this order:

    tokenizer.json    a ``tokenizers`` pipeline (GPT-2 byte-level BPE, BERT WordPiece, Llama BPE, ...)
    vocab.txt         a BERT WordPiece vocabulary: rebuilt as transformers' BertTokenizer builds it
                      (BertNormalizer with ``do_lower_case`` / ``strip_accents`` /
                      ``tokenize_chinese_chars`` from ``tokenizer_config.json``)
    tokenizer.model   a SentencePiece model (Llama 1/2, T5-style): encoded with ``sentencepiece``

beside ``tokenizer_config.json`` / ``special_tokens_map.json``, which name the special tokens.
Ids are the pretrained model's own, so the llmkit convention pad=0 unk=1 bos=2 eos=3 does not
hold: read ``pad_id`` etc. from the tokenizer. Missing roles fall back sensibly for llmkit's
callers: an encoder's ``bos_id``/``eos_id`` are [CLS]/[SEP], ``pad_id`` falls back to ``eos_id``
(GPT-2 has only ``<|endoftext|>``); ``unk_id`` may be None (byte-level BPE never needs it).

``encode(text)`` gives the ids of ``transformers``' ``tokenizer(text, add_special_tokens=False)``;
``encode_hf(text)`` those of ``tokenizer(text)`` (with the model's own [CLS]/[SEP] or <s>),
``add_bos``/``add_eos`` say which ends that adds. Truncation or padding stored in a
tokenizer.json is switched off, as transformers does.

``save(dir)`` writes the Hugging Face files plus ``llmkit_tokenizer.json`` (kind "hf", checksum),
so both ``llmkit.tokenizer.load(dir)`` and ``transformers.AutoTokenizer`` read the directory.
``export_tokenizer`` writes any llmkit tokenizer in Hugging Face form where one exists. The
``tokenizers`` / ``sentencepiece`` engines behind ``HFTokenizer`` are in ``llmkit.tokenizer.hf_backends``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmkit.tokenizer.base import FORMAT, FORMAT_VERSION, META_FILE, Tokenizer
from llmkit.tokenizer.hf_backends import HFTokenizerError, SentencePieceBackend, TokenizersBackend, wordpiece

HF_META_FILE = "llmkit_tokenizer.json"
TOKENIZER_JSON = "tokenizer.json"  # same name as llmkit's meta file: told apart by content
VOCAB_TXT = "vocab.txt"
SP_MODEL = "tokenizer.model"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.43 saves a chat template
ROLES = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")
_LLMKIT_META = re.compile(rb'"format"\s*:\s*"' + re.escape(FORMAT.encode()) + rb'"')
# Well-known special tokens, used only when a directory has no tokenizer_config.json / special_tokens_map.json.
_KNOWN = {
    "<|endoftext|>": ("bos", "eos", "unk"),
    "[PAD]": ("pad",), "<pad>": ("pad",), "[UNK]": ("unk",), "<unk>": ("unk",),
    "[CLS]": ("cls",), "[SEP]": ("sep",), "[MASK]": ("mask",), "<mask>": ("mask",),
    "<s>": ("bos",), "</s>": ("eos",),
}  # fmt: skip


def _is_llmkit_meta(path: Path) -> bool:
    """True for llmkit's own tokenizer.json (it starts with ``"format": "llmkit.tokenizer"``)."""
    with open(path, "rb") as f:
        return bool(_LLMKIT_META.search(f.read(512)))


def is_hf_tokenizer_dir(directory: str | os.PathLike) -> bool:
    """Does ``directory`` hold a Hugging Face tokenizer (rather than an llmkit one, or nothing)?"""
    d = Path(directory)
    if not d.is_dir():
        return False
    if (d / HF_META_FILE).is_file():
        return True
    if (d / TOKENIZER_JSON).is_file():
        return not _is_llmkit_meta(d / TOKENIZER_JSON)
    return (d / VOCAB_TXT).is_file() or (d / SP_MODEL).is_file()


def _token_text(value: Any) -> str | None:
    """A special token from a config value: a string or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFTokenizerError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(obj, dict):
        raise HFTokenizerError(f"{path}: expected a JSON object.")
    return obj


def _clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop the spaces WordPiece decoding leaves before punctuation."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(a, b)
    return text


# ---------------------------------------------------------------------------- the tokenizer


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory's files, in memory, behind llmkit's interface."""

    kind = "hf"

    def __init__(self, files: Mapping[str, bytes], *, source: str = "<memory>") -> None:
        super().__init__(user_special_tokens=[])
        self.source = source
        self.config: dict[str, Any] = {}
        for name in CONFIG_FILES:  # special_tokens_map.json overrides tokenizer_config.json, as in transformers
            if name in files:
                try:
                    obj = json.loads(files[name].decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise HFTokenizerError(f"{source}/{name}: not valid JSON ({e}).") from None
                if isinstance(obj, dict):
                    self.config.update(obj)
        has_config = any(name in files for name in CONFIG_FILES)
        named = {role: _token_text(self.config.get(f"{role}_token")) for role in ROLES}
        added = {
            int(i): t["content"]
            for i, t in (self.config.get("added_tokens_decoder") or {}).items()
            if isinstance(t, Mapping) and isinstance(t.get("content"), str)
        }

        if TOKENIZER_JSON in files:
            from tokenizers import Tokenizer as RawTokenizer

            self.backend_name = "tokenizers"
            try:
                raw = RawTokenizer.from_str(files[TOKENIZER_JSON].decode("utf-8"))
            except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
                raise HFTokenizerError(
                    f'{source}/{TOKENIZER_JSON} is not an llmkit tokenizer file (no "format": "{FORMAT}"), '
                    f"nor a Hugging Face tokenizers file that the tokenizers library can read: {e}."
                ) from None
            self.backend: Any = TokenizersBackend(raw)
            self._files = {n: files[n] for n in (TOKENIZER_JSON, *CONFIG_FILES, CHAT_TEMPLATE_FILE) if n in files}
        elif VOCAB_TXT in files:
            self.backend_name = "wordpiece"
            defaults = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
            # BertTokenizer's defaults, unless the config names the role (even as null)
            named = {r: named[r] if f"{r}_token" in self.config else defaults.get(r) for r in ROLES}
            specials = {r: t for r, t in named.items() if t is not None}
            self.backend = TokenizersBackend(wordpiece(files[VOCAB_TXT], self.config, specials, source))
            self._files = {n: files[n] for n in (VOCAB_TXT, *CONFIG_FILES, CHAT_TEMPLATE_FILE) if n in files}
        elif SP_MODEL in files:
            self.backend_name = "sentencepiece"
            try:
                self.backend = SentencePieceBackend(files[SP_MODEL], added)
            except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError
                raise HFTokenizerError(f"{source}/{SP_MODEL}: not a SentencePiece model ({e}).") from None
            sp = self.backend.sp
            for role, i in (("unk", sp.unk_id()), ("bos", sp.bos_id()), ("eos", sp.eos_id()), ("pad", sp.pad_id())):
                if named[role] is None and f"{role}_token" not in self.config and i >= 0:
                    named[role] = sp.id_to_piece(i)
            self._files = {n: files[n] for n in (SP_MODEL, *CONFIG_FILES, CHAT_TEMPLATE_FILE) if n in files}
        else:
            raise HFTokenizerError(f"{source}: no {TOKENIZER_JSON}, {VOCAB_TXT} or {SP_MODEL}; not an HF tokenizer.")

        if not has_config:  # a bare tokenizer.json: recognise the usual special tokens by name
            for content in self.backend.special_added_tokens():
                for role in _KNOWN.get(content, ()):
                    named[role] = named[role] or content
        # role -> token, as transformers has them
        self.hf_special_tokens = {r: t for r, t in named.items() if t is not None}
        ids: dict[str, int] = {}
        for role, token in self.hf_special_tokens.items():
            i = self.backend.token_to_id(token)
            if i is None:
                raise HFTokenizerError(f"{source}: the {role} token {token!r} is not in the vocabulary.")
            ids[role] = i
        self.vocab_size = self.backend.vocab_size
        self.unk_id = ids.get("unk")  # type: ignore[assignment]
        self.cls_id, self.sep_id, self.mask_id = ids.get("cls"), ids.get("sep"), ids.get("mask")
        self.bos_id = ids.get("bos", self.cls_id)  # type: ignore[assignment]
        self.eos_id = ids.get("eos", self.sep_id)  # type: ignore[assignment]
        self.pad_id = next(i for i in (ids.get("pad"), self.eos_id, 0) if i is not None)
        self.special_tokens = {t: ids[r] for r, t in self.hf_special_tokens.items()}
        for t in self._additional_special_tokens():
            if (i := self.backend.token_to_id(t)) is not None:
                self.special_tokens[t] = i
        self.prefix_ids, self.suffix_ids = self._hf_template()
        self.add_bos = bool(self.prefix_ids) and self.prefix_ids[-1] == self.bos_id
        self.add_eos = bool(self.suffix_ids) and self.suffix_ids[0] == self.eos_id
        self._drop = {i for i in (ids.get("pad"), self.bos_id, self.eos_id) if i is not None}
        self._checksum: str | None = None

    @property
    def chat_template(self) -> str | None:
        """The model's own chat template (Jinja): ``chat_template.jinja``, else tokenizer_config.json's
        ``chat_template`` (a string, or a list of named templates: the one named "default")."""
        if CHAT_TEMPLATE_FILE in self._files:
            return self._files[CHAT_TEMPLATE_FILE].decode("utf-8")
        value = self.config.get("chat_template")
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
            value = named.get("default")
        return value if isinstance(value, str) and value.strip() else None

    def _additional_special_tokens(self) -> list[str]:
        extra = self.config.get("additional_special_tokens") or self.config.get("extra_special_tokens") or []
        if isinstance(extra, Mapping):
            extra = list(extra.values())
        return [t for t in (_token_text(v) for v in extra) if t is not None]

    def _hf_template(self) -> tuple[list[int], list[int]]:
        """The ids transformers puts before and after one sequence (``add_special_tokens=True``)."""
        cfg = self.config
        if self.backend_name == "sentencepiece":
            prefix = [self.bos_id] if cfg.get("add_bos_token", True) and self.bos_id is not None else []
            suffix = [self.eos_id] if cfg.get("add_eos_token", False) and self.eos_id is not None else []
            return prefix, suffix
        plain = self.backend.encode(["a"])[0]
        full = self.backend.encode(["a"], specials=True)[0]
        start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
        prefix, suffix = full[:start], full[start + len(plain) :]
        # Llama-style configs switch the ends on and off (transformers rebuilds the post-processor from them).
        if isinstance(cfg.get("add_bos_token"), bool) and self.bos_id is not None and self.backend_name == "tokenizers":
            prefix = [self.bos_id] if cfg["add_bos_token"] else [i for i in prefix if i != self.bos_id]
        if isinstance(cfg.get("add_eos_token"), bool) and self.eos_id is not None and self.backend_name == "tokenizers":
            suffix = [self.eos_id] if cfg["add_eos_token"] else [i for i in suffix if i != self.eos_id]
        return prefix, suffix

    # --- encoding -------------------------------------------------------------------------------
    def _encode_many(self, texts: list[str], *, num_threads: int = 1) -> list[list[int]]:
        return self.backend.encode(list(texts))

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        if (bos and self.bos_id is None) or (eos and self.eos_id is None):
            role = "bos" if bos and self.bos_id is None else "eos"
            raise HFTokenizerError(f"{self.source}: this tokenizer has no {role} token.")
        return super().encode(text, bos=bos, eos=eos)

    def encode_hf(self, text: str) -> list[int]:
        """Ids as ``transformers`` gives them for ``tokenizer(text)``: with the model's special tokens."""
        return [*self.prefix_ids, *self.backend.encode([text])[0], *self.suffix_ids]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
        """``encode(text)`` and each token's character span in ``text``; None without ``tokenizers``."""
        if not isinstance(self.backend, TokenizersBackend):
            return None
        return self.backend.encode_with_offsets(text)

    # --- decoding -------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; pad, bos and eos (for encoders [CLS]/[SEP]) are dropped."""
        text = self.backend.decode([int(i) for i in ids if int(i) not in self._drop])
        if self.config.get("clean_up_tokenization_spaces") and self.backend.model_kind != "BPE":
            text = _clean_up_tokenization(text)  # as transformers 5 does (it skips BPE models)
        return text

    def id_to_piece(self, i: int) -> str:
        piece = self.backend.id_to_token(int(i))
        if piece is None:
            raise IndexError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return piece

    def piece_to_id(self, piece: str) -> int | None:
        return self.backend.token_to_id(piece)

    # --- files ----------------------------------------------------------------------------------
    def checksum(self) -> str:
        if self._checksum is None:
            h = hashlib.sha256()
            for name in sorted(self._files):
                h.update(name.encode() + b"\0" + hashlib.sha256(self._files[name]).digest())
            self._checksum = h.hexdigest()
        return self._checksum

    def save_hf(self, directory: str | os.PathLike) -> Path:
        """Write only the Hugging Face files (what transformers reads)."""
        from llmkit.io import atomic_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self._files.items():
            with atomic_file(directory / name, "wb") as f:
                f.write(data)
        return directory

    def save(self, directory: str | os.PathLike) -> Path:
        from llmkit.io import write_json

        directory = self.save_hf(directory)
        write_json(
            directory / HF_META_FILE,
            self._meta(backend=self.backend_name, files=sorted(self._files), hf_special_tokens=self.hf_special_tokens),
        )
        return directory

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> HFTokenizer:
        directory = Path(directory)
        if not directory.is_dir():
            raise HFTokenizerError(f"{directory}: no such tokenizer directory.")
        names = [TOKENIZER_JSON, VOCAB_TXT, SP_MODEL, *CONFIG_FILES, CHAT_TEMPLATE_FILE]
        if (directory / TOKENIZER_JSON).is_file() and _is_llmkit_meta(directory / TOKENIZER_JSON):
            raise HFTokenizerError(f"{directory / META_FILE} is an llmkit tokenizer; use llmkit.tokenizer.load.")
        files = {n: (directory / n).read_bytes() for n in names if (directory / n).is_file()}
        tok = cls(files, source=str(directory))
        meta_path = directory / HF_META_FILE
        if meta_path.is_file():
            meta = _read_json(meta_path)
            if meta.get("format") != FORMAT or meta.get("kind") != cls.kind:
                raise HFTokenizerError(f"{meta_path} is not an llmkit Hugging Face tokenizer file.")
            if meta.get("format_version", 0) > FORMAT_VERSION:
                raise HFTokenizerError(f"{meta_path} has format_version {meta.get('format_version')}; upgrade llmkit.")
            if meta.get("checksum") != tok.checksum():
                raise HFTokenizerError(
                    f"{directory}: the tokenizer files do not match the checksum in {HF_META_FILE}; "
                    "they were changed or damaged after llmkit saved them."
                )
        return tok

    def __repr__(self) -> str:
        return (f"HFTokenizer(backend={self.backend_name!r}, vocab_size={self.vocab_size}, "
                f"source={self.source!r})")  # fmt: skip


def load_hf_tokenizer(directory: str | os.PathLike) -> HFTokenizer:
    """The tokenizer of a Hugging Face model directory (tokenizer.json, vocab.txt or tokenizer.model)."""
    return HFTokenizer.from_dir(directory)


# ---------------------------------------------------------------------------- export


def export_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write ``tokenizer`` as Hugging Face tokenizer files into ``directory``.

    An ``HFTokenizer`` writes back its own files. An llmkit SentencePiece BPE tokenizer becomes
    ``tokenizer.model`` + ``tokenizer_config.json`` for transformers' ``LlamaTokenizer`` set up like
    llmkit's (no dummy prefix, byte fallback, pad/unk/bos/eos = 0..3, nothing added by default);
    transformers then gives the same ids, except that it also matches "<s>"/"</s>"/"<pad>"/"<unk>"
    written in the text as special tokens. Unigram and char tokenizers have no faithful Hugging
    Face form: ``HFTokenizerError``.
    """
    from llmkit.io import write_json

    directory = Path(directory)
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.save_hf(directory)
    if tokenizer.kind != "bpe":
        why = {
            "unigram": "transformers reads every SentencePiece tokenizer.model as BPE, so a unigram model would "
            "split text differently",
            "char": "no Hugging Face tokenizer class is character-level with llmkit's byte fallback",
        }.get(tokenizer.kind, "llmkit does not know its Hugging Face form")
        raise HFTokenizerError(
            f"Cannot export a {tokenizer.kind!r} tokenizer in Hugging Face form: {why}. Export the model "
            "without it (llmkit export ... include_tokenizer=false); its llmkit tokenizer stays usable with llmkit."
        )
    from llmkit.io import atomic_file

    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / SP_MODEL, "wb") as f:
        f.write(tokenizer._model)  # type: ignore[attr-defined]
    user = list(tokenizer.user_special_tokens)
    special = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    for tok, role in (("[CLS]", "cls_token"), ("[SEP]", "sep_token"), ("[MASK]", "mask_token")):
        if tok in user:
            special[role] = tok
    added = {
        str(i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
                 "special": True}
        for t, i in tokenizer.special_tokens.items()
    }  # fmt: skip
    write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizer",
            **special,
            "additional_special_tokens": [t for t in user if t not in special.values()],
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,  # llmkit trains without SentencePiece's dummy prefix
            "legacy": False,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": added,
            "model_max_length": 1_000_000_000,
        },
    )
    write_json(directory / "special_tokens_map.json", special)
    return directory


__all__ = [
    "HFTokenizer",
    "HFTokenizerError",
    "HF_META_FILE",
    "export_tokenizer",
    "is_hf_tokenizer_dir",
    "load_hf_tokenizer",
]
