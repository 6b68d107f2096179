"""Task metrics for ``llmkit evaluate``, each an accumulator with constant memory.

``update(...)`` per batch, ``compute() -> dict`` (plain numbers, JSON-ready), ``table()`` (rich),
``merge(other)`` to combine shards or DDP ranks, ``reset()``.

- ``ClassificationMetrics`` (seq_cls): accuracy, macro/micro/weighted P/R/F1, per class, confusion matrix.
- ``EntityMetrics`` (token_cls): entity-level P/R/F1 per type, seqeval's (conlleval) span rules.
- ``GenerationMetrics`` (sft): corpus BLEU and chrF (sacrebleu), ROUGE-1/2/L (rouge-score).
- ``PredictionWriter``: stream predictions to a JSONL/text file, atomically.

sacrebleu and rouge-score are imported only when a ``GenerationMetrics`` is built.
"""

from llmkit.metric.classification import ClassificationMetrics
from llmkit.metric.generation import GenerationMetrics, UnicodeRougeTokenizer
from llmkit.metric.io import PredictionWriter
from llmkit.metric.ner import EntityMetrics, extract_entities

__all__ = [
    "ClassificationMetrics",
    "EntityMetrics",
    "GenerationMetrics",
    "PredictionWriter",
    "UnicodeRougeTokenizer",
    "extract_entities",
]
