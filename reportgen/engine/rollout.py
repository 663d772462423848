"""Token-level relevance through the layers: attention rollout and gradient rollout.

Both combine the heads of each layer into one T × T matrix Ā_l (the mean over heads) and
propagate it through the layers with the residual connection as an identity:
- `rollout` (Abnar & Zuidema 2020, arXiv:2005.00928): Ā_l the heads' mean attention,
  Â_l = ½ Ā_l + ½ I with its rows renormalised to sum to 1, R_l = Â_l R_{l-1} (R_0 = I).
- `grad-rollout` (Chefer et al. 2021, arXiv:2103.15679, eq. 5-6): Ā_l = mean_h (A ⊙ ∂log p/∂A)⁺,
  the positive part of attention × gradient of the objective's log-probability (−L),
  R_l = R_{l-1} + Ā_l R_{l-1} (R_0 = I), unnormalised as in the paper.
Relevance of key token j for the prediction at layer l is R_l[p, j], p the prediction position:
a [L, T] array per input.
"""

from __future__ import annotations

import torch

KINDS = ("rollout", "grad-rollout")


def rollout(mixed: torch.Tensor, position: int, kind: str) -> torch.Tensor:
    """R_l[position, :] for every layer l, float64 [L, n], from the layers' head-mean matrices
    `mixed` [L, n, n] (rows queries, columns keys; one sequence's real tokens only)."""
    if kind not in KINDS:
        raise ValueError(f"unknown rollout {kind!r}")
    mixed = mixed.double()
    n = mixed.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=mixed.device)
    relevance = eye
    rows = []
    for layer in mixed:
        if kind == "rollout":
            step = 0.5 * layer + 0.5 * eye
            relevance = (step / step.sum(-1, keepdim=True)) @ relevance
        else:
            relevance = relevance + layer @ relevance
        rows.append(relevance[position])
    return torch.stack(rows)
