"""The interventions: the top-k grid heads ablated (zero, mean or resample), against k random
heads (several seeded draws), head by head, and the metric's flow knocked out in those heads;
then layer by layer, every head of one layer ablated, and the flow knocked out in every head of
one layer (the layer-level view Wang et al. 2023 take of label-word flow).

A head's output here is its slice of the attention output before the output projection (A V for
that head, [T, d]). Mean ablation replaces it by its mean over every token of every input of the
run, one vector per head at every position (computed in one extra streaming forward pass over
the inputs, `head_means`); resample ablation by its output on one other input of the run, drawn
with the seed (recorded as the donor), at the same position (`resampled`: positions aligned from
the start of each sequence; past the donor's end, where the input is longer, the donor's mean
over its tokens). The run's inputs are all of them, also when a shard or a resumed run computes
only some: results do not depend on how a run is split.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from reportgen.data.examples import Example
from reportgen.data.results import Ablation, Knockout
from reportgen.data.tasks import Task
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel
from reportgen.engine.memory import budget_bytes
from reportgen.engine.objectives import Edges, Pass, forward
from reportgen.errors import SaliencyError
from reportgen.settings import Settings


@dataclass(frozen=True)
class Reference:
    """What mean and resample ablation draw on: the run's inputs, and (mean ablation) every
    head's mean output over all their tokens."""

    examples: Sequence[Example]
    encode: Callable[[Example], Encoded]
    mean: torch.Tensor | None = None
    """[layers, heads, head_dim], float64: mean ablation's replacement."""


def _layer_outputs(lm: LoadedModel, rows: Sequence[Encoded]) -> tuple[torch.Tensor, Pass]:
    """Every layer's head outputs, float64 [layers, batch rows, T, heads, d], and the pass
    (its layout says which batch rows hold each example): one forward without gradients."""
    outputs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        base = forward(lm, rows, outputs=outputs)
    if sorted(outputs) != list(range(lm.num_layers)):
        raise SaliencyError(
            f"model '{lm.name}': {len(outputs)} of its {lm.num_layers} attention layers reported "
            "their head outputs; mean and resample ablation need them all (use --ablation zero)"
        )
    return torch.stack([outputs[layer].double() for layer in range(lm.num_layers)]), base


def head_outputs(lm: LoadedModel, rows: Sequence[Encoded]) -> list[torch.Tensor]:
    """Each example's head outputs at each of its positions, float64 [layers, T, heads, d]
    (T = len(row.ids); a bi-encoder's two sequences at their ranges of ids, `row.sequences`):
    one forward pass without gradients."""
    per_layer, base = _layer_outputs(lm, rows)
    found = []
    for row, placed in zip(rows, base.layout, strict=True):
        out = per_layer.new_empty((per_layer.shape[0], len(row.ids), *per_layer.shape[3:]))
        for k, start, end in placed:  # per_layer: [L, rows, T, H, d]
            out[:, start:end] = per_layer[:, k, : end - start]
        found.append(out.cpu())
    return found


def resampled(row: Encoded, donor: Encoded, outputs: torch.Tensor) -> torch.Tensor:
    """Resample ablation's replacement for `row`, [layers, T, heads, d]: the donor's head
    outputs `outputs` (`head_outputs` of `donor`) position by position, aligned from the start
    of each sequence (a bi-encoder's first and second text against the donor's), and at the
    positions past the donor's end, where the input is longer, the donor's mean over all its
    tokens (a donor longer than the input is cut at the input's end)."""
    out = outputs.mean(1, keepdim=True).expand(-1, len(row.ids), -1, -1).clone()
    for (start, end), (first, last) in zip(row.sequences, donor.sequences, strict=True):
        n = min(end - start, last - first)
        out[:, start : start + n] = outputs[:, first : first + n]
    return out


