"""One forward pass over a batch of encoded rows, and each row's objective.

The objective L depends on the task: −log p(target) for language models (a multi-token target
teacher-forced, its log-probabilities summed) and classifiers, −cos(segment 1, segment 2) of
mean-pooled embeddings for a bare encoder. Targets not given are the model's own prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reportgen.data.tasks import Task
from reportgen.engine.attention import attention_control
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel


@dataclass
class Pass:
    """Outputs of one forward pass over a batch of rows."""

    losses: torch.Tensor
    values: torch.Tensor
    targets: list[tuple[int, ...] | None]
    predicted: list[tuple[int, ...] | None]
    weights: list[torch.Tensor]
    """Each layer's attention weights [B, H, T, T], if recorded (else empty)."""


def forward(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    gates: torch.Tensor | None = None,
    record: bool = False,
) -> Pass:
    """Run right-padded rows (explicit position ids) and evaluate each row's objective."""
    width = max(len(r.ids) for r in rows)
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row.ids)] = torch.tensor(row.ids)
        mask[b, : len(row.ids)] = 1
    kwargs: dict[str, torch.Tensor] = {
        "input_ids": input_ids.to(lm.device),
        "attention_mask": mask.to(lm.device),
    }
    if lm.accepts_position_ids:
        kwargs["position_ids"] = torch.arange(width).expand(len(rows), -1).to(lm.device)
    with attention_control(gates=gates, record=record) as weights:
        output = lm.model(**kwargs)
    losses: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    targets: list[tuple[int, ...] | None] = []
    predicted: list[tuple[int, ...] | None] = []
    if lm.task is Task.ENCODER:
        hidden = _at_least_float32(output.last_hidden_state)
        for b, row in enumerate(rows):
            first, second = (hidden[b, s.start : s.end].mean(0) for s in row.spans[:2])
            cos = torch.nn.functional.cosine_similarity(first, second, dim=0)
            losses.append(-cos)
            values.append(cos)
            targets.append(None)
            predicted.append(None)
    else:
        logp = torch.log_softmax(_at_least_float32(output.logits), dim=-1)
        for b, row in enumerate(rows):
            scored = (
                logp[b] if lm.task is Task.CLASSIFICATION else logp[b, list(row.loss_positions)]
            )
            best = scored.argmax(-1).reshape(-1)
            target = row.target_ids if row.target_ids is not None else tuple(best.tolist())
            index = torch.tensor(target, device=scored.device)
            if lm.task is Task.CLASSIFICATION:
                loss = -scored[index].sum()
            else:
                loss = -scored[torch.arange(len(target), device=scored.device), index].sum()
            losses.append(loss)
            values.append(torch.exp(-loss))
            targets.append(target)
            predicted.append(tuple(best.tolist()))
    return Pass(torch.stack(losses), torch.stack(values).detach(), targets, predicted, weights)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs are scored in float32; float32 and float64 stay as they are."""
    return x.float() if x.element_size() < 4 else x


def target_text(lm: LoadedModel, ids: tuple[int, ...] | None) -> str | None:
    """A target's text: the label name for classifiers, the decoded tokens for LMs."""
    if ids is None:
        return None
    if lm.task is Task.CLASSIFICATION:
        return str(lm.model.config.id2label.get(ids[0], ids[0]))
    return str(lm.tokenizer.decode(list(ids))).strip()
