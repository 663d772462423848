"""Attention × gradient without the T × T tensors: per layer, a block of query rows at a time.

For one head, O = A V with A = softmax(...) of shape [T, T], so ∂L/∂A = (∂L/∂O) Vᵀ and the
saliency S = A ⊙ ((∂L/∂O) Vᵀ). The forward and backward run on the fast kernel (`Capture` keeps
each layer's q, k, v and its output); as each layer's output gradient arrives in the backward,
its rows of A are recomputed a tile at a time with the model's own function (masks, sliding
windows, softcapping, sinks included), S is formed, reduced at once into `Reductions`, and the
layer's tensors are let go. Nothing of size T × T lives longer than a tile.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from reportgen.data.blocks import block_edges, is_long
from reportgen.engine.attention import FUSED_FLAG, Capture, Captured, eager_of, fused_weights
from reportgen.engine.encoding import Encoded
from reportgen.engine.loading import LoadedModel
from reportgen.engine.norms import value_norms
from reportgen.engine.objectives import Layout, Pass, forward, layout_of
from reportgen.engine.rollout import rollout

MODES = ("signed", "magnitude", "gain")
"""What a tile of A ⊙ ∂L/∂A is reduced as: itself, its magnitude, or (−S)⁺ = (A ⊙ ∂log p/∂A)⁺,
the positive part of the gradient of the log-probability (grad-rollout's per-head scores)."""

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
    edges: tuple[int, ...] | None = None
    """A long example's token block edges (`data.blocks.block_edges`), moved into this
    sequence's own positions and clipped to it (a block outside it is empty); None: no block
    sums."""


class Reductions:
    """Exact per-head reductions of S for a batch of sequences, over every layer, plus each
    head's top-k cells by magnitude (and optionally S itself, dense).

    Shapes per batch row b: total and prediction [L, H]; flow [L, H, n+1, n+1], queries'
    segment by keys' segment (index n: tokens in no named segment); top values and cells
    [L, H, k] (cell = i * length + j, in the row's own coordinates, strongest first after
    `finish`). Sums are of |S|; top values keep S's sign.

    With `mix`, each layer's mean over heads of S is kept too, [L, T, T] per row, and `finish`
    turns it into the rollout relevance [L, T] (`relevance`). With `pairs`, Wang et al.'s
    layer aggregation (`add_pairs`) is summed by (query group, key group) over the token pairs
    the attention allows, off the diagonal, with the pairs counted: groups are the segments,
    then tokens in none, then (last) the prediction position on its own."""

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
        mix: bool = False,
        pairs: bool = False,
    ) -> None:
        self.plans = list(plans)
        self.heads = heads
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
        self.runs = [_segment_runs(plan.segments) for plan in self.plans]
        self.full = all(p.length == width for p in self.plans)
        self.lengths = torch.tensor([p.length for p in self.plans], device=device)
        self.dense = (
            torch.zeros(rows, layers, heads, width, width, dtype=dtype, device=device)
            if dense
            else None
        )
        self.mixed = (
            torch.zeros(rows, layers, width, width, dtype=dtype, device=device) if mix else None
        )
        self._started: set[int] = set()
        """Layers that have had a tile (their top cells hold something to merge with)."""
        self.relevance: torch.Tensor | None = None
        """float64 [rows, L, T] after `finish` with a rollout (zeros without a prediction)."""
        self.blocks: list[torch.Tensor | None] = [
            None
            if p.edges is None
            else torch.zeros(layers, heads, len(p.edges) - 1, len(p.edges) - 1, dtype=wide)
            for p in self.plans
        ]
        """Per row, |S| summed over (query block, key block), float64 [L, H, n, n] on the CPU
        (rows of long examples only, see `SequencePlan.edges`)."""
        self.pieces = [
            None if p.edges is None else _pieces(p, runs, groups, dtype, device)
            for p, runs in zip(self.plans, self.runs, strict=True)
        ]
        """Per long row, the query pieces its tiles' rows are summed over (`_pieces`)."""
        self.all_long = all(pieces is not None for pieces in self.pieces)
        self.pair_onehot: torch.Tensor | None = None
        self.pair_sums: torch.Tensor | None = None
        self.pair_counts: torch.Tensor | None = None
        if pairs:
            own = torch.zeros(rows, width, groups + 1, dtype=dtype, device=device)
            own[..., :groups] = onehot
            for b, plan in enumerate(self.plans):
                if plan.prediction is not None:
                    own[b, plan.prediction] = 0
                    own[b, plan.prediction, groups] = 1
            self.pair_onehot = own
            shape = (rows, layers, groups + 1, groups + 1)
            self.pair_sums = torch.zeros(shape, dtype=wide, device=device)
            self.pair_counts = torch.zeros(shape, dtype=wide, device=device)

    def add(self, layer: int, start: int, tile: torch.Tensor, nonnegative: bool = False) -> None:
        """Reduce S for query rows [start, start + r) of `layer`: tile [B, H, r, T] (T at least
        every row's length; cells outside a row's length are ignored). `nonnegative`: the tile
        holds magnitudes already (it may then be changed in place)."""
        self._add(layer, 1, start, tile, nonnegative)

    def add_layers(self, first: int, tiles: torch.Tensor, nonnegative: bool = False) -> None:
        """Reduce S of whole layers first, first + 1, ...: tiles [B, n, H, T, T] (every query
        row), as `add` would layer by layer, in one pass of a few large operations (a layer's
        reductions are a few dozen small ones: for a short input, their count is the cost)."""
        batch, n, heads = tiles.shape[:3]
        self._add(first, n, 0, tiles.reshape(batch, n * heads, *tiles.shape[3:]), nonnegative)

    def _add(self, first: int, n: int, start: int, tile: torch.Tensor, nonnegative: bool) -> None:
        """`add` for layers [first, first + n): tile [B, n·H, r, T], layer-major."""
        rows = tile.shape[2]
        width = self.width
        layers = slice(first, first + n)
        tile = tile[..., :width].to(device=self.device, dtype=self.dtype)
        batch, units = tile.shape[:2]
        if not self.full:  # pad rows and columns of shorter sequences count for nothing
            keep = self.valid[:, start : start + rows, None] & self.valid[:, None, :width]
            tile = tile * keep[:, None]
        per_layer = tile.view(batch, n, self.heads, rows, width)
        if self.dense is not None:
            self.dense[:, layers, :, start : start + rows, :width] = per_layer
        if self.mixed is not None:
            self.mixed[:, layers, start : start + rows, :width] += per_layer.sum(2) / self.heads
        mag = tile if nonnegative else tile.abs()
        if self.all_long:
            self._add_long(first, n, start, mag)
        else:
            self._add_sums(first, n, start, mag)
        # Top-k by magnitude: this tile's best, merged with the best so far (kept in cell
        # order, so that ties go to the lower cell; see `top_positions`).
        flat = mag.reshape(batch, units, -1)
        k = min(self.k, flat.shape[-1])
        where = top_positions(flat, k, zeros_matter=False)  # cells of |S| = 0 are dropped
        best = torch.gather(flat, -1, where)
        if start == 0 and self.full:  # the tile's cell numbers are the rows' own
            cells = where
        else:
            cells = (where // width + start) * self.lengths[:, None, None] + where % width
        values = best if nonnegative else torch.gather(tile.reshape(flat.shape), -1, where)
        values = torch.where(best > 0, values, torch.zeros_like(values))
        cells = torch.where(best > 0, cells, torch.full_like(cells, -1))
        shape = (batch, n, self.heads, k)
        values, cells = values.view(shape), cells.view(shape)
        fresh = [layer for layer in range(first, first + n) if layer not in self._started]
        self._started.update(fresh)
        if len(fresh) == n and k == self.k:  # the layers' first tiles: nothing to merge with
            self.top_values[:, layers], self.top_cells[:, layers] = values, cells
            return
        all_values = torch.cat([self.top_values[:, layers], values], -1)
        all_cells = torch.cat([self.top_cells[:, layers], cells], -1)
        keep_k = top_positions(all_values.abs(), self.k)
        self.top_values[:, layers] = torch.gather(all_values, -1, keep_k)
        self.top_cells[:, layers] = torch.gather(all_cells, -1, keep_k)

    def _add_sums(self, first: int, n: int, start: int, mag: torch.Tensor) -> None:
        """Total, prediction, flow and block sums of |S| [B, n·H, r, T] for layers [first,
        first + n), query rows [start, start + r): each query row's sums by key group first."""
        batch, _, rows, width = mag.shape
        layers = slice(first, first + n)
        by_key = self._by_group(mag)  # [B, n·H, r, groups]
        flow = torch.matmul(self.onehot[:, None, start : start + rows].transpose(-1, -2), by_key)
        self.flow[:, layers] += flow.view(batch, n, self.heads, *flow.shape[2:]).to(self.flow.dtype)
        row_sums = by_key.sum(-1).to(self.total.dtype)  # [B, n·H, r]
        self.total[:, layers] += row_sums.sum(-1).view(batch, n, self.heads)
        mag_layers = mag.view(batch, n, self.heads, rows, width)
        for offset in range(n):
            self._add_blocks(first + offset, start, mag_layers[:, offset])
        for b, plan in enumerate(self.plans):
            p = plan.prediction
            if p is not None and start <= p < start + rows:
                self.prediction[b, layers] += row_sums[b, :, p - start].view(n, self.heads)

    def _add_long(self, first: int, n: int, start: int, mag: torch.Tensor) -> None:
        """`_add_sums` where every row is long: each row's query rows summed over its pieces
        first (whole rows at a time, the fast direction), and everything read from those far
        fewer rows: block sums, flow and total (each piece lies in one block and one group),
        besides the prediction row's own sum. One pass over the tile, where summing each row
        by key group and each block apart takes two (and reads along the slow direction)."""
        units, rows = mag.shape[1], mag.shape[2]
        layers = slice(first, first + n)
        for b, plan in enumerate(self.plans):
            pieces, sums = self.pieces[b], self.blocks[b]
            assert pieces is not None and sums is not None and plan.edges is not None
            length = plan.length
            stop = min(start + rows, length)
            if start >= stop:
                continue
            cuts, block_of, keys = pieces
            inside = [start, *(int(c) for c in cuts if start < c < stop), stop]
            tile = mag[b, :, :, :length]  # [n·H, r, length]
            by_query = _row_sums(
                tile, [(a - start, e - start) for a, e in itertools.pairwise(inside)]
            )
            # Each piece's keys summed by block and by group at once: [n·H, pieces, blocks + G].
            by_key = torch.matmul(by_query, keys).to(self.flow.dtype)
            first_rows = torch.tensor(inside[:-1])
            blocks = sums.shape[-1]
            n_groups = self.flow.shape[-1]
            flow = by_key.new_zeros(units, n_groups, n_groups)
            flow.index_add_(1, plan.segments[first_rows].to(self.device), by_key[..., blocks:])
            self.flow[b, layers] += flow.view(n, self.heads, *flow.shape[1:])
            self.total[b, layers] += flow.sum((-1, -2)).view(n, self.heads)
            p = plan.prediction
            if p is not None and start <= p < stop:
                row = tile[:, p - start].sum(-1).to(self.prediction.dtype)
                self.prediction[b, layers] += row.view(n, self.heads)
            part = torch.zeros(units, blocks, blocks, dtype=sums.dtype)
            part.index_add_(1, block_of[first_rows], by_key[..., :blocks].to(sums.dtype).cpu())
            sums[layers] += part.view(n, self.heads, blocks, blocks)

    def _by_group(self, mag: torch.Tensor) -> torch.Tensor:
        """Each row of |S| [B, n·H, r, T] summed over the keys of each group, [..., groups]:
        on the CPU a slice sum for each run of keys in one group (a product with the one-hot
        groups, N = groups columns, ran at a tenth of the matrix unit's speed there)."""
        if not by_numpy(mag):
            batch, units, rows, width = mag.shape
            return torch.bmm(mag.reshape(batch, units * rows, width), self.onehot).view(
                batch, units, rows, -1
            )
        out = torch.zeros(*mag.shape[:3], self.onehot.shape[-1], dtype=mag.dtype)
        for b, runs in enumerate(self.runs):
            for start, stop, group in runs:
                out[b, :, :, group] += mag[b, :, :, start:stop].sum(-1)
        return out

    def _add_blocks(self, layer: int, start: int, mag: torch.Tensor) -> None:
        """Block sums of |S| for query rows [start, start + r): the rows of each query block in
        the tile summed first (whole rows at a time), then each key block's columns of the far
        fewer rows left (a slice each: one sum per block, as numpy's reduceat is slower)."""
        rows = mag.shape[2]
        for b, plan in enumerate(self.plans):
            sums = self.blocks[b]
            if sums is None or plan.edges is None:
                continue
            edges = [int(e) for e in plan.edges]
            local = [min(max(e - start, 0), rows) for e in edges]
            inside = [q for q in range(len(edges) - 1) if local[q] < local[q + 1]]
            if not inside:
                continue
            tile = mag[b, :, :, : edges[-1]]  # [H, r, T] of this input
            by_query = torch.stack(
                [tile[:, local[q] : local[q + 1]].sum(1) for q in inside], 1
            )  # [H, q, T]
            part = torch.stack(
                [by_query[..., a:e].sum(-1) for a, e in itertools.pairwise(edges)], -1
            )  # [H, q, n] (an empty block sums to 0)
            sums[layer, :, inside] += part.to(sums.dtype).cpu()

    def add_pairs(
        self, layer: int, start: int, tile: torch.Tensor, mask: torch.Tensor | None
    ) -> None:
        """Wang et al. 2023's I_l = |Σ_h A_h ⊙ ∂L/∂A_h| for query rows [start, start + r) of
        `layer` (tile: signed S [B, H, r, T]), summed by (query group, key group) over the
        pairs the layer's additive `mask` rows [B, 1, r, T] allow (all, without one), the
        diagonal i = j excluded; the pairs are counted alike."""
        assert self.pair_onehot is not None and self.pair_sums is not None
        assert self.pair_counts is not None
        rows, width = tile.shape[2], self.width
        summed = tile[..., :width].sum(1).abs()  # [B, r, T]
        allowed = self.valid[:, start : start + rows, None] & self.valid[:, None, :width]
        query = torch.arange(start, start + rows, device=self.device)
        allowed = allowed & (query[:, None] != torch.arange(width, device=self.device))
        if mask is not None:
            m = mask[:, 0, :, :width].to(self.device)
            if m.dtype != torch.bool:  # masked: the dtype's lowest value (float32's at most,
                low = max(torch.finfo(m.dtype).min, torch.finfo(torch.float32).min)  # see
                m = m > low / 2  # attention.reportgen_mask); a bias (ALiBi) is far above it
            allowed = allowed & m
        weight = allowed.to(summed.dtype)
        onehot = self.pair_onehot
        rows_onehot = onehot[:, start : start + rows].transpose(-1, -2)  # [B, G, r]
        sums = torch.matmul(rows_onehot, torch.matmul(summed * weight, onehot))
        counts = torch.matmul(rows_onehot, torch.matmul(weight, onehot))
        self.pair_sums[:, layer] += sums.to(self.pair_sums.dtype)
        self.pair_counts[:, layer] += counts.to(self.pair_counts.dtype)

    def finish(self, kind: str | None = None) -> None:
        """Order each head's top cells strongest first, ties by cell (deterministic); empty
        slots (cell -1, value 0) last. With `kind` (a rollout), the kept head means become
        each row's relevance R_l[p, :] and are let go."""
        # Each head's cells are kept in cell order (empty slots anywhere), so a stable sort by
        # magnitude alone orders ties by cell.
        order = strongest_first(self.top_values)
        self.top_values = torch.gather(self.top_values, -1, order)
        self.top_cells = torch.gather(self.top_cells, -1, order)
        if kind is not None and self.mixed is not None:
            rows, layers, width = self.mixed.shape[:3]
            relevance = torch.zeros(rows, layers, width, dtype=torch.float64, device=self.device)
            for b, plan in enumerate(self.plans):
                if plan.prediction is not None:
                    n = plan.length
                    relevance[b, :, :n] = rollout(self.mixed[b, :, :n, :n], plan.prediction, kind)
            self.relevance = relevance
            self.mixed = None


PREFILTER = 8
"""`top_positions` takes its candidates from blocks' maxima when it picks at most 1/PREFILTER of
the cells (below that, one top-k over every cell is as fast)."""


def top_positions(x: torch.Tensor, k: int, zeros_matter: bool = True) -> torch.Tensor:
    """Positions of the k largest entries of each row of `x` [..., n] (≥ 0: magnitudes and
    weights), ties to the lower position, in ascending order of position: deterministic,
    whatever order a selection returns ties in. A NaN is kept for the caller's check. Without
    `zeros_matter` (the caller drops entries of value 0), a row with fewer than k positive
    entries gets all of them and zeros besides.

    On the CPU, where it picks at most 1/PREFILTER of the cells, a bound on each row's k-th
    largest entry leaves a few more than k candidates and only they are searched
    (`_prefiltered`: numpy's selection costs ~12 ns a value there, a comparison ~0.1 ns).
    Elsewhere one torch.topk over every cell."""
    n = x.shape[-1]
    if k >= n:
        return torch.arange(n, device=x.device).expand(*x.shape[:-1], n)
    if not by_numpy(x) or k * PREFILTER > n or x.dtype not in (torch.float32, torch.float64):
        return _exact_top(x, k)
    return _prefiltered(x, k)


def _prefiltered(x: torch.Tensor, k: int) -> torch.Tensor:
    """`top_positions` of a CPU tensor from a bound on each row's k-th largest entry.

    The last axis is cut into strided blocks (position p in block p % blocks) and each block's
    maximum taken: k of them are k distinct cells, so the k-th largest maximum is at most the
    row's k-th largest entry. A histogram of the maxima by their bit patterns, in steps of
    2^(1/8) below the row's largest (`_lower_bound`), gives a value v just below it with at
    least k maxima ≥ v. Every entry ≥ v is a candidate (the k largest and every tie with the
    k-th are among them), in position order, and the exact search runs on those alone. A row
    without such a v (its k-th largest maximum 2^32 times below its largest, or below
    float32's smallest normal value as where S is 0 almost everywhere, or a NaN or infinity)
    goes to `_sparse_top`."""
    n = x.shape[-1]
    flat = x.detach().reshape(-1, n)
    a = flat.numpy()
    rows = a.shape[0]
    size = max(2, int((n / k) ** 0.5))
    blocks = n // size
    maxima = flat[:, : blocks * size].view(rows, size, blocks).amax(1).numpy()
    bound, sure = _lower_bound(maxima, k)
    index = np.flatnonzero(a >= np.where(sure, bound, np.inf).astype(a.dtype)[:, None])
    found = np.empty((rows, k), dtype=np.int64)
    picked = slice(None) if sure.all() else np.flatnonzero(sure)
    found[picked] = _among(a, index, k)[picked]
    if not sure.all():
        found[~sure] = _sparse_top(a[~sure], k)
    return torch.from_numpy(found).view(*x.shape[:-1], k)


def _among(a: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k positions [R, k] of each row of `a` [R, n] among its candidates (`index`:
    ascending flat positions, every row's k largest entries and their ties among them, all
    positive; a row with fewer than k candidates gets no meaningful answer: callers drop it)."""
    rows, n = a.shape
    row, column = np.divmod(index, n)
    counts = np.bincount(row, minlength=rows)
    width = max(k, int(counts.max()) if counts.size else 0)
    slot = row * width + np.arange(row.size) - np.repeat(np.cumsum(counts) - counts, counts)
    if a.dtype == np.float32 and n < 2**32:
        # One sort of int64 keys (`strongest_first`'s): value descending, ties by position,
        # pads last; 40% faster than a selection and a tie pass over the padded values.
        keys = np.full(rows * width, np.iinfo(np.int64).max, dtype=np.int64)
        keys[slot] = _strongest_first_keys(a.ravel()[index], column)
        keys = keys.reshape(rows, width)
        keys.sort(axis=-1)
        best = keys[:, :k] & 0xFFFFFFFF
        best.sort(axis=-1)
        return best
    candidates = np.full(rows * width, -np.inf, dtype=a.dtype)  # pads below every entry
    candidates[slot] = a.ravel()[index]
    positions = np.zeros(rows * width, dtype=np.int64)
    positions[slot] = column
    candidates, positions = candidates.reshape(rows, width), positions.reshape(rows, width)
    best = _exact_top(torch.from_numpy(candidates), k).numpy()
    return np.take_along_axis(positions, best, -1)


BUCKET_SHIFT = 20
"""`_lower_bound`'s histogram steps: float32 bit patterns >> 20, 8 steps an octave."""
BUCKETS = 256
"""Steps below a row's largest maximum (32 octaves); the last holds everything lower."""


def _lower_bound(maxima: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `maxima` [R, m] (m > k): a value v with at least k entries ≥ v, at most one
    step below the k-th largest entry, in the entries' dtype; and whether the row has one (see
    `_prefiltered`)."""
    rows = maxima.shape[0]
    # Bit patterns ordered as the values are (a negative entry counts as 0, far below v).
    bits = np.maximum(maxima.astype(np.float32, copy=False).view(np.int32), 0)
    top = bits.max(1)
    steps = np.subtract(top[:, None], bits)
    steps >>= BUCKET_SHIFT
    np.minimum(steps, BUCKETS - 1, out=steps)
    steps += (np.arange(rows, dtype=np.int32) * BUCKETS)[:, None]
    # torch's bincount: a third faster than numpy's, which copies int32 to int64 first.
    counts = torch.bincount(torch.from_numpy(steps.ravel()), minlength=rows * BUCKETS).numpy()
    counts = counts.reshape(rows, BUCKETS)
    step = (np.cumsum(counts, 1) >= k).argmax(1)  # the first step from the top reaching k
    edge = top - ((step + 1) << BUCKET_SHIFT) + 1  # every entry within `step` steps is ≥ it
    normal = np.finfo(np.float32).smallest_normal.view(np.int32)
    finite = np.isfinite(maxima.max(1))  # NaN of either sign, or infinity: searched in full
    sure = (step < BUCKETS - 1) & (edge >= normal) & finite
    bound = np.where(sure, edge, normal).astype(np.int32).view(np.float32)
    if maxima.dtype == np.float64:  # an entry whose float32 rounding is ≥ v is ≥ v (1 - 2^-23)
        return bound.astype(np.float64) * (1 - 2.0**-23), sure
    return bound, sure


def _sparse_top(a: np.ndarray, k: int) -> np.ndarray:
    """`top_positions` of rows [R, n] (≥ 0) that `_lower_bound` left out. A row with fewer than
    k positive entries (a head whose S is 0 almost everywhere) is its positive entries and its
    lowest-placed zeros, found without a search; one with at most n / PREFILTER is searched
    among its positive entries (a search over so many zeros costs numpy's selection ~100× its
    time); any other, or one holding NaN, by the exact search."""
    rows, n = a.shape
    index = np.flatnonzero(a > 0)  # NaN compares false
    row, column = np.divmod(index, n)
    counts = np.bincount(row, minlength=rows)
    nan = np.isnan(a).any(1)
    few = (counts < k) & ~nan
    some = (counts >= k) & (counts * PREFILTER <= n) & ~nan
    found = np.empty((rows, k), dtype=np.int64)
    if few.any():
        chosen = np.zeros((rows, n), dtype=bool)
        chosen[row, column] = True
        chosen = chosen[few]
        # The lowest-placed zeros needed are among the first k positions.
        zeros = ~chosen[:, :k]
        need = (k - counts[few])[:, None]
        chosen[:, :k] |= zeros & (np.cumsum(zeros, 1, dtype=np.int32) <= need)
        found[few] = (np.flatnonzero(chosen) % n).reshape(-1, k)
    if some.any():
        positive = a[some]
        found[some] = _among(positive, np.flatnonzero(positive > 0), k)
    rest = ~(few | some)
    if rest.any():
        found[rest] = _exact_top(torch.from_numpy(a[rest]), k).numpy()
    return found


def largest(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th and the (k+1)-th largest entries of each row of `x` [..., n] (k < n; a row
    holding NaN may answer NaN, which `_exact_top` leaves to its caller). On the CPU by one
    numpy introselect, 4-6× faster than torch.topk there (a k-th value needs no top-k);
    elsewhere by torch.topk."""
    n = x.shape[-1]
    if not by_numpy(x):
        top = torch.topk(x, k + 1, dim=-1, sorted=True).values
        return top[..., k - 1], top[..., k]
    exact = x.detach() if x.dtype in (torch.float32, torch.float64) else x.detach().float()
    split = np.partition(exact.numpy(), n - k - 1, axis=-1)  # the k largest after n - k - 1
    kth, after = split[..., n - k :].min(-1), split[..., n - k - 1]
    return torch.as_tensor(np.array(kth)).to(x.dtype), torch.as_tensor(np.array(after)).to(x.dtype)


def strongest_first(values: torch.Tensor) -> torch.Tensor:
    """Indices ordering the last axis of `values` by magnitude, largest first, ties by position
    (a stable sort). On the CPU, in float32, one numpy sort of int64 keys: the magnitude's bits
    (ordered as the magnitudes are) above the position, every key distinct, 10× a stable
    argsort there; elsewhere torch's stable argsort."""
    n = values.shape[-1]
    if not by_numpy(values) or values.dtype != torch.float32 or n >= 2**32:
        return torch.argsort(-values.abs(), dim=-1, stable=True)
    keys = _strongest_first_keys(values.detach().abs().numpy(), np.arange(n, dtype=np.int64))
    keys.sort(axis=-1)
    return torch.from_numpy(keys & 0xFFFFFFFF)


def _strongest_first_keys(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is `values` (float32, ≥ 0) descending, ties by
    `positions` (< 2^32, kept in the low 32 bits): the value's bits, ordered as the values are,
    above the position."""
    bits = values.view(np.int32).astype(np.int64)
    return ((0x7FFFFFFF - bits) << 32) | positions


def by_numpy(x: torch.Tensor) -> bool:
    """Whether `largest` and `_columns` take numpy's route (CPU tensors; the tests also take
    torch's route on the CPU, which CUDA tensors take)."""
    return x.device.type == "cpu"


def _exact_top(x: torch.Tensor, k: int, kth: torch.Tensor | None = None) -> torch.Tensor:
    """`top_positions` from the k-th largest entry of each row (`kth`, found if not given):
    every entry above it and the lowest-placed of those equal to it."""
    kth = (largest(x, k)[0] if kth is None else kth).unsqueeze(-1)
    chosen = x >= kth  # every row holds at least k (NaN aside); exactly k but for ties
    positions = _columns(chosen)
    if positions.numel() == chosen.shape[:-1].numel() * k:
        return positions.reshape(*x.shape[:-1], k)
    counts = chosen.sum(-1)
    if bool((counts < k).any()):  # NaN: kept, for the caller's check
        return torch.topk(x, k, dim=-1, sorted=False).indices.sort(-1).values
    rows = (counts > k).reshape(-1).nonzero().squeeze(1)  # ties: the lowest-placed kept
    flat, limits = x.reshape(-1, x.shape[-1])[rows], kth.reshape(-1, 1)[rows]
    tied = flat == limits
    need = k - (flat > limits).sum(-1, keepdim=True)
    chosen = chosen.reshape(-1, x.shape[-1]).clone()
    chosen[rows] = (flat > limits) | (tied & (tied.cumsum(-1) <= need))
    return _columns(chosen).reshape(*x.shape[:-1], k)


def _columns(mask: torch.Tensor) -> torch.Tensor:
    """The last-axis positions of `mask`'s true entries, row after row (numpy's flatnonzero
    on the CPU: 6× torch's nonzero there)."""
    if not by_numpy(mask):
        return mask.nonzero()[:, -1]
    flat = np.flatnonzero(mask.numpy())
    return torch.from_numpy(flat % mask.shape[-1])


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
        found = fused_weights(query, captured.key, mask, **captured.kwargs)
        if found is not None:
            return found
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
    mode: str = "signed",
    budget: int = TILE_BYTES,
    key_scale: torch.Tensor | None = None,
    pairs: bool = False,
) -> None:
    """S = A ⊙ ∂L/∂A for every tile of query rows of `layer`, reduced into `reductions` as
    `mode` says (see MODES; with `pairs` also by Wang et al.'s aggregation), or without a
    gradient A itself, each key's column scaled by `key_scale` [B, H, T] if given."""
    query = captured.query
    batch, heads, width, _ = query.shape
    step = tile_rows(batch, heads, width, query.element_size(), budget)
    first, stop = (0, width) if grad_out is None or pairs else live_rows(grad_out)
    with torch.no_grad():
        for start in range(first, stop, step):
            end = min(stop, start + step)
            a = attention_rows(captured, start, end)
            if grad_out is None:
                if key_scale is not None:
                    a = a * _columns_scale(key_scale, a)
                reductions.add(layer, start, a, nonnegative=True)  # weights (norms) are >= 0
                continue
            s = grad_rows(captured, grad_out, start, end).to(reductions.dtype)
            s.mul_(a)  # a fresh tensor of ours: the product in place
            if pairs:
                mask = None if captured.mask is None else captured.mask[:, :, start:end]
                reductions.add_pairs(layer, start, s, mask)
            if mode == "signed":
                reductions.add(layer, start, s)
            else:
                reductions.add(layer, start, scored(s, mode), nonnegative=True)


def live_rows(grad_out: torch.Tensor) -> tuple[int, int]:
    """The query rows [first, stop) outside which ∂L/∂O [B, T, H, d] is 0 in every batch row.
    Their rows of S are exactly 0, which every reduction drops (sums add nothing, top cells
    keep only |S| > 0, dense scores start at 0): the tiles skip them. Which rows they are
    depends on the model: a masked LM's last layer has gradient only at the loss positions,
    and a causal LM none past its last loss position, nor on right padding."""
    live = grad_out.ne(0).flatten(2).any(-1).any(0).nonzero()  # NaN counts as live
    if live.numel() == 0:
        return 0, 0
    return int(live[0, 0]), int(live[-1, 0]) + 1


def scored(s: torch.Tensor, mode: str) -> torch.Tensor:
    """A tile of A ⊙ ∂L/∂A (a fresh tensor of ours, changed in place) as `mode` reduces it."""
    if mode == "magnitude":
        return s.abs_()
    if mode == "gain":
        return s.neg_().clamp_(min=0)
    if mode == "signed":
        return s
    raise ValueError(f"unknown mode {mode!r}")


# --- the methods, tiled -----------------------------------------------------------------------


def _segment_runs(segments: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, stop, segment) of each run of equal segment indices, in order."""
    values = segments.tolist()
    edges = [0, *(i for i in range(1, len(values)) if values[i] != values[i - 1]), len(values)]
    return [(a, e, values[a]) for a, e in itertools.pairwise(edges) if a < e]


def _pieces(
    plan: SequencePlan,
    runs: Sequence[tuple[int, int, int]],
    groups: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """A long row's query pieces: the cuts between them, every block edge and segment boundary
    in (0, length), so that each piece lies in one block and one group; each position's block,
    int64 [length]; and each key's block and group, one-hot [length, blocks + groups]. `runs`:
    the plan's segment runs (`_segment_runs`)."""
    assert plan.edges is not None
    cuts = sorted(c for c in {*plan.edges, *(a for a, _, _ in runs)} if 0 < c < plan.length)
    blocks = len(plan.edges) - 1
    block_of = torch.zeros(plan.length, dtype=torch.long)
    for q, (a, e) in enumerate(itertools.pairwise(plan.edges)):
        block_of[a:e] = q
    keys = torch.zeros(plan.length, blocks + groups, dtype=dtype)
    position = torch.arange(plan.length)
    keys[position, block_of] = 1
    keys[position, blocks + plan.segments] = 1
    return cuts, block_of, keys.to(device)


def _row_sums(tile: torch.Tensor, pieces: Sequence[tuple[int, int]]) -> torch.Tensor:
    """tile [U, r, T] summed over each piece [a, e) of its rows, [U, pieces, T] (on the CPU by
    numpy, a fifth faster than torch's sum over a middle axis there)."""
    if not by_numpy(tile):
        return torch.stack([tile[:, a:e].sum(1) for a, e in pieces], 1)
    a = tile.detach().numpy()
    return torch.from_numpy(np.stack([a[:, s:e].sum(1) for s, e in pieces], 1))


def plans(examples: Sequence[Encoded], layout: Layout, n_segments: int) -> list[SequencePlan]:
    """One plan per batch row: its length, each token's segment (by the example's own span
    order; `n_segments` for none) and its prediction position."""
    rows: dict[int, SequencePlan] = {}
    for example, placed in zip(examples, layout, strict=True):
        n = len(example.ids)
        edges = block_edges(n, example.spans).tolist() if is_long(n) else None
        for k, start, end in placed:
            segments = torch.full((end - start,), n_segments, dtype=torch.long)
            for index, span in enumerate(example.spans):
                a, b = max(span.start, start), min(span.end, end)
                if a < b:
                    segments[a - start : b - start] = index
            p = example.prediction_position
            rows[k] = SequencePlan(
                end - start,
                segments,
                p - start if p is not None and start <= p < end else None,
                None
                if edges is None
                else tuple(min(max(e - start, 0), end - start) for e in edges),
            )
    return [rows[k] for k in sorted(rows)]


def new_reductions(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    layout: Layout,
    top_k: int,
    dense: bool,
    mix: bool = False,
    pairs: bool = False,
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
        mix=mix,
        pairs=pairs,
    )


def keeps_weights(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    budget: int,
    layers: int | None = None,
    times: int = 2,
) -> bool:
    """Whether `layers` layers' (every layer's by default) attention weights for the batch fit
    in `times` the tile budget: then the forward keeps them instead of recomputing them."""
    width = max(end - start for row in rows for start, end in row.sequences)
    sequences = sum(len(row.sequences) for row in rows)
    element = torch.empty((), dtype=lm.dtype).element_size()
    count = lm.num_layers if layers is None else layers
    return sequences * count * lm.num_heads * width * width * element <= times * budget


KEEP_FOR_BACKWARD = 4
"""A pass with a backward keeps every layer's weights within this many tile budgets (256 MiB by
default: 12 × 12 heads at T 512, batch 1): its backward reads them, where the fast kernel's
backward and the tiles compute them twice more (the demo shape at batch 1, T 512: 339 against
456 ms; BERT-base: 2.43 against 2.48 s)."""


def _reduced_pass(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    budget: int,
    reductions: Reductions,
    key_scale: Callable[[Captured], torch.Tensor] | None = None,
) -> Pass:
    """One forward without gradients, each layer's A (each key's column scaled by
    `key_scale(captured)` [B, H, T] if given) reduced into `reductions`. Where every layer's
    weights fit, the forward keeps them and they are reduced together after it (a short
    input's reductions cost their number of operations); else where one layer's fit, each as
    the forward makes it (no kernel without weights, nothing recomputed); else each layer's
    captured tensors after the forward, in tiles."""
    together = keeps_weights(lm, rows, budget)
    chunks = _Chunks(reductions, lm, descending=False)

    def reduce(layer: int, captured: Captured) -> None:
        scale = None if key_scale is None else key_scale(captured)
        weights = captured.weights
        if together and weights is not None:
            slot = chunks.slot(layer, weights)
            if scale is None:
                slot.copy_(weights)
            else:
                torch.mul(weights, _columns_scale(scale, weights), out=slot)
        else:
            reduce_layer(reductions, layer, captured, None, budget=budget, key_scale=scale)

    keep = together or keeps_weights(lm, rows, budget, layers=1)
    capture = Capture(keep_weights=keep, on_layer=reduce if keep else None)
    with torch.no_grad():
        base = forward(lm, rows, capture=capture)
        for layer in sorted(capture.layers):
            reduce(layer, capture.layers.pop(layer))
        chunks.flush()
    return base


CHUNK_BYTES = 16 * 2**20
"""Bytes of whole layers' S (or A) reduced together where the forward kept the weights: a
short input's reductions cost their number of operations, so several layers go at once, but
in a buffer below glibc's largest heap block (32 MiB), which malloc then reuses from chunk to
chunk and batch to batch; a larger one is mapped afresh and page-faulted in every time
(batch 8, T 128, 12 x 12 heads: 75 MB a pass)."""


class _Chunks:
    """Whole layers [B, H, T, T], given one at a time (each written into its `slot`), reduced
    a few consecutive layers at a time with `Reductions.add_layers` from one buffer."""

    def __init__(self, reductions: Reductions, lm: LoadedModel, descending: bool) -> None:
        self.reductions = reductions
        width = reductions.width
        element = torch.empty((), dtype=reductions.dtype).element_size()
        layer_bytes = len(reductions.plans) * lm.num_heads * width * width * element
        self.size = max(1, min(lm.num_layers, CHUNK_BYTES // max(1, layer_bytes)))
        self.descending = descending
        """Layers arrive from the top (a backward) or from the bottom (a forward)."""
        self.buffer: torch.Tensor | None = None
        self.layers: list[int] = []

    def slot(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        """Where `layer` goes, [B, H, T, T]: the chunk's next slot if the layer follows the
        chunk's last one, else the first slot of a new chunk."""
        step = -1 if self.descending else 1
        if self.layers and (len(self.layers) == self.size or layer != self.layers[-1] + step):
            self.flush()
        if self.buffer is None:
            b, h, q, t = like.shape
            self.buffer = like.new_empty((b, self.size, h, q, t), dtype=self.reductions.dtype)
        self.layers.append(layer)
        n = len(self.layers)  # a backward's layers fill the buffer from its end, in layer order
        return self.buffer[:, self.size - n if self.descending else n - 1]

    def flush(self) -> None:
        """Reduce the chunk's layers (their values are magnitudes, or weights: nonnegative)."""
        if not self.layers or self.buffer is None:
            return
        n = len(self.layers)
        part = self.buffer[:, self.size - n :] if self.descending else self.buffer[:, :n]
        self.reductions.add_layers(min(self.layers), part, nonnegative=True)
        self.layers = []


def _columns_scale(scale: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A key scale [B, H, T] as a factor of weights [B, H, r, T'] (each key's column)."""
    return scale[:, :, None, : weights.shape[-1]].to(weights.dtype)


def tiled_attn_grad(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    top_k: int,
    dense: bool,
    budget: int = TILE_BYTES,
    mode: str = "magnitude",
    pairs: bool = False,
) -> tuple[Pass, Reductions]:
    """|A ⊙ ∂L/∂A| from one forward and one backward; each layer reduced as its output gradient
    arrives, its captured tensors dropped right after. Short inputs keep their weights from the
    forward (`keeps_weights`); longer ones run the fast kernel and recompute them in tiles.
    `mode` "gain" gives grad-rollout's per-head (A ⊙ ∂log p/∂A)⁺ and its rollout; `pairs`
    adds Wang et al.'s aggregation (`Reductions.add_pairs`)."""
    keep = keeps_weights(lm, rows, budget, times=KEEP_FOR_BACKWARD)
    capture = Capture(hooks=True, keep_weights=keep)
    base = forward(lm, rows, capture=capture)
    gain = mode == "gain"
    reductions = new_reductions(lm, rows, base.layout, top_k, dense, mix=gain, pairs=pairs)

    chunks = _Chunks(reductions, lm, descending=True)
    """S of the layers whose weights the forward kept, a few layers at a time."""

    def on_grad(layer: int, grad: torch.Tensor) -> None:
        captured = capture.layers.pop(layer)
        if captured.weights is None:
            reduce_layer(reductions, layer, captured, grad, mode=mode, budget=budget, pairs=pairs)
            return
        with torch.no_grad():  # the model's own eager weights kept, and autograd's own ∂L/∂A
            s = chunks.slot(layer, grad)  # (never changed: the backward goes on)
            if grad.dtype == s.dtype:
                torch.mul(grad, captured.weights, out=s)
            else:
                s.copy_(grad * captured.weights)
            if pairs:
                reductions.add_pairs(layer, 0, s, captured.mask)
            scored(s, mode)

    def on_product(layer: int, product: torch.Tensor) -> None:
        captured = capture.layers.pop(layer)
        with torch.no_grad():  # S from reportgen's own attention backward (it goes on with it)
            if pairs:
                reductions.add_pairs(layer, 0, product, captured.mask)
            s = chunks.slot(layer, product)
            if mode == "magnitude" and product.dtype == s.dtype:
                torch.abs(product, out=s)
            else:
                scored(s.copy_(product), mode)

    capture.on_grad, capture.on_product = on_grad, on_product
    lowest = capture.layers[min(capture.layers)]
    assert lowest.target is not None
    torch.autograd.grad(base.losses.sum(), [lowest.target])
    capture.layers.clear()  # a layer the loss does not depend on has S = 0
    with torch.no_grad():
        chunks.flush()
    reductions.finish("grad-rollout" if gain else None)
    return base, reductions


def tiled_attention(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    top_k: int,
    dense: bool,
    budget: int = TILE_BYTES,
    rollout: bool = False,
) -> tuple[Pass, Reductions]:
    """The attention weights A themselves, from one forward and the tiles (with `rollout`,
    also Abnar & Zuidema's attention rollout)."""
    reductions = new_reductions(lm, rows, layout_of(rows), top_k, dense, mix=rollout)
    base = _reduced_pass(lm, rows, budget, reductions)
    reductions.finish("rollout" if rollout else None)
    return base, reductions


def tiled_attn_norm(
    lm: LoadedModel, rows: Sequence[Encoded], top_k: int, dense: bool, budget: int = TILE_BYTES
) -> tuple[Pass, Reductions]:
    """‖α_ij f_h(x_j)‖ (`reportgen.engine.norms`) from one forward without gradients: each
    layer's tiles of A with key j's column scaled by ‖v_j W_O^h‖."""
    reductions = new_reductions(lm, rows, layout_of(rows), top_k, dense)
    base = _reduced_pass(lm, rows, budget, reductions, key_scale=value_norms)
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
    one tile pass per layer forms S. Each layer's (input, step) rows run `rows_per_pass` at a
    time (inputs of equal lengths together), so a pass's backward stops at its layer."""
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
    budget_rows = rows_per_pass if lm.padding.batches else 1
    # A pass holds one layer's rows only, so its backward stops at that layer (a pass mixing
    # layers runs every row's backward down to its lowest layer: about 1.5 times the work).
    # Inputs of equal lengths share passes (no padding is added).
    same_length: dict[tuple[int, ...], list[int]] = {}
    for b, row in enumerate(fixed):
        same_length.setdefault(tuple(e - s for s, e in row.sequences), []).append(b)
    for members in same_length.values():
        jobs = [(b, k) for b in members for k in range(1, steps + 1)]
        for layer in range(layers):
            for first in range(0, len(jobs), budget_rows):
                chunk = jobs[first : first + budget_rows]
                gates = torch.ones(len(chunk), layers, heads, dtype=lm.dtype, device=lm.device)
                alphas = torch.tensor([k / steps for _, k in chunk], dtype=lm.dtype)
                gates[:, layer] = alphas[:, None].to(lm.device)
                capture = Capture(hooks=True)
                run = forward(lm, [fixed[b] for b, _ in chunk], gates=gates, capture=capture)

                def on_grad(
                    at: int,
                    grad: torch.Tensor,
                    layer: int = layer,
                    run: Pass = run,
                    chunk: list[tuple[int, int]] = chunk,
                ) -> None:
                    if at != layer:  # a layer above, on the way down
                        return
                    for r, (b, k) in enumerate(chunk):
                        pairs = zip(run.layout[r], base.layout[b], strict=True)
                        for (k_run, s, e), (k_base, _, _) in pairs:
                            part = grad[k_run, : e - s].to(reductions.dtype) / k
                            mean_grad[layer][k_base, : e - s] += part

                capture.on_grad = on_grad
                torch.autograd.grad(run.losses.sum(), [capture.layers[layer].out])
    for layer in sorted(base_capture.layers):
        captured = base_capture.layers.pop(layer)
        reduce_layer(
            reductions, layer, captured, mean_grad.pop(layer), mode="signed", budget=budget
        )
    reductions.finish()
    return base, reductions
