"""The one table of model classes: the name a checkpoint records (``model_class``) -> its class.

Every reader (checkpoints, FSDP consolidation, fine-tuning, Hugging Face conversion) and the
recipes look a class up here, so a new model class is registered once.
"""

from __future__ import annotations

from torch import nn

from llmkit.errors import LlmkitError
from llmkit.model.heads import CausalLM, MaskedLM, SequenceClassifier, TokenClassifier

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "CausalLM": CausalLM,
    "MaskedLM": MaskedLM,
    "SequenceClassifier": SequenceClassifier,
    "TokenClassifier": TokenClassifier,
}
# The classes a ModelConfig alone builds (``cls.from_config(config)``: what pretraining and Hugging
# Face imports give); task models need their number of labels too.
LANGUAGE_MODELS = ("CausalLM", "MaskedLM")


def model_class(name: str, *, where: str = "checkpoint") -> type[nn.Module]:
    """The class registered as ``name``; an unknown name is a clear error naming ``where`` it came from."""
    try:
        return MODEL_CLASSES[name]
    except KeyError:
        raise LlmkitError(
            f"{where}: unknown model class {name!r}; llmkit builds {', '.join(MODEL_CLASSES)}."
        ) from None
