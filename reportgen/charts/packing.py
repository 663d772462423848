"""Data packing: records into the rows the charts draw. Pure numpy, no Altair.

Scores go into page data rounded to SIGNIFICANT digits (small, deterministic pages). The per-input
heatmap data is one packed row per head holding that head's top-k cells (`pack_cells`), so a
click touches k cells, not T².
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.data.results import HeadStats, Result, default_top_k

SIGNIFICANT = 4
"""Significant digits kept for the scores in page data (small, deterministic pages)."""
FLATTEN_BUDGET = 4096
"""Fewest cells a heatmap update flattens before it cuts the selected heads' rows short."""


def sig(x: float, digits: int = SIGNIFICANT) -> float:
    """`x` rounded to `digits` significant digits (as the JSON pages store it)."""
    return float(f"{float(x):.{digits}g}")


def metric_name(result: Result, metric: str | None) -> str:
    """The head-score metric to show: `metric` (checked against the input's segments), or
    `total`. Every metric comes from the result's exact reductions."""
    if metric is None:
        return "total"
    result.head_scores(metric)  # an error naming the input if it lacks the metric's segments
    return str(metric)


def top_head(grid: np.ndarray) -> tuple[int, int]:
    """The (layer, head) with the largest score, 0-based; the first one on ties."""
    layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(layer), int(head)


