"""What the engine computes for one example, as numpy arrays and plain values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reportgen.data.examples import Example

if TYPE_CHECKING:
    from reportgen.data.metrics import Metric

MAX_DEFAULT_CELLS = 512
"""Most cells kept per head by default (`default_top_k`). A click on a page redraws one head's
cells, and Vega's work and the canvas's grow with them (benchmarks/RESULTS.md has the figures);
`--top-k` sets it."""


def default_top_k(tokens: int) -> int:
    """Cells kept per head unless asked otherwise: 2T (a head's strongest links, about two per
    query), at most MAX_DEFAULT_CELLS."""
    return min(2 * tokens, MAX_DEFAULT_CELLS)


@dataclass(frozen=True)
class TokenSpan:
    """A named segment as a token range [start, end)."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class UnknownToken:
    """A token the tokenizer does not know: the model reads its unknown token (e.g. `[UNK]`) at
    `position`, where the input's text has `text` (characters [start, end) of `Example.text`).
    The report shows the unknown token, and the word only as what it replaced."""

    position: int
    text: str
    start: int
    end: int


INTERVENTIONS = ("zero", "mean", "resample")
"""What replaces an ablated head's output (pre-output-projection): zeros; its mean over every
token of every input of the run (one vector per head, the same at every position); or its output
at the same position on one other input of the run (the donor, drawn with the seed; past the
donor's end, where it is shorter, its mean over its tokens)."""
EFFECTS = ("logprob", "logit-diff", "prob")
"""What an intervention's effect is measured on: log p(target) (a multi-token target's summed
log-probabilities), the logit difference target − contrast at the prediction position, or
p(target). A bare encoder's objective (the cosine of its two segments) is measured as is."""


@dataclass(frozen=True)
class Knockout:
    """The effect measure with attention from queries in segment `dst` to keys in segment `src`
    blocked (pre-softmax) in the ablated top heads, and in all heads of each layer in turn."""

    src: str
    dst: str
    value: float
    layers: tuple[float, ...] = ()
    """Per layer l: the effect measure with the edges blocked in every head of layer l (and no
    other); empty in runs from before the layer-level knockout."""


@dataclass(frozen=True)
class Ablation:
    """An example's interventions: the top-k grid heads ablated, against k random heads (several
    seeded draws), head by head (the cumulative curve), and the metric's flow knocked out."""

    intervention: str
    """zero, mean or resample (see INTERVENTIONS)."""
    effect: str
    """logprob, logit-diff or prob (see EFFECTS); `cosine` for a bare encoder."""
    heads: tuple[tuple[int, int], ...]
    """The ablated top heads, (layer, head), 0-based, strongest first."""
    value: float
    """The effect measure on the intact model."""
    value_top: float
    """With the top-k heads ablated."""
    random_heads: tuple[tuple[tuple[int, int], ...], ...]
    """Each draw's k random heads (seeded by --seed and the input's id)."""
    random_values: tuple[float, ...]
    """The effect measure with each draw's heads ablated."""
    curve: tuple[float, ...]
    """The effect measure with the top 1, 2, ..., k heads ablated (the last is value_top)."""
    layers: tuple[float, ...] = ()
    """Per layer l: the effect measure with every head of layer l ablated (the same
    intervention), and no other; empty in runs from before the layer-level ablation."""
    donor: str | None = None
    """Resample ablation: the id of the input whose head outputs replace this one's."""
    knockout: Knockout | None = None

    @property
    def draws(self) -> int:
        return len(self.random_values)

    @property
    def value_random(self) -> float:
        """Mean over the draws."""
        return float(sum(self.random_values) / len(self.random_values))

    @property
    def delta_top(self) -> float:
        return self.value_top - self.value

    @property
    def delta_random(self) -> float:
        return self.value_random - self.value

    @property
    def delta_knockout(self) -> float | None:
        return None if self.knockout is None else self.knockout.value - self.value

    @property
    def delta_curve(self) -> tuple[float, ...]:
        return tuple(v - self.value for v in self.curve)

    @property
    def delta_layers(self) -> tuple[float, ...]:
        return tuple(v - self.value for v in self.layers)

    @property
    def delta_layer_knockouts(self) -> tuple[float, ...]:
        return () if self.knockout is None else tuple(v - self.value for v in self.knockout.layers)


