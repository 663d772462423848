"""What the engine computes for one example, as numpy arrays and plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from reportgen.data.examples import Example


@dataclass(frozen=True)
class TokenSpan:
    """A named segment as a token range [start, end)."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class Ablation:
    """Objective value with the top-k grid heads zeroed, next to k random heads zeroed."""

    heads: tuple[tuple[int, int], ...]
    """The zeroed top heads, (layer, head), 0-based, strongest first."""
    value: float
    """Objective value of the intact model."""
    value_top: float
    value_random: float
    """Mean over `draws` seeded random sets of k heads."""
    draws: int

    @property
    def delta_top(self) -> float:
        return self.value_top - self.value

    @property
    def delta_random(self) -> float:
        return self.value_random - self.value


@dataclass(frozen=True)
class Result:
    """One example's saliency and everything the report shows about it."""

    example: Example
    tokens: tuple[str, ...]
    spans: tuple[TokenSpan, ...]
    target: str | None
    """Target text (given, or predicted when `target_given` is false); None for a bare encoder."""
    target_given: bool
    predicted: str | None
    """The model's top prediction at the prediction position (label name for classifiers)."""
    value: float
    """p(target) (a multi-token target's joint probability), or the cosine for a bare encoder."""
    loss: float
    prediction_position: int | None
    scores: np.ndarray
    """float32 [layers, heads, T, T]; rows are queries, columns keys."""
    head_scores: Mapping[str, np.ndarray]
    """float32 [layers, heads] shares summing to 1, per metric name."""
    ablation: Ablation | None
