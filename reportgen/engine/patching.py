"""Attribution patching (Nanda 2023; Syed et al. 2023, arXiv:2310.10348): a first-order estimate
of every head's patching effect from one extra forward and backward pass, and the strongest
estimates checked by real patching.

Patching head h replaces its output o_h (the attention output A V of that head, before the
output projection) by a baseline o'_h. To first order the change in log p(target) is
(o'_h − o_h) · ∂log p/∂o_h, summed over positions and features. The baseline here is zero (no
counterfactual input is part of an input yet): o'_h = 0, the patched model is the model with
head h's gate at 0, and the estimate is −∂log p/∂g_h at g = 1, the gradient of the head gates
that `attention_control` applies (`g_h · o_h`). It is an estimate; the `PATCH_CHECKED` heads
with the largest |estimate| are patched for real (one forward each, gate 0) and both numbers
are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from reportgen.data.results import PATCH_CHECKED, Patching
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel
from reportgen.engine.objectives import Pass, forward


def attribution_patching(
    lm: LoadedModel, rows: Sequence[Encoded], base: Pass, batch_size: int
) -> list[Patching]:
    """Each input's estimated change in log p(target) per head when the head's output is zeroed
    (one forward and backward with the head gates as leaves), and the real change for its
    `PATCH_CHECKED` heads of largest |estimate| (their targets fixed to the base pass's)."""
    layers, heads = lm.num_layers, lm.num_heads
    fixed = [replace(r, target_ids=t) for r, t in zip(rows, base.targets, strict=True)]
    gates = torch.ones(len(fixed), layers, heads, dtype=lm.dtype, device=lm.device)
    gates.requires_grad_()
    run = forward(lm, fixed, gates=gates)
    (grad,) = torch.autograd.grad(run.losses.sum(), [gates])
    # log p = −L, and patching moves the gate from 1 to 0: Δ log p ≈ (0 − 1) · ∂(−L)/∂g.
    estimates = np.asarray(grad.detach().cpu(), np.float64)
    checked = min(PATCH_CHECKED, layers * heads)
    picked = [
        np.argsort(-np.abs(e.reshape(-1)), kind="stable")[:checked].tolist() for e in estimates
    ]
    expanded, gate_rows = [], []
    for row, flat in zip(fixed, picked, strict=True):
        for h in flat:
            gate = torch.ones(layers * heads, dtype=lm.dtype)
            gate[h] = 0
            gate_rows.append(gate.reshape(layers, heads))
            expanded.append(row)
    losses: list[float] = []
    step = max(1, batch_size * checked) if lm.padding.batches else 1
    with torch.no_grad():
        for start in range(0, len(expanded), step):
            g = torch.stack(gate_rows[start : start + step]).to(lm.device)
            losses += forward(lm, expanded[start : start + step], gates=g).losses.tolist()
    out = []
    for b, flat in enumerate(picked):
        intact = float(base.losses[b].detach())
        real = [intact - loss for loss in losses[b * checked : (b + 1) * checked]]
        out.append(
            Patching(
                estimate=estimates[b],
                heads=np.array([(h // heads, h % heads) for h in flat], np.int32),
                real=np.array(real, np.float64),
            )
        )
    return out
