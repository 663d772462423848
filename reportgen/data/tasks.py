"""What a model computes, which decides the objective whose gradient is taken."""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """A model's task, detected from the architecture its config names."""

    CAUSAL_LM = "causal-lm"
    MASKED_LM = "masked-lm"
    CLASSIFICATION = "sequence-classification"
    ENCODER = "encoder"
