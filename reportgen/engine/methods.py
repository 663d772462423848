"""The saliency methods, one function each, in a registry keyed by the names of
`reportgen.data.methods.METHODS`.

Each takes the model, a batch of encoded rows and the settings, and returns the base pass (its
targets and values) and each layer's scores [B, H, T, T] (rows are queries, columns keys):
- `attn-grad`: A ⊙ ∂L/∂A (Wang et al. 2023, arXiv:2305.14160), every head from one forward and
  one backward pass; the magnitude is taken when the scores are copied out.
- `attention`: the raw attention weights A.
- `attattr`: integrated gradients on attention (Hao et al. 2021, arXiv:2004.11207): layer l's
  attention is scaled by α = k/m while the other layers run normally, and
  S_l = A_l ⊙ mean_k ∂L(α_k A_l)/∂A_l. Signed; every (layer, step) pair is a row of a batch.
- `attn-norm`: A_ij ‖v_j W_O^h‖ (Kobayashi et al. 2020, `reportgen.engine.norms`).
- `rollout`: A per head; the rollout over layers is formed from the reductions
  (`reportgen.engine.rollout`).
- `grad-rollout`: (A ⊙ ∂log p/∂A)⁺ = (−A ⊙ ∂L/∂A)⁺ per head, and its rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from reportgen.data.methods import METHODS
from reportgen.engine.attention import Capture, own_eager
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel
from reportgen.engine.norms import value_norms
from reportgen.engine.objectives import Pass, forward
from reportgen.settings import Settings

MethodFunction = Callable[
    [LoadedModel, Sequence[Encoded], Settings], tuple[Pass, list[torch.Tensor]]
]


def attention(
    lm: LoadedModel, rows: Sequence[Encoded], settings: Settings
) -> tuple[Pass, list[torch.Tensor]]:
    """The raw attention weights, from one forward pass without gradients."""
    with torch.no_grad():
        base = forward(lm, rows, record=True)
    return base, [w.detach() for w in base.weights]


def attn_grad(
    lm: LoadedModel, rows: Sequence[Encoded], settings: Settings
) -> tuple[Pass, list[torch.Tensor]]:
    """Base pass with gradients: A ⊙ ∂L/∂A per layer, [L][B, H, T, T], signed."""
    run = forward(lm, rows, record=True)
    grads = torch.autograd.grad(run.losses.sum(), run.weights)
    # In place: the gradients are fresh tensors of ours, and on CPU a new [B, H, T, T] tensor per
    # layer costs about as much as the product itself.
    return run, [g.mul_(a.detach()) for a, g in zip(run.weights, grads, strict=True)]


def attattr(
    lm: LoadedModel, rows: Sequence[Encoded], settings: Settings
) -> tuple[Pass, list[torch.Tensor]]:
    """Integrated gradients on attention: each input's (layer, step) rows batched, batch size ×
    steps rows per pass. Returns [L][rows, H, T, T] (signed), laid out as the base pass."""
    base, _ = attn_grad(lm, rows, settings)
    steps = settings.steps
    budget = settings.batch_size * steps if lm.padding.batches else 1
    layers, heads = lm.num_layers, lm.num_heads
    fixed = [replace(r, target_ids=t) for r, t in zip(rows, base.targets, strict=True)]
    # One input per pass (no padding), its layers in order, so that a pass's backward stops at
    # the lowest layer it holds: a row scaled at layer l needs dL/dA_l only.
    total = [torch.zeros_like(a, dtype=torch.float64) for a in base.weights]
    steps_of = [(layer, k) for layer in range(layers) for k in range(1, steps + 1)]
    for b, row in enumerate(fixed):
        for start in range(0, len(steps_of), budget):
            chunk = steps_of[start : start + budget]
            gates = torch.ones(len(chunk), layers, heads, dtype=lm.dtype, device=lm.device)
            for r, (layer, k) in enumerate(chunk):
                gates[r, layer] = k / steps
            run = forward(lm, [row] * len(chunk), gates=gates, record=True)
            wanted = sorted({layer for layer, _ in chunk})
            found = torch.autograd.grad(run.losses.sum(), [run.weights[layer] for layer in wanted])
            grads = dict(zip(wanted, found, strict=True))
            for r, (layer, k) in enumerate(chunk):
                # Head outputs are scaled by alpha, so dL/dA = alpha * dF/dX at X = alpha * A.
                for (k_run, s, e), (k_base, _, _) in zip(
                    run.layout[r], base.layout[b], strict=True
                ):
                    n = e - s
                    total[layer][k_base, :, :n, :n] += grads[layer][k_run, :, :n, :n].double() / (
                        k / steps
                    )
    scores = [(a.detach().double() * t / steps) for a, t in zip(base.weights, total, strict=True)]
    return base, scores


def attn_norm(
    lm: LoadedModel, rows: Sequence[Encoded], settings: Settings
) -> tuple[Pass, list[torch.Tensor]]:
    """A_ij ‖v_j W_O^h‖ per head from one eager forward without gradients, [L][B, H, T, T]."""
    capture = Capture(keep_weights=True)
    with torch.no_grad(), own_eager():
        base = forward(lm, rows, capture=capture)
    scores = []
    for layer in sorted(capture.layers):
        captured = capture.layers[layer]
        assert captured.weights is not None
        scores.append(captured.weights * value_norms(captured)[:, :, None, :])
    return base, scores


def grad_rollout(
    lm: LoadedModel, rows: Sequence[Encoded], settings: Settings
) -> tuple[Pass, list[torch.Tensor]]:
    """(A ⊙ ∂log p/∂A)⁺ per head, [L][B, H, T, T] (the rollout is formed from the reductions)."""
    base, scores = attn_grad(lm, rows, settings)
    return base, [s.neg_().clamp_(min=0) for s in scores]


REGISTRY: dict[str, MethodFunction] = {
    "attn-grad": attn_grad,
    "attention": attention,
    "attattr": attattr,
    "attn-norm": attn_norm,
    "rollout": attention,
    "grad-rollout": grad_rollout,
}
assert REGISTRY.keys() == METHODS.keys(), "every method has one function"