def top_heads(grid: np.ndarray, n: int) -> list[tuple[int, int, float]]:
    """The `n` strongest heads as (layer, head, score), 0-based, strongest first (stable)."""
    flat = np.asarray(grid, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")[:n]
    heads = grid.shape[1]
    return [(int(k // heads), int(k % heads), float(flat[k])) for k in order]


def heads_rows(grid: np.ndarray) -> list[dict[str, Any]]:
    """The grid as rows {layer, head, score}, 1-based layer and head."""
    layers, heads = grid.shape
    return [
        {"layer": layer + 1, "head": head + 1, "score": sig(grid[layer, head])}
        for layer in range(layers)
        for head in range(heads)
    ]


def sig_array(values: np.ndarray, digits: int = SIGNIFICANT, flat: bool = True) -> Any:
    """`sig` over an array, vectorised: each value is the double nearest its rounded decimal,
    so JSON writes it short (0.1235, not 0.12350000000000001). A flat list of floats, or nested
    lists (`flat=False`) shaped like `values`."""
    x = np.asarray(values, dtype=np.float64)
    nonzero = x != 0
    magnitude = np.floor(np.log10(np.abs(np.where(nonzero, x, 1.0))))
    power = np.clip(digits - 1 - magnitude, -300, 300)
    up = power >= 0
    with np.errstate(over="ignore", invalid="ignore"):
        factor = 10.0 ** np.abs(power)
        rounded = np.where(up, np.round(x * factor) / factor, np.round(x / factor) * factor)
    out = np.where(nonzero, rounded, 0.0)
    return out.ravel().tolist() if flat else out.tolist()


@dataclass(frozen=True)
class Packed:
    """Each head's top-k token cells, one row per head, and how much saliency they carry."""

    rows: list[dict[str, Any]]
    """{layer, head, tot, kept, c: [...], v: [...]}: 1-based layer and head; cells c = i·T + j
    (query i, key j, 0-based), strongest first; |score| values v and the head's total `tot`,
    scaled so the largest head total is 1; `kept` = sum(v). A signed method's rows add `s`,
    the values with their sign (same order and scale as v)."""
    tokens: int
    k: int
    cells: int
    """T × T, the cells each head has."""
    kept_share: float
    """Share of all heads' saliency carried by the kept cells."""
    min_kept_share: float
    """The smallest such share of a single head (heads without saliency excluded)."""


def pack_cells(
    stats: HeadStats, tokens: int, top_k: int | None = None, signed: bool = False
) -> Packed:
    """Each head's strongest cells (default k = `default_top_k(T)`, at most the k the run
    stored) as one row per head, with the head's exact total.

    Values `v` are magnitudes and rounded; zero cells are never kept. `signed` (a signed
    method, attattr): each row also carries the signed values `s`, in the same order.
    Cells are listed strongest first (ties by position), so the heatmap can cut a row short
    when many heads are selected, and the output is deterministic."""
    layers, heads = stats.total.shape
    n = tokens * tokens
    wanted = default_top_k(tokens) if top_k is None else top_k
    k = max(1, min(n, wanted, stats.k))
    totals = np.asarray(stats.total, np.float64).ravel()
    scale = 1.0 / totals.max() if totals.size and totals.max() > 0 else 1.0
    cell = np.asarray(stats.top_cells[:, :, :k]).reshape(layers * heads, k)
    raw = np.asarray(stats.top_values[:, :, :k], np.float64).reshape(layers * heads, k)
    raw = np.where(cell < 0, 0.0, raw)
    value = np.abs(raw)
    counts = (value > 0).sum(axis=1)  # empty and zero cells sort last and are dropped
    kept = value.sum(axis=1)
    shown = sig_array(value * scale, flat=False)
    tots, keeps = sig_array(totals * scale), sig_array(kept * scale)
    cell_lists = cell.tolist()
    rows = [
        {
            "layer": row // heads + 1,
            "head": row % heads + 1,
            "tot": tots[row],
            "kept": keeps[row],
            "c": cell_lists[row][: counts[row]],
            "v": shown[row][: counts[row]],
        }
        for row in range(layers * heads)
    ]
    if signed:
        with_sign = sig_array(raw * scale, flat=False)
        for row, packed_row in enumerate(rows):
            packed_row["s"] = with_sign[row][: counts[row]]
    kept_total = float(kept.sum())
    positive = totals > 0
    head_shares = kept[positive] / totals[positive]
    grand = float(totals.sum())
    return Packed(
        rows=rows,
        tokens=tokens,
        k=k,
        cells=n,
        kept_share=kept_total / grand if grand > 0 else 1.0,
        min_kept_share=float(head_shares.min()) if head_shares.size else 1.0,
    )


def one_head(result: Result, layer: int, head: int, k: int) -> HeadStats:
    """One head's stats (shape [1, 1, ...]) with its strongest k cells: from every cell when the
    run stored them (--store dense), else from the cells it kept."""
    stats = result.stats
    if result.dense is None:
        pick = (slice(layer, layer + 1), slice(head, head + 1))
        return HeadStats(
            stats.segments,
            stats.total[pick],
            stats.prediction[pick],
            stats.flow[pick],
            stats.top_cells[pick][..., :k],
            stats.top_values[pick][..., :k],
        )
    flat = np.asarray(result.dense[layer, head], np.float32).ravel()
    order = np.lexsort((np.arange(flat.size), -np.abs(flat)))[:k]
    zeros = np.zeros((1, 1))
    return HeadStats(
        stats.segments,
        stats.total[layer : layer + 1, head : head + 1],
        zeros,
        np.zeros((1, 1, 1, 1)),
        order.astype(np.int32)[None, None],
        flat[order][None, None],
    )


def flatten_budget(packed_k: int) -> int:
    """Cells flattened per update: all k cells of up to 4 heads (at least FLATTEN_BUDGET); a
    bigger selection keeps each head's strongest budget/n cells, so a brush over every head
    stays interactive. The page's caption says how much saliency the drawn cells carry."""
    return max(FLATTEN_BUDGET, 4 * packed_k)


def selection_share(
    result: Result, heads: Sequence[tuple[int, int]], top_k: int | None = None
) -> np.ndarray:
    """The heatmap the page shows for a set of 0-based heads, from the cells it keeps: each
    head's top-k |S| summed over the heads, divided by the heads' exact total (float64 [T, T],
    rows are queries). With all cells kept (k = T²) this is the full normalised sum."""
    tokens = len(result.tokens)
    packed = pack_cells(result.stats, tokens, top_k)
    out = np.zeros(tokens * tokens)
    total = 0.0
    stats = result.stats
    for layer, head in heads:
        cells = stats.top_cells[layer, head, : packed.k]
        values = np.abs(np.asarray(stats.top_values[layer, head, : packed.k], np.float64))
        keep = cells >= 0
        np.add.at(out, cells[keep], values[keep])
        total += float(stats.total[layer, head])
    return (out / total if total > 0 else out).reshape(tokens, tokens)


@dataclass(frozen=True)
class Overview:
    """A long input's page data for the zoomable heatmap (`pack_overview`), and the facts its
    page states. `data` goes to the page's JavaScript as is."""

    data: dict[str, Any]
    blocks: int
    """Blocks per axis."""
    k: int
    """Cells kept per head for the zoomed views."""
    kept_share: float
    """Share of all heads' saliency carried by the kept cells (what a zoom can draw at most)."""


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


_MARKERS = ("Ġ", "▁", "##", "Ċ")


def _clean(token: str) -> str:
    text = token
    for marker in _MARKERS:
        text = text.replace(marker, " ")
    return " ".join(text.split())


def representative_tokens(
    tokens: Sequence[str], edges: np.ndarray, per_block: int = 2
) -> list[str]:
    """Each block's label: its `per_block` rarest tokens in the input (words before marks,
    then the earlier), in reading order, joined by a space."""
    cleaned = [_clean(t) for t in tokens]
    counts: dict[str, int] = {}
    for text in cleaned:
        counts[text] = counts.get(text, 0) + 1
    labels = []
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        seen: dict[str, int] = {}
        for p in range(a, b):
            if cleaned[p] and cleaned[p] not in seen:
                seen[cleaned[p]] = p
        ranked = sorted(
            seen.items(),
            key=lambda item: (not any(c.isalnum() for c in item[0]), counts[item[0]], item[1]),
        )
        chosen = sorted(ranked[:per_block], key=lambda item: item[1])
        labels.append(" ".join(text for text, _ in chosen))
    return labels


def pack_overview(result: Result, top_k: int | None = None) -> Overview:
    """The overview and zoom data of a long input (one with block sums): per head its exact
    total and [n, n] block sums, and its top-k cells, compact in base64 (little-endian).

    - `tot`: each head's total |S|, scaled so the largest head's is 1 (as `pack_cells`);
    - `bmax` and `blocks`: per head its largest block sum (same scale) and its n × n block
      sums divided by it, float16 (relative rounding ≤ 2⁻¹¹, as fine as the pages' 4 digits);
    - `counts`, `cells` (int32 i·T + j) and `values` (float32 |S|, same scale): each head's
      kept cells, strongest first, heads in order (layer-major);
    - `text` (the tokens), `edges`, `labels` (representative tokens per block), `spans`
      [name, start, end]."""
    stats = result.stats
    if stats.blocks is None or stats.edges is None:
        raise ValueError(
            f"input '{result.example.id}' has no block sums: compute it again with this reportgen"
        )
    tokens = len(result.tokens)
    layers, heads = stats.total.shape
    wanted = default_top_k(tokens) if top_k is None else top_k
    k = max(1, min(tokens * tokens, wanted, stats.k))
    totals = np.asarray(stats.total, np.float64).ravel()
    scale = 1.0 / totals.max() if totals.size and totals.max() > 0 else 1.0
    n = len(stats.edges) - 1
    blocks = np.asarray(stats.blocks, np.float64).reshape(layers * heads, n * n) * scale
    bmax = blocks.max(axis=1)
    unit = np.divide(blocks, bmax[:, None], out=np.zeros_like(blocks), where=bmax[:, None] > 0)
    cell = np.asarray(stats.top_cells[:, :, :k]).reshape(layers * heads, k)
    value = np.abs(np.asarray(stats.top_values[:, :, :k], np.float64)).reshape(layers * heads, k)
    value[cell < 0] = 0
    keep = value > 0  # strongest first: the kept cells lead each row
    counts = keep.sum(axis=1)
    kept = value.sum(axis=1)
    grand = float(totals.sum())
    data = {
        "tokens": tokens,
        "text": list(result.tokens),
        "layers": layers,
        "heads": heads,
        "edges": [int(e) for e in stats.edges],
        "labels": representative_tokens(result.tokens, np.asarray(stats.edges)),
        "spans": [[s.name, s.start, s.end] for s in result.spans if s.name and s.end > s.start],
        "tot": sig_array(totals * scale),
        "bmax": sig_array(bmax, digits=8),
        "blocks": _b64(unit, "<f2"),
        "counts": counts.tolist(),
        "cells": _b64(cell[keep], "<i4"),
        "values": _b64(value[keep] * scale, "<f4"),
    }
    return Overview(
        data=data, blocks=n, k=k, kept_share=float(kept.sum()) / grand if grand > 0 else 1.0
    )
