"""The one table of model classes: the name a checkpoint records (``model_class``) -> its class.

Every reader (checkpoints, FSDP consolidation, fine-tuning, Hugging Face conversion) and the
recipes look a class up here, so a new model class is registered once.
"""

from __future__ import annotations

from torch import nn

from llmkit.errors import LlmkitError
from llmkit.model.heads import CausalLM, MaskedLM, QuestionAnswering, SequenceClassifier, TokenClassifier

# The classes a ModelConfig alone builds (``cls.from_config(config)``: what pretraining and Hugging
# Face imports give); task models need their number of labels too (``cls.from_config(config, num_labels=n)``).
LanguageModelClass = type[CausalLM] | type[MaskedLM]
TaskModelClass = type[SequenceClassifier] | type[TokenClassifier] | type[QuestionAnswering]

LANGUAGE_MODEL_CLASSES: dict[str, LanguageModelClass] = {"CausalLM": CausalLM, "MaskedLM": MaskedLM}
TASK_MODEL_CLASSES: dict[str, TaskModelClass] = {
    "SequenceClassifier": SequenceClassifier,
    "TokenClassifier": TokenClassifier,
    "QuestionAnswering": QuestionAnswering,
}
MODEL_CLASSES: dict[str, type[nn.Module]] = {**LANGUAGE_MODEL_CLASSES, **TASK_MODEL_CLASSES}
LANGUAGE_MODELS = tuple(LANGUAGE_MODEL_CLASSES)


def _unknown(name: str, where: str) -> LlmkitError:
    return LlmkitError(f"{where}: unknown model class {name!r}; llmkit builds {', '.join(MODEL_CLASSES)}.")


def model_class(name: str, *, where: str = "checkpoint") -> LanguageModelClass:
    """The language model class registered as ``name`` (one of :data:`LANGUAGE_MODELS`, built by
    ``from_config(config)``); any other name is a clear error naming ``where`` it came from."""
    if name in LANGUAGE_MODEL_CLASSES:
        return LANGUAGE_MODEL_CLASSES[name]
    if name in TASK_MODEL_CLASSES:
        raise LlmkitError(f"{where}: {name} is a task model: it is built with its labels (see task_model_class).")
    raise _unknown(name, where)


def task_model_class(name: str, *, where: str = "checkpoint") -> TaskModelClass:
    """The task model class registered as ``name`` (built by ``from_config(config, num_labels=n)``)."""
    if name in TASK_MODEL_CLASSES:
        return TASK_MODEL_CLASSES[name]
    raise _unknown(name, where)
