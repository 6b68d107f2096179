"""Hugging Face model directories <-> llmkit, without ``transformers``.

A Hugging Face model directory holds ``config.json``, the weights (``model.safetensors``, its
sharded ``model.safetensors.index.json`` form, or ``pytorch_model.bin``) and tokenizer files.
``load_hf`` reads such a directory into an llmkit model; ``export_hf`` writes an llmkit model back
in that layout, loadable by ``transformers.AutoModelForCausalLM`` / ``BertForPreTraining``;
``resolve_init("hf:DIR")`` / ``load_model("hf:DIR")`` are what recipes call for an ``hf:`` reference.

Supported ``model_type``s and what they become::

    gpt2        CausalLM   pre-LN, learned positions, LayerNorm, GELU (tanh), Conv1D weights transposed
    llama       CausalLM   pre-LN, RoPE, RMSNorm, SwiGLU, grouped-query attention
    bert        MaskedLM   post-LN, embedding norm, token types, pooler + MLM + NSP heads
    distilbert  MaskedLM   like bert without token types, pooler or NSP (those two start fresh)

Modules, top to bottom:

    peft.py      a LoRA fine-tune of an hf: base as a PEFT adapter directory (``format=peft``)
    heads.py     fine-tuned classifiers as ``*For{Sequence,Token}Classification`` (head bias, pooling, labels)
    refs.py      ``hf:DIR`` / ``hf:pkg:NAME`` references -> directory, model, tokenizer
    weights.py   parameter-name tables and ``load_hf`` (import)
    writer.py    ``export_hf``: tensors under Hugging Face names, config.json, tokenizer, written atomically
    export_config.py  ``ModelConfig`` -> ``config.json``: the architecture (gpt2, llama, qwen3, bert) or why none
    configs.py   ``config.json`` -> ``ModelConfig``
    files.py     reading ``config.json`` and the weight files (safetensors, ``weights_only`` torch)

Tokenizer files (``tokenizer.json``, ``vocab.txt``, ``tokenizer.model``) are read by
``llmkit.tokenizer.hf`` (a tokenizer, so it lives in the bottom layer); its public names are
re-exported here.
"""

from llmkit.hf.configs import config_from_hf, hf_model_type
from llmkit.hf.files import SUPPORTED_MODEL_TYPES, HFFormatError, load_hf_tensors, read_hf_config
from llmkit.hf.refs import (
    PACKAGED_MODELS,
    PREFIX,
    hf_dir,
    is_hf_ref,
    load_model,
    looks_like_hf_dir,
    package_model_dir,
    resolve_init,
)
from llmkit.hf.weights import load_hf
from llmkit.hf.writer import export_hf
from llmkit.tokenizer.hf import HFTokenizer, HFTokenizerError, export_tokenizer, is_hf_tokenizer_dir, load_hf_tokenizer

__all__ = [
    "PACKAGED_MODELS",
    "PREFIX",
    "SUPPORTED_MODEL_TYPES",
    "HFFormatError",
    "HFTokenizer",
    "HFTokenizerError",
    "config_from_hf",
    "export_hf",
    "export_tokenizer",
    "hf_dir",
    "hf_model_type",
    "is_hf_ref",
    "is_hf_tokenizer_dir",
    "load_hf",
    "load_hf_tensors",
    "load_hf_tokenizer",
    "load_model",
    "looks_like_hf_dir",
    "package_model_dir",
    "read_hf_config",
    "resolve_init",
]
