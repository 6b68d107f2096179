"""Training objectives: loss functions ``(model, batch) -> LossOutput`` that call only ``model(...)``.

The contract (what the trainer relies on, for one process, gradient accumulation and N ranks):

- ``num_targets(batch)``: the number of targets of each loss term, from the batch alone (no
  model), e.g. ``{"lm": labels != -100 summed}``. The trainer adds these over the micro-batches
  of a step and over ranks *before* the forward passes.
- ``objective(model, batch)``: a :class:`LossOutput` whose ``sums`` hold each term's loss
  *summed* over the batch's targets (with any term weight applied) and whose ``metrics`` hold
  ``(numerator, denominator)`` tensors, reported as sum(numerators) / sum(denominators).

The trainer's loss is then ``sum over terms of (summed loss) / (global number of targets)``
(torchtune's normalisation): k micro-batches of B/k, or N ranks of B/N, give the gradient one
batch of B gives, whatever the number of targets in each piece. Metrics stay tensors on the
device and reach the host only at log steps. Which batches an objective trains on and which model
class it needs are chosen by the recipe (``llmkit.recipes.pretrain.OBJECTIVES``), not here.
"""

from llmkit.objective.base import LossOutput, ratio

__all__ = ["LossOutput", "ratio"]