def layer_deltas(ablations: Sequence[Ablation]) -> list[tuple[str, np.ndarray]]:
    """The layer-by-layer changes of a run's ablations, [inputs, layers], by intervention: the
    run's own (every head of the layer ablated) and, with a flow metric, `knockout:SRC->DST`
    (its edges blocked in every head of the layer); empty unless every input has them."""
    if not ablations or not all(a.layers for a in ablations):
        return []
    first = ablations[0]
    out = [(first.intervention, np.array([a.delta_layers for a in ablations]))]
    knock = first.knockout
    if knock is not None and all(a.knockout is not None and a.knockout.layers for a in ablations):
        knocked = np.array([a.delta_layer_knockouts for a in ablations])
        out.append((f"knockout:{knock.src}->{knock.dst}", knocked))
    return out


@dataclass(frozen=True)
class HeadStats:
    """Exact per-head reductions of an example's saliency S [L, H, T, T] (rows queries, columns
    keys), and each head's strongest cells: all the report needs, without S itself.

    Sums are of |S| over every cell, accumulated in float64 (each tile's partial sums in the
    compute dtype, float32 at least). `flow[l, h, q, k]` is the mass from keys in segment k to
    queries in segment q, segments in `segments` order, then (last index) tokens in no named
    segment, so any `flow:SRC->DST` metric is a lookup and `flow.sum((2, 3)) == total`."""

    segments: tuple[str, ...]
    total: np.ndarray
    """float64 [L, H]: every cell."""
    prediction: np.ndarray
    """float64 [L, H]: the prediction position's row (zeros without one)."""
    flow: np.ndarray
    """float64 [L, H, n + 1, n + 1]: (query segment, key segment); index n is no segment."""
    top_cells: np.ndarray
    """int32 [L, H, k]: cells i * T + j by |S|, strongest first (ties by cell); -1 past the
    head's non-zero cells."""
    top_values: np.ndarray
    """float32 [L, H, k]: S at those cells (signed for a signed method; 0 where the cell is -1)."""
    edges: np.ndarray | None = None
    """Long inputs (`blocks.is_long`): int64 [n + 1] token block edges (`blocks.block_edges`);
    None otherwise."""
    blocks: np.ndarray | None = None
    """Long inputs: float64 [L, H, n, n], |S| summed over each (query block, key block), so
    `blocks.sum((2, 3)) == total` (to float32 rounding once read from a run record, which
    stores them in float32); None otherwise."""

    @property
    def k(self) -> int:
        return int(self.top_cells.shape[-1])


@dataclass(frozen=True)
class PairFlow:
    """Wang et al. 2023 (arXiv:2305.14160) aggregation of attn-grad per layer: the heads summed
    before the magnitude, I_l = |Σ_h A_h ⊙ ∂L/∂A_h|, summed over the token pairs (i, j) the
    attention allows, i ≠ j, by (query group, key group), and those pairs counted. Groups are
    the segments in `segments` order, then tokens in no segment, then (last) the prediction
    position on its own, so a mean over any set of groups is sums / pairs of its cells."""

    segments: tuple[str, ...]
    sums: np.ndarray
    """float64 [L, n + 2, n + 2]: Σ I_l(i, j) by (query group, key group)."""
    pairs: np.ndarray
    """float64 [L, n + 2, n + 2]: the number of those pairs (the same in every layer unless a
    layer's window differs)."""

    @property
    def target(self) -> int:
        """The prediction position's group."""
        return len(self.segments) + 1

    def mean(self, cells: Sequence[tuple[int, int]]) -> np.ndarray:
        """S_l over the (query group, key group) `cells`: their sum over their pairs, [L]
        (NaN in a layer without such pairs)."""
        total = sum((self.sums[:, q, k] for q, k in cells), np.zeros(self.sums.shape[0]))
        count = sum((self.pairs[:, q, k] for q, k in cells), np.zeros(self.sums.shape[0]))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def curves(
        self, src: str | None = None, dst: str | None = None
    ) -> list[tuple[str, np.ndarray]]:
        """The per-layer flow curves Wang et al. plot, for this input's groups: SRC→DST (a flow
        metric's), each segment → target (the prediction position), and all other pairs;
        curves without pairs are left out."""
        return [(label, self.mean(cells)) for label, cells in self.curve_cells(src, dst)]

    def curve_cells(
        self, src: str | None = None, dst: str | None = None
    ) -> list[tuple[str, list[tuple[int, int]]]]:
        """The (query group, key group) cells of each curve of `curves`, in its order."""
        index = {name: g for g, name in enumerate(self.segments)}
        chosen: list[tuple[str, list[tuple[int, int]]]] = []
        if src in index and dst in index:
            chosen.append((f"{src} → {dst}", [(index[dst], index[src])]))
        for name, g in index.items():
            chosen.append((f"{name} → target", [(self.target, g)]))
        used = {cell for _, cells in chosen for cell in cells}
        groups = self.sums.shape[-1]
        rest = [(q, k) for q in range(groups) for k in range(groups) if (q, k) not in used]
        chosen.append(("other pairs", rest))
        return [
            (label, cells)
            for label, cells in chosen
            if sum(self.pairs[:, q, k].sum() for q, k in cells) > 0
        ]


