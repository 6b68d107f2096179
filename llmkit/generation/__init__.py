"""Text generation: sampling, streaming ``generate`` and ``beam_search`` over a ``KVCache``.

``KVCache`` lives in ``llmkit.model.transformer`` (its layout belongs to the attention code) and is
re-exported here.
"""

from llmkit.generation.sampling import (
    apply_repetition_penalty,
    beam_search,
    generate,
    next_token_probs,
    sample_next,
)
from llmkit.model.transformer import KVCache

__all__ = ["KVCache", "apply_repetition_penalty", "beam_search", "generate", "next_token_probs", "sample_next"]
