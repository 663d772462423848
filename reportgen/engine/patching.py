"""Attribution patching (Nanda 2023; Syed et al. 2023, arXiv:2310.10348): a first-order estimate
of every head's patching effect from one extra forward and backward pass, and the strongest
estimates checked by real patching.

Patching head h replaces its output o_h (the attention output A V of that head, before the
output projection) by a baseline o'_h: zero, the head's mean output over every token of every
input of the run (`--patch-baseline mean`), or its output at the same position on the input's
counterfactual text (`counterfactual`, Meng et al. 2022's clean/corrupted pair). With the head
gates g that `attention_control` applies, the patched output is g·o_h + (1 − g)·o'_h: g = 1 is
the intact model, g = 0 the patched one, and to first order the change in log p(target) is
(o'_h − o_h) · ∂log p/∂o_h = −∂log p/∂g_h at g = 1. It is an estimate; the `PATCH_CHECKED`
heads with the largest |estimate| are patched for real (one forward each, gate 0) and both
numbers are stored.
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
from reportgen.errors import SaliencyError


def head_outputs(lm: LoadedModel, rows: Sequence[Encoded]) -> list[torch.Tensor]:
    """Each row's head outputs at each of its positions, [layers, T, heads, d] in the model's
    dtype: one forward pass without gradients (one sequence per row)."""
    outputs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        found = forward(lm, rows, outputs=outputs)
    if sorted(outputs) != list(range(lm.num_layers)):
        raise SaliencyError(
            f"model '{lm.name}': {len(outputs)} of its {lm.num_layers} attention layers reported "
            "their head outputs; --patch-baseline counterfactual needs them all (use zero)"
        )
    per_layer = torch.stack([outputs[layer] for layer in range(lm.num_layers)])
    out = []
    for placed in found.layout:
        [(k, start, end)] = placed
        out.append(per_layer[:, k, : end - start])
    return out


def baselines(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    baseline: str,
    mean: torch.Tensor | None = None,
    counterfactuals: Sequence[Encoded] | None = None,
) -> torch.Tensor | None:
    """What each row's heads are patched to: None (zero), [rows, L, H, d] (the mean, the same
    at every position) or [rows, L, T, H, d] (the counterfactual's outputs, zero past a row's
    length: padding, which no real position reads)."""
    if baseline == "zero":
        return None
    if baseline == "mean":
        if mean is None:
            raise SaliencyError("--patch-baseline mean needs the run's mean head outputs")
        return mean.to(device=lm.device, dtype=lm.dtype).expand(len(rows), *mean.shape)
    if counterfactuals is None or len(counterfactuals) != len(rows):
        raise SaliencyError("--patch-baseline counterfactual needs each input's counterfactual")
    found = head_outputs(lm, counterfactuals)
    width = max(len(row.ids) for row in rows)
    layers, _, heads, d = found[0].shape
    out = torch.zeros((len(rows), layers, width, heads, d), dtype=lm.dtype, device=lm.device)
    for b, outputs in enumerate(found):
        out[b, :, : outputs.shape[1]] = outputs
    return out


def attribution_patching(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    base: Pass,
    batch_size: int,
    baseline: str = "zero",
    mean: torch.Tensor | None = None,
    counterfactuals: Sequence[Encoded] | None = None,
) -> list[Patching]:
    """Each input's estimated change in log p(target) per head when the head's output is
    patched to the baseline (one forward and backward with the head gates as leaves), and the
    real change for its `PATCH_CHECKED` heads of largest |estimate| (their targets fixed to the
    base pass's). `mean` [L, H, d] is the run's mean head output (baseline `mean`);
    `counterfactuals` the rows' counterfactuals, as long as the rows (`counterfactual`)."""
    layers, heads = lm.num_layers, lm.num_heads
    fixed = [replace(r, target_ids=t) for r, t in zip(rows, base.targets, strict=True)]
    patched = baselines(lm, fixed, baseline, mean, counterfactuals)
    gates = torch.ones(len(fixed), layers, heads, dtype=lm.dtype, device=lm.device)
    gates.requires_grad_()
    run = forward(lm, fixed, gates=gates, replace=patched)
    (grad,) = torch.autograd.grad(run.losses.sum(), [gates])
    # log p = −L, and patching moves the gate from 1 to 0: Δ log p ≈ (0 − 1) · ∂(−L)/∂g.
    estimates = np.asarray(grad.detach().cpu(), np.float64)
    checked = min(PATCH_CHECKED, layers * heads)
    picked = [
        np.argsort(-np.abs(e.reshape(-1)), kind="stable")[:checked].tolist() for e in estimates
    ]
    expanded, gate_rows, owners = [], [], []
    for b, (row, flat) in enumerate(zip(fixed, picked, strict=True)):
        for h in flat:
            gate = torch.ones(layers * heads, dtype=lm.dtype)
            gate[h] = 0
            gate_rows.append(gate.reshape(layers, heads))
            expanded.append(row)
            owners.append(b)
    losses: list[float] = []
    step = max(1, batch_size * checked) if lm.padding.batches else 1
    with torch.no_grad():
        for start in range(0, len(expanded), step):
            g = torch.stack(gate_rows[start : start + step]).to(lm.device)
            part = None
            if patched is not None:
                part = patched[torch.tensor(owners[start : start + step], device=patched.device)]
            found = forward(lm, expanded[start : start + step], gates=g, replace=part)
            losses += found.losses.tolist()
    out = []
    for b, flat in enumerate(picked):
        intact = float(base.losses[b].detach())
        real = [intact - loss for loss in losses[b * checked : (b + 1) * checked]]
        out.append(
            Patching(
                estimate=estimates[b],
                heads=np.array([(h // heads, h % heads) for h in flat], np.int32),
                real=np.array(real, np.float64),
                baseline=baseline,
            )
        )
    return out
