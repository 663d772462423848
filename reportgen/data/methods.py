"""The saliency methods by name: what each computes, and whether its scores carry a sign.

The engine keeps the function of each (`reportgen.engine.methods`); this registry is what the
settings, records and the site need to know about them, without torch."""

from __future__ import annotations

from dataclasses import dataclass

from reportgen.errors import SettingsError


@dataclass(frozen=True)
class Method:
    """A saliency method: its name (the `--method` value) and a one-line description."""

    name: str
    summary: str
    signed: bool
    """Whether scores can be negative (the charts show magnitudes)."""
    attention_rows: bool = False
    """Whether the per-head scores are attention weights, each query's row summing to 1 (so
    `total` and `prediction` give every head the same score)."""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("attn-grad", "|A ⊙ ∂L/∂A| per head, one forward and one backward pass", False),
        Method("attention", "raw attention weights", False, attention_rows=True),
        Method("attattr", "integrated gradients on attention (A ⊙ mean_k ∂L(αA)/∂A), signed", True),
        Method("attn-norm", "‖α_ij f_h(x_j)‖ per head: attention × projected value norm", False),
        Method(
            "rollout",
            "attention rollout over layers (heads averaged); per head, the attention weights",
            False,
            attention_rows=True,
        ),
        Method(
            "grad-rollout",
            "gradient rollout over layers (heads averaged); per head, (A ⊙ ∂log p/∂A)⁺",
            False,
        ),
    )
}

ROLLOUTS = ("rollout", "grad-rollout")
"""Methods that also give a token-level relevance per layer, [L, T] (`Result.relevance`)."""

AGGREGATES = ("heads", "wang")
"""`--aggregate` of attn-grad: per head only, or also Wang et al. 2023's layer flow."""


def parse_method(name: str) -> Method:
    """The method called `name`; anything else is an error listing the methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise SettingsError(f"unknown method '{name}'. Available: {', '.join(METHODS)}") from None
