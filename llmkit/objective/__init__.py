"""Training objectives: callables ``(model, batch) -> (loss, metrics)``.

The trainer only ever calls an objective; which model head it needs and what a batch holds is
between the objective and the recipe that builds both.
"""
