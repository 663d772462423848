"""One forward pass over a batch of encoded rows, and each row's objective.

The objective L depends on the task: −log p(target) for language models (a multi-token target
teacher-forced, its log-probabilities summed) and classifiers, −cos(segment 1, segment 2) of
mean-pooled embeddings for a bare encoder. Targets not given are the model's own prediction.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reportgen.data.tasks import Task
from reportgen.engine.attention import Capture, Knock, attention_control
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel

Layout = list[list[tuple[int, int, int]]]
"""For each example of a batch, where its sequences went: (batch row, start, end), the row
holding its tokens [start, end) (one sequence each, but two for a bi-encoder)."""


@dataclass
class Pass:
    """Outputs of one forward pass over a batch of examples."""

    losses: torch.Tensor
    values: torch.Tensor
    targets: list[tuple[int, ...] | None]
    predicted: list[tuple[int, ...] | None]
    weights: list[torch.Tensor]
    """Each layer's attention weights [rows, H, T, T], if recorded (else empty)."""
    layout: Layout
    """Which batch rows hold each example's tokens (see `Layout`)."""
    logit_diffs: torch.Tensor | None = None
    """Per example, logit(target) − logit(contrast) at the prediction position (NaN for an
    example without a contrast); None for a bare encoder."""


def layout_of(examples: Sequence[Encoded]) -> Layout:
    """Where `forward` puts the examples' sequences: one batch row each, in order."""
    rows = itertools.count()
    return [[(next(rows), start, end) for start, end in row.sequences] for row in examples]


