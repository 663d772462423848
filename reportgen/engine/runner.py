"""Batching: every example's saliency, head scores and ablation check, in input order.

All inputs are encoded and checked before the first pass (a bad input fails fast), and the
settings that depend on the model are checked against it; results stream out a window at a
time, each window sorted by length into batches that pad little."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from reportgen.data.blocks import block_edges
from reportgen.data.examples import Example
from reportgen.data.grounding import replaced
from reportgen.data.methods import ROLLOUTS
from reportgen.data.metrics import check_metric, shares
from reportgen.data.results import HeadStats, PairFlow, Result, default_top_k
from reportgen.data.tasks import Task
from reportgen.engine import tiles
from reportgen.engine.ablation import Reference, check_effect, head_means
from reportgen.engine.ablation import ablate as ablate_heads
from reportgen.engine.encoding import Encoded, encode
from reportgen.engine.loading import LoadedModel
from reportgen.engine.memory import budget_bytes
from reportgen.engine.methods import REGISTRY
from reportgen.engine.norms import check_supported as check_attn_norm
from reportgen.engine.objectives import Pass, target_text
from reportgen.engine.patching import attribution_patching
from reportgen.engine.tiles import Reductions
from reportgen.errors import SaliencyError, SettingsError
from reportgen.settings import Settings

WINDOW_BATCHES = 8
"""Inputs are sorted by length within windows of this many batches..."""
WINDOW_BYTES = 128 * 2**20
"""...or of this many bytes of results, whichever is smaller (a window's results are held)."""


def compute_batch(
    lm: LoadedModel,
    batch: Sequence[Encoded],
    settings: Settings,
    ablate: bool = True,
    memory: MemoryPlan | None = None,
    reference: Reference | None = None,
) -> list[Result]:
    """Saliency, head scores and (optionally) the ablation check for one batch of examples
    (mean and resample ablation draw on `reference`, by default the batch itself)."""
    metric = settings.metric
    # The batch keeps the most any of its inputs needs; each input then keeps its own k, so
    # what is stored does not depend on the inputs it was batched with.
    top_k = max(_top_k(settings, row) for row in batch)
    memory = memory or MemoryPlan.of(lm, settings)
    dense = settings.store != "top-k"
    base, reductions = saliency(lm, batch, settings, top_k, dense=dense, memory=memory)
    _check_finite(lm, batch, base.losses.detach(), "objective")
    results = []
    for b, row in enumerate(batch):
        stats, scores = _example_stats(reductions, base.layout[b], row, _top_k(settings, row))
        if not (np.isfinite(stats.total).all() and np.isfinite(stats.top_values).all()):
            _check_finite(lm, [row], torch.tensor([float("nan")]), f"{settings.method} saliency")
        shares(stats, metric, row.example.id)  # a metric without saliency fails here, named
        results.append(
            Result(
                example=row.example,
                tokens=row.tokens,
                spans=row.spans,
                target=target_text(lm, base.targets[b]),
                target_given=row.target_ids is not None,
                predicted=target_text(lm, base.predicted[b]),
                value=float(base.values[b]),
                loss=float(base.losses[b].detach()),
                prediction_position=row.prediction_position,
                stats=stats,
                ablation=None,
                dense=None if scores is None else _stored(scores, settings.store),
                relevance=_relevance(reductions, base.layout[b], row),
                pairs=_pairs(reductions, base.layout[b], row),
                unknown=row.unknown,
            )
        )
    if reference is None and needs_reference(settings, ablate):
        reference = make_reference(lm, [row.example for row in batch], settings, memory)
    if settings.patching and lm.task is not Task.ENCODER:
        baseline = settings.patch_baseline
        patched = attribution_patching(
            lm,
            batch,
            base,
            settings.batch_size,
            baseline,
            mean=None if reference is None else reference.mean,
            counterfactuals=[counterfactual(row, lm, settings) for row in batch]
            if baseline == "counterfactual"
            else None,
        )
        results = [replace(r, patching=p) for r, p in zip(results, patched, strict=True)]
    if ablate and settings.ablate_k > 0:
        grids_for_ablation = [r.head_scores(metric) for r in results]
        ablations = ablate_heads(lm, batch, base, grids_for_ablation, settings, reference)
        results = [replace(r, ablation=a) for r, a in zip(results, ablations, strict=True)]
    return results


def saliency(
    lm: LoadedModel,
    batch: Sequence[Encoded],
    settings: Settings,
    top_k: int,
    dense: bool,
    memory: MemoryPlan,
) -> tuple[Pass, Reductions]:
    """The method's saliency of a batch, reduced: by the tiled engine (the default), or by the
    dense reference engine (`--engine eager`: every layer's T × T weights and gradients kept,
    reduced in one tile per layer by the same code)."""
    method = settings.method
    budget = memory.tile_bytes
    if settings.engine == "tiled":
        if method == "attn-grad":
            wang = settings.aggregate == "wang"
            return tiles.tiled_attn_grad(lm, batch, top_k, dense, budget, pairs=wang)
        if method == "grad-rollout":
            return tiles.tiled_attn_grad(lm, batch, top_k, dense, budget, mode="gain")
        if method in ("attention", "rollout"):
            return tiles.tiled_attention(lm, batch, top_k, dense, budget, method == "rollout")
        if method == "attn-norm":
            return tiles.tiled_attn_norm(lm, batch, top_k, dense, budget)
        longest = max(len(row.ids) for row in batch)
        rows = max(1, min(settings.batch_size * settings.steps, memory.rows(longest)))
        return tiles.tiled_attattr(lm, batch, top_k, dense, settings.steps, rows, budget)
    base, per_layer = REGISTRY[method](lm, batch, settings)
    mix = method in ROLLOUTS
    reductions = tiles.new_reductions(lm, batch, base.layout, top_k, dense, mix=mix)
    for layer, part in enumerate(per_layer):
        reductions.add(layer, 0, part.abs() if method == "attn-grad" else part)
    reductions.finish(method if mix else None)
    return base, reductions


def _top_k(settings: Settings, row: Encoded) -> int:
    """Cells an input keeps per head: --top-k, or the default for its length."""
    return settings.top_k or default_top_k(len(row.ids))


def _relevance(
    reductions: Reductions, placed: Sequence[tuple[int, int, int]], row: Encoded
) -> np.ndarray | None:
    """The example's rollout relevance [L, T] (its one sequence's row), if the method has one."""
    if reductions.relevance is None or row.prediction_position is None:
        return None
    [(k, start, end)] = placed  # a prediction position means one sequence
    return np.asarray(reductions.relevance[k, :, : end - start].cpu(), np.float64)


def _pairs(
    reductions: Reductions, placed: Sequence[tuple[int, int, int]], row: Encoded
) -> PairFlow | None:
    """The example's Wang et al. aggregation (its segments, no segment, the prediction), if
    computed: a bi-encoder's two sequences add up."""
    if reductions.pair_sums is None or reductions.pair_counts is None:
        return None
    width = reductions.pair_sums.shape[-1]
    groups = [*range(len(row.spans)), width - 2, width - 1]
    rows = [k for k, _, _ in placed]

    def pick(a: torch.Tensor) -> np.ndarray:
        return np.asarray(a[rows][:, :, groups][:, :, :, groups].sum(0).cpu(), np.float64)

    return PairFlow(
        segments=tuple(s.name for s in row.spans),
        sums=pick(reductions.pair_sums),
        pairs=pick(reductions.pair_counts),
    )


def _stored(scores: np.ndarray, store: str) -> np.ndarray:
    return scores.astype(np.float16) if store == "dense-float16" else scores


def _example_stats(
    reductions: Reductions, placed: Sequence[tuple[int, int, int]], row: Encoded, top_k: int
) -> tuple[HeadStats, np.ndarray | None]:
    """One example's HeadStats (and dense scores) from the rows of the batch that hold it: a
    bi-encoder's two sequences add up, their cells placed at the example's own positions."""
    n = len(row.ids)
    named = len(row.spans)
    groups = [*range(named), reductions.flow.shape[-1] - 1]  # its segments, then "no segment"
    rows = [k for k, _, _ in placed]
    total = reductions.total[rows].sum(0)
    prediction = reductions.prediction[rows].sum(0)
    flow = reductions.flow[rows][:, :, :, groups][:, :, :, :, groups].sum(0)
    values, cells = [], []
    for k, start, end in placed:
        length = end - start
        cell = reductions.top_cells[k]
        if start == 0 and length == n:  # the example's one sequence: cells already its own
            cells.append(cell)
        else:
            moved = (cell // length + start) * n + cell % length + start
            cells.append(torch.where(cell >= 0, moved, cell))
        values.append(reductions.top_values[k])
    value, cell = torch.cat(values, -1), torch.cat(cells, -1)
    if len(placed) == 1:  # already strongest first: the example's own k of the batch's
        value, cell = value[..., :top_k], cell[..., :top_k]
    else:
        keep = torch.topk(value.abs(), min(top_k, value.shape[-1]), dim=-1).indices
        value, cell = torch.gather(value, -1, keep), torch.gather(cell, -1, keep)
        order = tiles._lexsort(-value.abs(), torch.where(cell >= 0, cell, cell.max() + 1))
        value, cell = torch.gather(value, -1, order), torch.gather(cell, -1, order)
    scores = None
    if reductions.dense is not None:
        scores = np.zeros((reductions.total.shape[1], reductions.total.shape[2], n, n), np.float32)
        for k, start, end in placed:
            length = end - start
            block = reductions.dense[k, :, :, :length, :length]
            scores[:, :, start:end, start:end] = block.cpu().numpy()
    blocks = [reductions.blocks[k] for k, _, _ in placed]
    edges = reductions.plans[placed[0][0]].edges
    stats = HeadStats(
        segments=tuple(s.name for s in row.spans),
        total=np.asarray(total.cpu(), np.float64),
        prediction=np.asarray(prediction.cpu(), np.float64),
        flow=np.asarray(flow.cpu(), np.float64),
        top_cells=np.asarray(cell.cpu(), np.int32),
        top_values=np.asarray(value.cpu(), np.float32),
        edges=None if edges is None else block_edges(n, row.spans),
        blocks=None
        if edges is None
        else np.asarray(sum(b for b in blocks if b is not None), np.float64),
    )
    return stats, scores


def _check_finite(
    lm: LoadedModel, batch: Sequence[Encoded], values: torch.Tensor, what: str
) -> None:
    """NaN or infinity is reported as such, naming the input, the dtype and what to try."""
    bad = [row for row, value in zip(batch, values.tolist(), strict=True) if not np.isfinite(value)]
    if not bad:
        return
    ex = bad[0].example
    dtype = str(lm.dtype).removeprefix("torch.")
    hint = (
        "half precision overflows easily: try --dtype float32"
        if lm.dtype in (torch.float16, torch.bfloat16)
        else "check the model's weights, or try another --dtype"
    )
    raise SaliencyError(
        f"{ex.source}: input '{ex.id}': the {what} is NaN or infinite with model '{lm.name}' in "
        f"{dtype} ({hint})"
    )


def check_settings(lm: LoadedModel, settings: Settings) -> None:
    """The settings that depend on the model, checked before any pass."""
    settings.validate()
    if settings.method == "attn-norm":
        check_attn_norm(lm.model)
    if settings.patching and lm.task is Task.ENCODER:
        raise SaliencyError(
            "--patching estimates each head's effect on log p(target), which a bare encoder "
            "has not; drop --patching"
        )
    if settings.method in ROLLOUTS and lm.task is Task.ENCODER:
        raise SaliencyError(
            f"method {settings.method} gives each token's relevance for the prediction "
            "position, which a bare encoder has not; use attn-grad, attention, attattr or "
            "attn-norm"
        )
    heads = lm.num_layers * lm.num_heads
    if settings.ablate_k >= heads:
        raise SettingsError(
            f"--ablate-k must be below the model's {heads} heads "
            f"({lm.num_layers} layers × {lm.num_heads}), got {settings.ablate_k}"
        )
    if lm.max_tokens and settings.max_tokens and settings.max_tokens > lm.max_tokens:
        raise SettingsError(
            f"--max-tokens {settings.max_tokens} exceeds the model's limit of {lm.max_tokens}"
        )
    if settings.metric.kind == "prediction" and lm.task is Task.ENCODER:
        raise SaliencyError(
            "metric 'prediction' needs a prediction position, which a bare encoder has not; "
            "use total or flow:SRC->DST"
        )


def needs_reference(settings: Settings, ablate: bool = True) -> bool:
    """Whether the run's inputs are drawn on: mean or resample ablation, or patching from the
    mean."""
    ablating = ablate and settings.ablate_k > 0 and settings.ablation != "zero"
    return ablating or (settings.patching and settings.patch_baseline == "mean")


def counterfactual(row: Encoded, lm: LoadedModel, settings: Settings) -> Encoded:
    """The input's counterfactual (its `counterfactual` segments in place of its own) encoded
    as the input is (its target teacher-forced alike): the same number of tokens, or
    SaliencyError naming the input."""
    ex = row.example
    if not ex.counterfactual:
        raise SaliencyError(
            f"{ex.source}: input '{ex.id}' has no \"counterfactual\"; --patch-baseline "
            "counterfactual patches each head's output on it into the input: give every input "
            'one, e.g. {"ENV": "<MOT> saw a cat"} (or use --patch-baseline mean)'
        )
    encoded = _encode(replace(replaced(ex, ex.counterfactual), contrast=None), lm, settings)
    if len(encoded.ids) != len(row.ids):
        raise SaliencyError(
            f"{ex.source}: input '{ex.id}': its counterfactual is {len(encoded.ids)} tokens and "
            f"the input {len(row.ids)}; patching replaces a head's output position by position: "
            "give a counterfactual of the same number of tokens"
        )
    return encoded


def make_reference(
    lm: LoadedModel,
    pool: Sequence[Example],
    settings: Settings,
    memory: MemoryPlan | None = None,
) -> Reference:
    """What mean and resample ablation draw on: the run's inputs `pool` and, for mean ablation,
    every head's mean output over them (one streaming forward pass, in the same windows and
    batches whatever part of the run is computed, so shards and resumed runs agree)."""
    mean = None
    if (settings.ablate_k > 0 and settings.ablation == "mean") or (
        settings.patching and settings.patch_baseline == "mean"
    ):
        memory = memory or MemoryPlan.of(lm, settings)
        lengths = [len(_encode(ex, lm, settings).ids) for ex in pool]

        def batches() -> Iterator[list[Encoded]]:
            for first, last in windows(lengths, lm, settings.batch_size, settings.store):
                window = [_encode(ex, lm, settings) for ex in pool[first:last]]
                order = sorted(range(len(window)), key=lambda i: len(window[i].ids))
                sizes = [len(row.ids) for row in window]
                for picked in memory.batches(order, sizes, settings.batch_size):
                    yield [window[i] for i in picked]

        mean, _ = head_means(lm, batches())
    return Reference(pool, lambda ex: _encode(ex, lm, settings), mean)


def compute(
    examples: Sequence[Example],
    lm: LoadedModel,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
    pool: Sequence[Example] | None = None,
) -> Iterator[Result]:
    """Saliency for every example, in input order, one batch at a time (results stream out).

    All inputs are encoded and checked before the first pass, so a bad input fails fast; only
    their lengths are kept, and each window of inputs is encoded again when its turn comes (this
    costs ~0.1 ms per input and keeps memory flat in the number of inputs). `pool` is the whole
    run's inputs when `examples` are only part of them (a shard, the rest of a resumed run):
    mean and resample ablation draw on it."""
    check_settings(lm, settings)
    check_metric(settings.metric, examples)
    memory = MemoryPlan.of(lm, settings)
    lengths = []
    for ex in examples:
        encoded = _encode(ex, lm, settings)
        _check_spans(encoded, settings)
        check_effect(encoded, lm, settings)
        if settings.patching and settings.patch_baseline == "counterfactual":
            counterfactual(encoded, lm, settings)
        memory.check(encoded)
        lengths.append(len(encoded.ids))
    _check_padding(lm, settings, examples, lengths)
    reference = None
    if needs_reference(settings) and examples:
        reference = make_reference(lm, examples if pool is None else pool, settings, memory)
    for first, last in windows(lengths, lm, settings.batch_size, settings.store):
        window = [_encode(ex, lm, settings) for ex in examples[first:last]]
        # Batches of similar lengths pad less; results still leave in input order.
        order = sorted(range(len(window)), key=lambda i: len(window[i].ids))
        done: dict[int, Result] = {}
        for picked in memory.batches(order, [len(row.ids) for row in window], settings.batch_size):
            batch = [window[i] for i in picked]
            found = compute_batch(lm, batch, settings, memory=memory, reference=reference)
            done.update(zip(picked, found, strict=True))
            if progress is not None:
                progress(len(batch))
        yield from (done[i] for i in range(len(window)))


@dataclass(frozen=True)
class MemoryPlan:
    """Batches, attattr's rows per pass and tiles sized from the memory budget (--max-memory,
    or half the device's free memory) and the footprint measured at load."""

    budget: int
    """Bytes the computation may use."""
    per_row: Callable[[int], int]
    """Bytes one row of `tokens` tokens needs in a pass with gradients."""
    tile_bytes: int

    @classmethod
    def of(cls, lm: LoadedModel, settings: Settings) -> MemoryPlan:
        budget = budget_bytes(lm.device, settings.max_memory)
        element = torch.empty((), dtype=lm.dtype).element_size()
        cells = lm.num_layers * lm.num_heads
        dense = {"top-k": 0, "dense": 4, "dense-float16": 2}[settings.store]

        def per_row(tokens: int) -> int:
            need = 1.25 * lm.footprint.bytes(1, tokens)  # and the backward's working set
            if settings.engine == "eager":  # every layer's weights, gradients and products
                need += 3 * cells * tokens * tokens * element
            if settings.method in ROLLOUTS:  # each layer's head mean, kept for the rollout
                need += 2 * lm.num_layers * tokens * tokens * max(element, 4)
            need += cells * tokens * tokens * dense
            need += cells * (16 * (settings.top_k or default_top_k(tokens)) + 8 * 64)
            return int(need)

        return cls(budget, per_row, max(2**20, min(tiles.TILE_BYTES, budget // 8)))

    def rows(self, tokens: int) -> int:
        """How many rows of `tokens` tokens fit in one pass."""
        return max(0, (self.budget - self.tile_bytes) // max(1, self.per_row(tokens)))

    def check(self, encoded: Encoded) -> None:
        """An input that cannot run even alone is an error, with what it would need."""
        tokens = max(end - start for start, end in encoded.sequences)
        if self.rows(tokens) >= len(encoded.sequences):
            return
        ex = encoded.example
        need = len(encoded.sequences) * self.per_row(tokens) + self.tile_bytes
        raise SaliencyError(
            f"{ex.source}: input '{ex.id}' needs about {_gib(need)} for its {len(encoded.ids)} "
            f"tokens, more than the {_gib(self.budget)} available; raise --max-memory, shorten "
            "the input (or --max-tokens with --truncate), or use a device with more memory"
        )

    def batches(
        self, order: Sequence[int], lengths: Sequence[int], batch_size: int
    ) -> Iterator[list[int]]:
        """Consecutive runs of `order` (inputs sorted by length), at most `batch_size` inputs
        and as many as fit the budget at the longest one's length (padded rows are as long)."""
        batch: list[int] = []
        for i in order:
            longest = max([lengths[j] for j in batch] + [lengths[i]])
            if batch and (len(batch) == batch_size or len(batch) + 1 > self.rows(longest)):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch


def _gib(size: float) -> str:
    """A size in bytes as people read it: 950 KiB, 1.3 MiB, 24 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} bytes"


def _encode(example: Example, lm: LoadedModel, settings: Settings) -> Encoded:
    return encode(example, lm, settings.max_tokens, settings.truncate, settings.pairing)


def _check_spans(encoded: Encoded, settings: Settings) -> None:
    """A flow metric's segments must keep tokens after truncation."""
    metric = settings.metric
    if metric.kind != "flow":
        return
    kept = {s.name for s in encoded.spans}
    for name in (metric.src, metric.dst):
        if name not in kept:
            ex = encoded.example
            raise SaliencyError(
                f"{ex.source}: input '{ex.id}' keeps no token of segment '{name}' after "
                f"truncation to {len(encoded.ids)} tokens, and metric {metric.name} needs it; "
                "raise --max-tokens or choose another metric"
            )


def _check_padding(
    lm: LoadedModel, settings: Settings, examples: Sequence[Example], lengths: Sequence[int]
) -> None:
    """Batches of inputs of different lengths need padding the model is known to take (and a
    classifier without a pad id takes no batch above one at all)."""
    if lm.padding.safe or settings.batch_size == 1:
        return
    if len(set(lengths)) <= 1 and lm.padding.batches:
        return
    raise SettingsError(
        f"{lm.padding.reason}; inputs of different lengths cannot share a batch: pass "
        "--batch-size 1"
    )


def windows(
    lengths: Sequence[int], lm: LoadedModel, batch_size: int, store: str = "dense"
) -> Iterator[tuple[int, int]]:
    """Consecutive runs [first, last) of inputs (given their token counts), each at most
    WINDOW_BATCHES batches and WINDOW_BYTES of results held (but at least one input): a
    result keeps its top cells and reductions, and with --store dense every cell."""
    first, size = 0, 0
    heads = lm.num_layers * lm.num_heads
    per_cell = {"top-k": 0, "dense": 4, "dense-float16": 2}[store] * heads
    for index, length in enumerate(lengths):
        cost = per_cell * length**2 + heads * (8 * default_top_k(length) + 256)
        if index > first and (
            index - first == WINDOW_BATCHES * batch_size or size + cost > WINDOW_BYTES
        ):
            yield first, index
            first, size = index, 0
        size += cost
    if lengths:
        yield first, len(lengths)
