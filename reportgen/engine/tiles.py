"""Attention × gradient without the T × T tensors: per layer, a block of query rows at a time.

For one head, O = A V with A = softmax(...) of shape [T, T], so ∂L/∂A = (∂L/∂O) Vᵀ and the
saliency S = A ⊙ ((∂L/∂O) Vᵀ). The forward and backward run on the fast kernel (`Capture` keeps
each layer's q, k, v and its output); as each layer's output gradient arrives in the backward,
its rows of A are recomputed a tile at a time with the model's own function (masks, sliding
windows, softcapping, sinks included), S is formed, reduced at once into `Reductions`, and the
layer's tensors are let go. Nothing of size T × T lives longer than a tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from reportgen.engine.attention import FUSED_FLAG, Capture, Captured, eager_of, fused_attention
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel
from reportgen.engine.objectives import Layout, Pass, forward

TILE_BYTES = 64 * 2**20
"""Default bytes of one tile's full-size temporaries (about four [B, H, rows, T] tensors)."""


@dataclass(frozen=True)
class SequencePlan:
    """What to reduce for one batch row (one sequence the model reads)."""

    length: int
    segments: torch.Tensor
    """int64 [length]: each token's segment index, `n_segments` for a token in none."""
    prediction: int | None
    """The prediction position within this sequence (its row sum is kept), if any."""