def head_sums(lm: LoadedModel, rows: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's head outputs summed over its tokens, float64 [E, layers, heads, d], and
    its token count [E]: one forward pass without gradients."""
    per_layer, base = _layer_outputs(lm, rows)
    sums = torch.zeros(
        (len(rows), lm.num_layers, per_layer.shape[3], per_layer.shape[4]), dtype=torch.float64
    )
    counts = torch.zeros(len(rows), dtype=torch.float64)
    for b, placed in enumerate(base.layout):
        for k, start, end in placed:  # per_layer: [L, rows, T, H, d]
            sums[b] += per_layer[:, k, : end - start].sum(1).cpu()
            counts[b] += end - start
    return sums, counts


def head_means(lm: LoadedModel, batches: Iterable[Sequence[Encoded]]) -> tuple[torch.Tensor, int]:
    """Every head's mean output over all tokens of all inputs, float64 [layers, heads, d], and
    the number of tokens: one streaming pass, only the running sums kept."""
    total: torch.Tensor | None = None
    count = 0.0
    for batch in batches:
        sums, counts = head_sums(lm, batch)
        total = sums.sum(0) if total is None else total + sums.sum(0)
        count += float(counts.sum())
    if total is None or count == 0:
        raise SaliencyError("mean ablation needs at least one input")
    return total / count, int(count)


def donor_index(example: Example, pool: Sequence[Example], seed: int) -> int:
    """Resample ablation's donor: another input of the run, drawn by --seed and the input's id
    (its own stream, apart from the random heads')."""
    others = [i for i, ex in enumerate(pool) if ex.id != example.id]
    if not others:
        raise SaliencyError(
            "--ablation resample replaces a head's output by its output on another input of the "
            "run, and the run has only one input; give more inputs or use --ablation mean"
        )
    rng = np.random.default_rng([seed, zlib.crc32(example.id.encode()), 1])
    return others[int(rng.integers(len(others)))]


def effect_values(lm: LoadedModel, found: Pass, effect: str) -> list[float]:
    """The effect measure of each example of a pass (see EFFECTS)."""
    if lm.task is Task.ENCODER:
        return [float(v) for v in found.values.tolist()]
    if effect == "logprob":
        return [-float(v) for v in found.losses.detach().tolist()]
    if effect == "prob":
        return [float(v) for v in found.values.tolist()]
    assert found.logit_diffs is not None
    return [float(v) for v in found.logit_diffs.tolist()]


def effect_name(lm: LoadedModel, settings: Settings) -> str:
    return "cosine" if lm.task is Task.ENCODER else settings.effect


def check_effect(row: Encoded, lm: LoadedModel, settings: Settings) -> None:
    """--effect logit-diff needs a one-token target and a contrast on every input."""
    if settings.effect != "logit-diff" or lm.task is Task.ENCODER or settings.ablate_k == 0:
        return
    ex = row.example
    if row.contrast_ids is None:
        raise SaliencyError(
            f"{ex.source}: input '{ex.id}' has no \"contrast\"; --effect logit-diff measures "
            "logit(target) − logit(contrast): give every input a contrast (or use --effect logprob)"
        )
    if row.target_ids is not None and len(row.target_ids) != 1:
        raise SaliencyError(
            f"{ex.source}: input '{ex.id}': target '{ex.target}' is {len(row.target_ids)} tokens; "
            "--effect logit-diff compares one token with one token: give a one-token target"
        )


@dataclass(frozen=True)
class _Job:
    row: Encoded
    off: np.ndarray
    """Flat head indices (layer * heads + head) ablated; or knocked out, with `knock`."""
    replacement: torch.Tensor | None
    knock: tuple[Sequence[bool], Sequence[bool]] | None = None


def ablate(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    base: Pass,
    grids: Sequence[np.ndarray],
    settings: Settings,
    reference: Reference | None = None,
) -> list[Ablation]:
    """For each example: its top-k grid heads ablated one more at a time (the curve, ending at
    all k), `draws` seeded random sets of k heads, and (with a flow metric) the knockout of the
    flow's edges in the top heads; with `ablate_layers`, also every head of each layer in turn,
    and the flow knocked out in every head of each layer; all in batched forward passes without
    gradients."""
    layers, heads, k = lm.num_layers, lm.num_heads, settings.ablate_k
    metric, effect = settings.metric, effect_name(lm, settings)
    kind = settings.ablation
    if kind != "zero" and reference is None:
        raise SaliencyError(f"--ablation {kind} needs the run's inputs (a Reference)")
    donors: list[Example | None] = [None] * len(rows)
    replacements: list[torch.Tensor | None] = [None] * len(rows)
    if kind == "mean":
        assert reference is not None and reference.mean is not None
        replacements = [reference.mean] * len(rows)
    elif kind == "resample":
        assert reference is not None
        donors = [
            reference.examples[donor_index(row.example, reference.examples, settings.seed)]
            for row in rows
        ]
        donor_rows = [reference.encode(d) for d in donors if d is not None]
        found = head_outputs(lm, donor_rows)
        replacements = [
            resampled(row, d, o) for row, d, o in zip(rows, donor_rows, found, strict=True)
        ]
    jobs: list[_Job] = []
    plans = []
    by_layer = (
        [np.arange(layer * heads, (layer + 1) * heads) for layer in range(layers)]
        if settings.ablate_layers
        else []
    )
    for row, target, grid, rep in zip(rows, base.targets, grids, replacements, strict=True):
        fixed = replace(row, target_ids=target)
        top = np.argsort(-grid.reshape(-1), kind="stable")[:k]
        rng = np.random.default_rng([settings.seed, zlib.crc32(row.example.id.encode())])
        randoms = [
            rng.choice(layers * heads, k, replace=False) for _ in range(settings.ablate_draws)
        ]
        jobs += [_Job(fixed, top[: n + 1], rep) for n in range(k)]
        jobs += [_Job(fixed, chosen, rep) for chosen in randoms]
        jobs += [_Job(fixed, whole, rep) for whole in by_layer]
        knock = None
        if metric.kind == "flow" and metric.src is not None and metric.dst is not None:
            spans = {s.name: s for s in row.spans}
            src, dst = spans[metric.src], spans[metric.dst]
            positions = range(len(row.ids))
            edges = (
                [dst.start <= p < dst.end for p in positions],
                [src.start <= p < src.end for p in positions],
            )
            jobs.append(_Job(fixed, top, None, edges))
            jobs += [_Job(fixed, whole, None, edges) for whole in by_layer]
            knock = (metric.src, metric.dst)
        plans.append((top, randoms, knock))
    values = _run(lm, jobs, settings)
    intact = effect_values(lm, base, effect)
    out, at = [], 0

    def pairs(flat: np.ndarray) -> tuple[tuple[int, int], ...]:
        return tuple((int(h) // heads, int(h) % heads) for h in flat)

    for b, (top, randoms, knock) in enumerate(plans):
        curve = values[at : at + k]
        at += k
        drawn = values[at : at + len(randoms)]
        at += len(randoms)
        per_layer = values[at : at + len(by_layer)]
        at += len(by_layer)
        knockout = None
        if knock is not None:
            knockout = Knockout(
                knock[0], knock[1], values[at], tuple(values[at + 1 : at + 1 + len(by_layer)])
            )
            at += 1 + len(by_layer)
        donor = donors[b]
        out.append(
            Ablation(
                intervention=kind,
                effect=effect,
                heads=pairs(top),
                value=intact[b],
                value_top=curve[-1],
                random_heads=tuple(pairs(r) for r in randoms),
                random_values=tuple(drawn),
                curve=tuple(curve),
                layers=tuple(per_layer),
                donor=None if donor is None else donor.id,
                knockout=knockout,
            )
        )
    return out


PASS_BUDGET = 4 * 2**30
"""Bytes an intervention pass may hold without --max-memory (see rows_per_pass)."""


def rows_per_pass(
    lm: LoadedModel, longest: int, settings: Settings, replaced_per_token: int = 0
) -> int:
    """Rows in one forward pass of the interventions: those the top-k part of one batch of
    inputs needs (the layer-by-layer jobs add passes, not memory), but no more than the
    memory budget holds at `longest` tokens: a no-grad pass keeps one layer's T × T scores
    per head (and an edge mask) at a time, counted twice for the softmax's copy. At thousands
    of tokens that is a few rows, not batch × (k + draws + 1): 112 rows at T = 4096 needed
    over 24 GB. The budget is `--max-memory`'s, else a fixed PASS_BUDGET (not a share of the
    free memory: the passes, and so the last bits of the effects, are then the same on every
    machine). A per-position replacement (resample) adds its `replaced_per_token` values
    (layers × heads × head_dim) per token of a row."""
    per = settings.ablate_k + settings.ablate_draws + 1
    rows = settings.batch_size * per if lm.padding.batches else 1
    itemsize = torch.finfo(lm.dtype).bits // 8
    row_bytes = 2 * lm.num_heads * longest * longest * (itemsize + 1)
    row_bytes += replaced_per_token * longest * itemsize
    budget = (
        PASS_BUDGET if settings.max_memory is None else budget_bytes(lm.device, settings.max_memory)
    )
    fits = budget // max(row_bytes, 1)
    return max(1, min(rows, fits))


def _run(lm: LoadedModel, jobs: Sequence[_Job], settings: Settings) -> list[float]:
    """The effect measure of every job, in passes of `rows_per_pass` rows."""
    layers, heads = lm.num_layers, lm.num_heads
    if not jobs:
        return []
    first = next((job.replacement for job in jobs if job.replacement is not None), None)
    replaced = first[:, 0].numel() if first is not None and first.dim() == 4 else 0
    budget = rows_per_pass(lm, max(len(job.row.ids) for job in jobs), settings, replaced)
    values: list[float] = []
    with torch.no_grad():
        for start in range(0, len(jobs), budget):
            part = jobs[start : start + budget]
            gates = torch.ones((len(part), layers * heads), dtype=lm.dtype)
            knocked = torch.zeros((len(part), layers * heads), dtype=torch.bool)
            for n, job in enumerate(part):
                index = torch.as_tensor(job.off, dtype=torch.long)
                if job.knock is not None:
                    knocked[n, index] = True
                else:
                    gates[n, index] = 0
            replacement = _replacements(lm, part)
            edges = None
            if any(job.knock is not None for job in part):
                none = [[False] * len(job.row.ids) for job in part]
                edges = Edges(
                    knocked.reshape(len(part), layers, heads).to(lm.device),
                    [job.knock[0] if job.knock else none[n] for n, job in enumerate(part)],
                    [job.knock[1] if job.knock else none[n] for n, job in enumerate(part)],
                )
            found = forward(
                lm,
                [job.row for job in part],
                gates=gates.reshape(len(part), layers, heads).to(lm.device),
                replace=replacement,
                knock=edges,
            )
            values += effect_values(lm, found, settings.effect)
    return values


def _replacements(lm: LoadedModel, part: Sequence[_Job]) -> torch.Tensor | None:
    """The replacements of a pass's rows, [rows, L, H, d] (mean) or [rows, L, T, H, d] per
    position (resample, zero past a row's end: padding, which no real position reads); zeros
    for a knockout's row (its gates stay open); None if no row has one (zero ablation)."""
    reps = [job.replacement for job in part]
    first = next((r for r in reps if r is not None), None)
    if first is None:
        return None
    per_position = first.dim() == 4
    shape = tuple(first.shape)
    if per_position:
        shape = (shape[0], max(len(job.row.ids) for job in part), *shape[2:])
    out = torch.zeros((len(part), *shape), dtype=lm.dtype, device=lm.device)
    for n, r in enumerate(reps):
        if r is not None and per_position:
            out[n, :, : r.shape[1]] = r.to(device=lm.device, dtype=lm.dtype)
        elif r is not None:
            out[n] = r.to(device=lm.device, dtype=lm.dtype)
    return out
