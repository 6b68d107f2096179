"""Model definitions: one configurable Transformer trunk and the heads composed onto it."""

from llmkit.model.config import ModelConfig
from llmkit.model.heads import (
    CausalLM,
    ClassificationHead,
    LMHead,
    MaskedLM,
    MaskedLMOutput,
    MLMHead,
    NSPHead,
    Pooler,
    QuestionAnswering,
    SequenceClassificationHead,
    SequenceClassifier,
    SpanHead,
    SpanLogits,
    TokenClassificationHead,
    TokenClassifier,
)
from llmkit.model.transformer import KVCache, Transformer

__all__ = [
    "CausalLM",
    "ClassificationHead",
    "KVCache",
    "LMHead",
    "MaskedLM",
    "MaskedLMOutput",
    "MLMHead",
    "ModelConfig",
    "NSPHead",
    "Pooler",
    "QuestionAnswering",
    "SequenceClassificationHead",
    "SequenceClassifier",
    "SpanHead",
    "SpanLogits",
    "TokenClassificationHead",
    "TokenClassifier",
    "Transformer",
]