class Reductions:
    """Exact per-head reductions of S for a batch of sequences, over every layer, plus each
    head's top-k cells by magnitude (and optionally S itself, dense).

    Shapes per batch row b: total and prediction [L, H]; flow [L, H, n+1, n+1], queries'
    segment by keys' segment (index n: tokens in no named segment); top values and cells
    [L, H, k] (cell = i * length + j, in the row's own coordinates, strongest first after
    `finish`). Sums are of |S|; top values keep S's sign."""

    def __init__(
        self,
        plans: Sequence[SequencePlan],
        layers: int,
        heads: int,
        n_segments: int,
        top_k: int,
        dense: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.plans = list(plans)
        rows = len(self.plans)
        self.width = max(p.length for p in self.plans)
        self.dtype = dtype
        self.device = device
        self.k = top_k
        groups = n_segments + 1
        # The sums accumulate in float64 (a tile's own partial sums are in the tile's dtype).
        wide = torch.float64 if device.type != "mps" else dtype
        self.total = torch.zeros(rows, layers, heads, dtype=wide, device=device)
        self.prediction = torch.zeros(rows, layers, heads, dtype=wide, device=device)
        self.flow = torch.zeros(rows, layers, heads, groups, groups, dtype=wide, device=device)
        self.top_values = torch.zeros(rows, layers, heads, top_k, dtype=dtype, device=device)
        self.top_cells = torch.full(
            (rows, layers, heads, top_k), -1, dtype=torch.long, device=device
        )
        width = self.width
        onehot = torch.zeros(rows, width, groups, dtype=dtype, device=device)
        valid = torch.zeros(rows, width, dtype=torch.bool, device=device)
        for b, plan in enumerate(self.plans):
            onehot[b, torch.arange(plan.length, device=device), plan.segments.to(device)] = 1
            valid[b, : plan.length] = True
        self.onehot, self.valid = onehot, valid
        self.full = all(p.length == width for p in self.plans)
        self.lengths = torch.tensor([p.length for p in self.plans], device=device)
        self.dense = (
            torch.zeros(rows, layers, heads, width, width, dtype=dtype, device=device)
            if dense
            else None
        )

    def add(self, layer: int, start: int, tile: torch.Tensor, nonnegative: bool = False) -> None:
        """Reduce S for query rows [start, start + r) of `layer`: tile [B, H, r, T] (T at least
        every row's length; cells outside a row's length are ignored). `nonnegative`: the tile
        holds magnitudes already (it may then be changed in place)."""
        rows = tile.shape[2]
        width = self.width
        tile = tile[..., :width].to(device=self.device, dtype=self.dtype)
        if not self.full:  # pad rows and columns of shorter sequences count for nothing
            keep = self.valid[:, start : start + rows, None] & self.valid[:, None, :width]
            tile = tile * keep[:, None]
        if self.dense is not None:
            self.dense[:, layer, :, start : start + rows, :width] = tile
        mag = tile if nonnegative else tile.abs()
        by_key = torch.matmul(mag, self.onehot[:, None])  # [B, H, r, groups]
        self.flow[:, layer] += torch.matmul(
            self.onehot[:, None, start : start + rows].transpose(-1, -2), by_key
        ).to(self.flow.dtype)
        row_sums = by_key.sum(-1).to(self.total.dtype)  # [B, H, r]
        self.total[:, layer] += row_sums.sum(-1)
        for b, plan in enumerate(self.plans):
            p = plan.prediction
            if p is not None and start <= p < start + rows:
                self.prediction[b, layer] += row_sums[b, :, p - start]
        # Top-k by magnitude: this tile's best, merged with the best so far.
        flat = mag.reshape(*mag.shape[:2], -1)
        k = min(self.k, flat.shape[-1])
        best, where = torch.topk(flat, k, dim=-1, sorted=False)
        cells = (where // width + start) * self.lengths[:, None, None] + where % width
        values = torch.gather(tile.reshape(*tile.shape[:2], -1), -1, where)
        values = torch.where(best > 0, values, torch.zeros_like(values))
        cells = torch.where(best > 0, cells, torch.full_like(cells, -1))
        all_values = torch.cat([self.top_values[:, layer], values], -1)
        all_cells = torch.cat([self.top_cells[:, layer], cells], -1)
        keep_k = torch.topk(all_values.abs(), self.k, dim=-1, sorted=False).indices
        self.top_values[:, layer] = torch.gather(all_values, -1, keep_k)
        self.top_cells[:, layer] = torch.gather(all_cells, -1, keep_k)

    def finish(self) -> None:
        """Order each head's top cells strongest first, ties by cell (deterministic); empty
        slots (cell -1, value 0) last."""
        order = _lexsort(-self.top_values.abs(), self.top_cells)
        self.top_values = torch.gather(self.top_values, -1, order)
        self.top_cells = torch.gather(self.top_cells, -1, order)


def _lexsort(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """Indices sorting the last axis by `primary`, then `secondary` (both ascending)."""
    first = torch.argsort(secondary, dim=-1, stable=True)
    second = torch.argsort(torch.gather(primary, -1, first), dim=-1, stable=True)
    return torch.gather(first, -1, second)


def attention_rows(captured: Captured, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of the layer's attention weights A, [B, H, r, T], recomputed from its
    captured inputs with the same function the model uses (the standard softmax where the
    load-time probe found it equal to the model's own, else the model's eager attention)."""
    if captured.weights is not None:
        return captured.weights[:, :, start:stop]
    query = captured.query[:, :, start:stop]
    mask = None if captured.mask is None else captured.mask[:, :, start:stop]
    module = captured.module
    if getattr(module, FUSED_FLAG, False):
        found = fused_attention(query, captured.key, captured.value, mask, **captured.kwargs)
        if found is not None:
            return found[1]
    return eager_of(module)(module, query, captured.key, captured.value, mask, **captured.kwargs)[1]


def grad_rows(captured: Captured, grad_out: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of ∂L/∂A = (∂L/∂O) Vᵀ, [B, H, r, T], from the gradient of the layer's
    output [B, T, H, d]; key/value head h // (H / H_kv) serves query head h."""
    g = grad_out[:, start:stop].transpose(1, 2)  # [B, H, r, d]
    value = captured.value  # [B, Hkv, T, d]
    b, heads, r, d = g.shape
    groups = heads // value.shape[1]
    grouped = g.reshape(b, value.shape[1], groups, r, d)
    return torch.matmul(grouped, value[:, :, None].transpose(-1, -2)).reshape(b, heads, r, -1)


def tile_rows(batch: int, heads: int, width: int, element: int, budget: int = TILE_BYTES) -> int:
    """Query rows per tile: four [B, H, rows, T] temporaries of `element` bytes within budget."""
    per_row = 4 * batch * heads * width * max(element, 4)
    return max(1, min(width, budget // max(per_row, 1)))


def reduce_layer(
    reductions: Reductions,
    layer: int,
    captured: Captured,
    grad_out: torch.Tensor | None,
    signed: bool = True,
    budget: int = TILE_BYTES,
) -> None:
    """S = A ⊙ ∂L/∂A for every tile of query rows of `layer` (or A itself without a gradient),
    reduced into `reductions`."""
    query = captured.query
    batch, heads, width, _ = query.shape
    step = tile_rows(batch, heads, width, query.element_size(), budget)
    with torch.no_grad():
        for start in range(0, width, step):
            stop = min(width, start + step)
            a = attention_rows(captured, start, stop)
            if grad_out is None:
                reductions.add(layer, start, a, nonnegative=True)  # weights are >= 0
                continue
            s = grad_rows(captured, grad_out, start, stop).to(reductions.dtype)
            s.mul_(a)  # a fresh tensor of ours: the product in place
            if signed:
                reductions.add(layer, start, s)
            else:
                reductions.add(layer, start, s.abs_(), nonnegative=True)


# --- the methods, tiled -----------------------------------------------------------------------


def plans(examples: Sequence[Encoded], layout: Layout, n_segments: int) -> list[SequencePlan]:
    """One plan per batch row: its length, each token's segment (by the example's own span
    order; `n_segments` for none) and its prediction position."""
    rows: dict[int, SequencePlan] = {}
    for example, placed in zip(examples, layout, strict=True):
        for k, start, end in placed:
            segments = torch.full((end - start,), n_segments, dtype=torch.long)
            for index, span in enumerate(example.spans):
                a, b = max(span.start, start), min(span.end, end)
                if a < b:
                    segments[a - start : b - start] = index
            p = example.prediction_position
            rows[k] = SequencePlan(
                end - start, segments, p - start if p is not None and start <= p < end else None
            )
    return [rows[k] for k in sorted(rows)]


def new_reductions(
    lm: LoadedModel, examples: Sequence[Encoded], layout: Layout, top_k: int, dense: bool
) -> Reductions:
    """Empty reductions for a batch, in float32 (float64 for a float64 model) on its device."""
    n_segments = max((len(e.spans) for e in examples), default=0)
    dtype = torch.float64 if lm.dtype == torch.float64 else torch.float32
    return Reductions(
        plans(examples, layout, n_segments),
        lm.num_layers,
        lm.num_heads,
        n_segments,
        top_k,
        dense,
        dtype,
        lm.device,
    )


def keeps_weights(lm: LoadedModel, rows: Sequence[Encoded], budget: int) -> bool:
    """Whether every layer's attention weights for the batch fit in twice the tile budget:
    then the forward keeps them (its backward does anyway) instead of recomputing them."""
    width = max(end - start for row in rows for start, end in row.sequences)
    sequences = sum(len(row.sequences) for row in rows)
    element = torch.empty((), dtype=lm.dtype).element_size()
    return sequences * lm.num_layers * lm.num_heads * width * width * element <= 2 * budget


def tiled_attn_grad(
    lm: LoadedModel, rows: Sequence[Encoded], top_k: int, dense: bool, budget: int = TILE_BYTES
) -> tuple[Pass, Reductions]:
    """|A ⊙ ∂L/∂A| from one forward and one backward; each layer reduced as its output gradient
    arrives, its captured tensors dropped right after. Short inputs keep their weights from the
    forward (`keeps_weights`); longer ones run the fast kernel and recompute them in tiles."""
    capture = Capture(hooks=True, keep_weights=keeps_weights(lm, rows, budget))
    base = forward(lm, rows, capture=capture)
    reductions = new_reductions(lm, rows, base.layout, top_k, dense)

    def on_grad(layer: int, grad: torch.Tensor) -> None:
        captured = capture.layers.pop(layer)
        if captured.weights is None:
            reduce_layer(reductions, layer, captured, grad, signed=False, budget=budget)
            return
        with torch.no_grad():  # the weights kept, and autograd's own ∂L/∂A (never changed:
            s = (grad * captured.weights).to(reductions.dtype).abs_()  # the backward goes on)
            reductions.add(layer, 0, s, nonnegative=True)

    capture.on_grad = on_grad
    lowest = capture.layers[min(capture.layers)]
    assert lowest.target is not None
    torch.autograd.grad(base.losses.sum(), [lowest.target])
    capture.layers.clear()  # a layer the loss does not depend on has S = 0
    reductions.finish()
    return base, reductions


def tiled_attention(
    lm: LoadedModel, rows: Sequence[Encoded], top_k: int, dense: bool, budget: int = TILE_BYTES
) -> tuple[Pass, Reductions]:
    """The attention weights A themselves, from one forward and the tiles."""
    capture = Capture(keep_weights=keeps_weights(lm, rows, budget))
    with torch.no_grad():
        base = forward(lm, rows, capture=capture)
    reductions = new_reductions(lm, rows, base.layout, top_k, dense)
    for layer in sorted(capture.layers):
        reduce_layer(reductions, layer, capture.layers.pop(layer), None, budget=budget)
    reductions.finish()
    return base, reductions


def tiled_attattr(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    top_k: int,
    dense: bool,
    steps: int,
    rows_per_pass: int,
    budget: int = TILE_BYTES,
) -> tuple[Pass, Reductions]:
    """Integrated gradients on attention, S_l = A_l ⊙ mean_k ∂L(α_k A_l)/∂A_l, signed.

    ∂L/∂A_l at α is (∂L/∂O_l) V_lᵀ with O_l the layer's output before its gate, and V_l does not
    depend on α (the layers below run unscaled), so the mean over steps of the gradients is
    (mean_k ∂L/∂O_l^(k) / α_k) V_lᵀ: the steps accumulate an output-sized tensor per layer, and
    one tile pass per layer forms S. Each input's (layer, step) rows run `rows_per_pass` at a
    time, its layers in order, so a pass's backward stops at the lowest layer it holds."""
    base_capture = Capture()
    with torch.no_grad():
        base = forward(lm, rows, capture=base_capture)
    reductions = new_reductions(lm, rows, base.layout, top_k, dense)
    layers, heads = lm.num_layers, lm.num_heads
    mean_grad = {
        layer: torch.zeros_like(c.out, dtype=reductions.dtype)
        for layer, c in base_capture.layers.items()
    }
    fixed = [replace(r, target_ids=t) for r, t in zip(rows, base.targets, strict=True)]
    steps_of = [(layer, k) for layer in range(layers) for k in range(1, steps + 1)]
    budget_rows = rows_per_pass if lm.padding.batches else 1
    for b, row in enumerate(fixed):
        for first in range(0, len(steps_of), budget_rows):
            chunk = steps_of[first : first + budget_rows]
            gates = torch.ones(len(chunk), layers, heads, dtype=lm.dtype, device=lm.device)
            for r, (layer, k) in enumerate(chunk):
                gates[r, layer] = k / steps
            capture = Capture(hooks=True)
            run = forward(lm, [row] * len(chunk), gates=gates, capture=capture)
            scaled: dict[int, list[tuple[int, float]]] = {}
            for r, (layer, k) in enumerate(chunk):
                scaled.setdefault(layer, []).append((r, k / steps))

            def on_grad(
                layer: int,
                grad: torch.Tensor,
                b: int = b,
                run: Pass = run,
                scaled: dict[int, list[tuple[int, float]]] = scaled,
            ) -> None:
                for r, alpha in scaled.get(layer, ()):
                    pairs = zip(run.layout[r], base.layout[b], strict=True)
                    for (k_run, s, e), (k_base, _, _) in pairs:
                        part = grad[k_run, : e - s].to(reductions.dtype) / (alpha * steps)
                        mean_grad[layer][k_base, : e - s] += part

            capture.on_grad = on_grad
            torch.autograd.grad(run.losses.sum(), [capture.layers[min(scaled)].out])
    for layer in sorted(base_capture.layers):
        captured = base_capture.layers.pop(layer)
        reduce_layer(reductions, layer, captured, mean_grad.pop(layer), signed=True, budget=budget)
    reductions.finish()
    return base, reductions
