"""Config nodes of fine-tuning that ``evaluate`` shares."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationEvalConfig:
    """How sft models generate when they are scored (BLEU, chrF, ROUGE)."""

    num_beams: int = 1  # 1 = greedy
    length_penalty: float = 1.0
    max_new_tokens: int = 48
    max_examples: int = 200  # generated during training-time evaluation (0 = all); `evaluate` uses all