def forward(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    gates: torch.Tensor | None = None,
    record: bool = False,
    capture: Capture | None = None,
    replace: torch.Tensor | None = None,
    knock: Edges | None = None,
    outputs: dict[int, torch.Tensor] | None = None,
) -> Pass:
    """Run the examples as one right-padded batch and evaluate each example's objective.

    `gates` has one [layers, heads] row per example (shared by its sequences), and so has
    `replace` ([layers, heads, head_dim], or [layers, T, heads, head_dim] per position of the
    example's ids, each sequence reading its range: what a gated head's output becomes, see
    `attention_control`). `knock` blocks edges of the heads it
    names, per example; `outputs` receives each layer's head outputs [rows, T, H, d] (rows as
    in the returned layout).
    Padding uses the model's own pad id, and explicit position ids only where the load-time
    probe needed them."""
    layout = layout_of(examples)
    sequences = [row.ids[start:end] for row in examples for start, end in row.sequences]
    owners = [b for b, row in enumerate(examples) for _ in row.sequences]
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), lm.padding.filler, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for k, seq in enumerate(sequences):
        input_ids[k, : len(seq)] = torch.tensor(seq)
        mask[k, : len(seq)] = 1
    kwargs: dict[str, torch.Tensor] = {
        "input_ids": input_ids.to(lm.device),
        "attention_mask": mask.to(lm.device),
    }
    if lm.padding.position_ids:
        kwargs["position_ids"] = torch.arange(width).expand(len(sequences), -1).to(lm.device)
    if capture is not None:
        capture.lengths = tuple(len(seq) for seq in sequences)
    if gates is not None and len(sequences) != len(examples):
        gates = gates[torch.tensor(owners, device=gates.device)]
    if replace is not None and len(sequences) != len(examples):
        replace = _per_sequence(replace, layout, width)
    knocked = None if knock is None else knock.rows(layout, owners, width)
    # A language model's head runs only where the loss reads its logits (a vocabulary-sized
    # matmul per position, forward and backward, is most of a small model's cost).
    kept = sorted({p for row in examples for p in row.loss_positions})
    hooks = []
    if lm.task in (Task.CAUSAL_LM, Task.MASKED_LM):
        hooks.append(lm.model.base_model.register_forward_hook(_keep_positions(kept)))
    if torch.is_grad_enabled():  # the weights are frozen: the graph starts at the embeddings
        hooks.append(lm.model.get_input_embeddings().register_forward_hook(_track))
    try:
        with attention_control(
            gates=gates,
            record=record,
            capture=capture,
            replace=replace,
            knock=knocked,
            outputs=outputs,
        ) as weights:
            output = lm.model(**kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    losses: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    targets: list[tuple[int, ...] | None] = []
    predicted: list[tuple[int, ...] | None] = []
    diffs: list[float] = []
    if lm.task is Task.ENCODER:
        hidden = _at_least_float32(output.last_hidden_state)
        for row, placed in zip(examples, layout, strict=True):
            if row.pieces:  # a bi-encoder: each sequence's mean embedding
                first, second = (hidden[k, : end - start].mean(0) for k, start, end in placed)
            else:
                [(k, _, _)] = placed
                first, second = (hidden[k, s.start : s.end].mean(0) for s in row.spans[:2])
            cos = torch.nn.functional.cosine_similarity(first, second, dim=0)
            losses.append(-cos)
            values.append(cos)
            targets.append(None)
            predicted.append(None)
    else:
        logp = torch.log_softmax(_at_least_float32(output.logits), dim=-1)
        index_of = {p: i for i, p in enumerate(kept)}
        for b, row in enumerate(examples):
            scored = (
                logp[b]
                if lm.task is Task.CLASSIFICATION
                else logp[b, [index_of[p] for p in row.loss_positions]]
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
            if row.contrast_ids is None:
                diffs.append(float("nan"))
            else:  # log-softmax shifts every logit alike: its difference is the logits'
                first = scored if lm.task is Task.CLASSIFICATION else scored[0]
                diffs.append(float((first[target[0]] - first[row.contrast_ids[0]]).detach()))
    return Pass(
        torch.stack(losses),
        torch.stack(values).detach(),
        targets,
        predicted,
        weights,
        layout,
        None if lm.task is Task.ENCODER else torch.tensor(diffs, dtype=torch.float64),
    )


def _per_sequence(replace: torch.Tensor, layout: Layout, width: int) -> torch.Tensor:
    """An example's replacement for each of its sequences: the same vectors [L, H, d], or
    (per position, [L, T, H, d] over the example's ids) the sequence's range of positions."""
    owners = [b for b, placed in enumerate(layout) for _ in placed]
    if replace.dim() == 4:
        return replace[torch.tensor(owners, device=replace.device)]
    rows = sum(len(placed) for placed in layout)
    out = replace.new_zeros((rows, replace.shape[1], width, *replace.shape[3:]))
    for b, placed in enumerate(layout):
        for k, start, end in placed:
            out[k, :, : end - start] = replace[b, :, start:end]
    return out


@dataclass(frozen=True)
class Edges:
    """Per example, the heads whose edges from `keys` to `queries` (bool over the example's
    positions) are blocked before the softmax: an edge knockout."""

    heads: torch.Tensor
    """bool [examples, layers, heads]."""
    queries: Sequence[Sequence[bool]]
    keys: Sequence[Sequence[bool]]

    def rows(self, layout: Layout, owners: Sequence[int], width: int) -> Knock:
        """The knockout per batch row (a bi-encoder's sequences each get their part)."""
        rows = len(owners)
        queries = torch.zeros((rows, width), dtype=torch.bool)
        keys = torch.zeros((rows, width), dtype=torch.bool)
        for b, placed in enumerate(layout):
            for k, start, end in placed:
                queries[k, : end - start] = torch.tensor(list(self.queries[b][start:end]))
                keys[k, : end - start] = torch.tensor(list(self.keys[b][start:end]))
        heads = self.heads[torch.tensor(list(owners), device=self.heads.device)]
        return Knock(heads, queries, keys)


def _keep_positions(positions: Sequence[int]) -> Any:
    """A forward hook on the base model that passes only `positions` of its hidden states on
    to the head (everything after the base model of an LM works position by position)."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0]
        index = torch.tensor(positions, device=hidden.device)
        sliced = hidden.index_select(1, index)
        if isinstance(output, tuple):
            return (sliced, *output[1:])
        output[next(iter(output.keys()))] = sliced
        return output

    return hook


def _track(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """The embeddings' output as the graph's leaf (the model's weights need no gradients)."""
    return output.requires_grad_()


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
