"""The grounding information gain's surprisals (see `reportgen.data.grounding`): two plain
forward passes per input, one with its own segments and one with the counterfactual, no
gradients and no head touched."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reportgen.data.examples import Example
from reportgen.data.grounding import Gain
from reportgen.data.tasks import Task
from reportgen.engine.encoding import encode
from reportgen.engine.loading import LoadedModel
from reportgen.engine.objectives import forward
from reportgen.errors import SaliencyError


@torch.no_grad()
def surprisals(
    lm: LoadedModel,
    examples: Sequence[Example],
    counterfactuals: Sequence[Example],
    limit: int | None = None,
    truncate: bool = False,
) -> list[Gain]:
    """Each input's target surprisal (−log p, nats) with its own text and with its
    counterfactual, one input per pass (what a plain forward of each gives)."""
    if lm.task is not Task.CAUSAL_LM:
        raise SaliencyError(
            f"model '{lm.name}' is a {lm.task.value} model; the information gain compares a "
            "causal LM's surprisal of the target, so compare causal LMs for it"
        )
    out = []
    for ex, cf in zip(examples, counterfactuals, strict=True):
        own, other = (encode(e, lm, limit, truncate) for e in (ex, cf))
        values = [float(forward(lm, [row]).losses[0]) for row in (own, other)]
        out.append(Gain(ex.id, values[0], values[1]))
    return out
