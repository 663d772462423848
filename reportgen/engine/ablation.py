"""The ablation check: the objective with the top-k grid heads zeroed, against k random heads."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from reportgen.data.results import Ablation
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel
from reportgen.engine.objectives import Pass, forward
from reportgen.settings import Settings


def ablate(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    base: Pass,
    grids: Sequence[np.ndarray],
    settings: Settings,
) -> list[Ablation]:
    """Zero the top-k grid heads, and `draws` seeded random sets of k heads, in one batch."""
    layers, heads, k = lm.num_layers, lm.num_heads, settings.ablate_k
    expanded, gate_rows, chosen = [], [], []
    for row, target, grid in zip(rows, base.targets, grids, strict=True):
        top = np.argsort(-grid.reshape(-1), kind="stable")[:k]
        rng = np.random.default_rng([settings.seed, zlib.crc32(row.example.id.encode())])
        sets = [top] + [
            rng.choice(layers * heads, k, replace=False) for _ in range(settings.ablate_draws)
        ]
        for heads_off in sets:
            gate = torch.ones(layers * heads, dtype=lm.dtype)
            gate[torch.as_tensor(heads_off)] = 0
            gate_rows.append(gate.reshape(layers, heads))
            expanded.append(replace(row, target_ids=target))
        chosen.append(tuple((int(h) // heads, int(h) % heads) for h in top))
    values: list[float] = []
    budget = settings.batch_size * (1 + settings.ablate_draws) if lm.padding.batches else 1
    with torch.no_grad():
        for start in range(0, len(expanded), budget):
            gates = torch.stack(gate_rows[start : start + budget]).to(lm.device)
            values += forward(lm, expanded[start : start + budget], gates=gates).values.tolist()
    per = 1 + settings.ablate_draws
    out = []
    for b, heads_top in enumerate(chosen):
        block = values[b * per : (b + 1) * per]
        out.append(
            Ablation(
                heads_top,
                float(base.values[b]),
                block[0],
                float(np.mean(block[1:])),
                settings.ablate_draws,
            )
        )
    return out