PATCH_BASELINES = ("zero", "mean", "counterfactual")
"""What attribution patching patches into a head: zeros; its mean output over every token of
every input of the run (as `--ablation mean`); or its output, position by position, on the
input's counterfactual (the input's `counterfactual` text, the same number of tokens)."""

PATCH_CHECKED = 3
"""Heads per input whose attribution-patching estimate is checked by real patching (fewer if
the model has fewer)."""


@dataclass(frozen=True)
class Patching:
    """Attribution patching (`reportgen.engine.patching`): each head's first-order estimate of
    the change in log p(target) when its output is replaced by the baseline's, and the real
    change for the heads of largest |estimate|."""

    estimate: np.ndarray
    """float64 [L, H]: estimated Δ log p(target) (an estimate, from the head-gate gradient)."""
    heads: np.ndarray
    """int32 [k, 2]: the heads patched for real, (layer, head), 0-based, largest |estimate|
    first."""
    real: np.ndarray
    """float64 [k]: the measured Δ log p(target) with each of those heads patched alone."""
    baseline: str = "zero"
    """What is patched in (see PATCH_BASELINES)."""


@dataclass(frozen=True)
class Result:
    """One example's saliency and everything the report shows about it."""

    example: Example
    tokens: tuple[str, ...]
    spans: tuple[TokenSpan, ...]
    target: str | None
    """Target text (given, or predicted when `target_given` is false); None for a bare encoder."""
    target_given: bool
    predicted: str | None
    """The model's top prediction at the prediction position (label name for classifiers)."""
    value: float
    """p(target) (a multi-token target's joint probability), or the cosine for a bare encoder."""
    loss: float
    prediction_position: int | None
    stats: HeadStats
    """The exact reductions of S and each head's top cells: every metric's head scores."""
    ablation: Ablation | None
    dense: np.ndarray | None = None
    """S itself, [layers, heads, T, T] (rows queries, columns keys), with `--store dense` only;
    magnitudes for attn-grad, signed for attattr."""
    relevance: np.ndarray | None = None
    """float64 [layers, T]: rollout and grad-rollout's relevance of each key token for the
    prediction position after each layer (heads averaged by the method); None otherwise."""
    pairs: PairFlow | None = None
    """attn-grad with `--aggregate wang`: Wang et al.'s per-layer aggregation; None otherwise."""
    patching: Patching | None = None
    """With `--patching`: attribution patching of every head, the top ones checked for real."""
    unknown: tuple[UnknownToken, ...] = ()
    """The tokens the model read as its unknown token, with the text each replaced, by
    position; empty when it knew every token (and in runs from before they were recorded)."""

    def head_scores(self, metric: str | Metric) -> np.ndarray:
        """Each head's share of the metric's saliency, float32 [layers, heads], summing to 1."""
        from reportgen.data.metrics import parse_metric, shares

        return shares(self.stats, parse_metric(metric), self.example.id)
