"""Token blocks of long inputs: where the block edges fall, and S summed over blocks.

An input longer than LONG_TOKENS gets, per head, the exact sum of |S| over each (query block,
key block): the overview its page opens on, which carries all the saliency rather than a
top-k share. Blocks are about T / BLOCKS tokens per axis (at least TOKENS_PER_BLOCK), their
edges moved onto segment boundaries where one is near. Numpy only: the engine reduces its
tiles with the same edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reportgen.data.results import TokenSpan

LONG_TOKENS = 128
"""Inputs with more tokens than this get block sums, and their page opens on the overview."""
BLOCKS = 64
"""Blocks per axis before snapping (fewer where two nominal edges snap to one boundary)."""
TOKENS_PER_BLOCK = 20
"""Tokens per block at the least, before snapping: a moderate input gets fewer than BLOCKS, so
that its block sums stay a small part of its record (T = 512, 12 × 12 heads: 25 × 25 blocks,
360 KiB in float32, where 64 × 64 in float64 were 4.6 MiB, most of the record)."""


def block_count(tokens: int) -> int:
    """Nominal blocks per axis of an input of `tokens` tokens (see TOKENS_PER_BLOCK)."""
    return max(1, min(BLOCKS, tokens // TOKENS_PER_BLOCK))


def is_long(tokens: int) -> bool:
    """Whether an input of `tokens` tokens gets block sums (and the overview)."""
    return tokens > LONG_TOKENS


def block_edges(tokens: int, spans: Sequence[TokenSpan], blocks: int | None = None) -> np.ndarray:
    """int64 [n + 1] edges 0 = e0 < e1 < ... < en = T of n ≤ `blocks` token blocks (by default
    `block_count(tokens)`).

    The nominal edges round(k T / blocks) each move to the nearest segment boundary (a span's
    start or end inside (0, T)) no further than half a nominal block away (ties: the earlier
    boundary); edges that land on one boundary merge. Deterministic, and every block is at
    least one token wide."""
    if tokens < 1:
        raise ValueError(f"block_edges: an input needs at least one token, got {tokens}")
    blocks = max(1, min(block_count(tokens) if blocks is None else blocks, tokens))
    step = tokens / blocks
    bounds = np.array(
        sorted({b for s in spans for b in (s.start, s.end) if 0 < b < tokens}), np.int64
    )
    edges = [0]
    for k in range(1, blocks):
        x = round(k * step)
        if bounds.size:
            at = int(np.argmin(np.abs(bounds - x)))  # the first of equally near boundaries
            if abs(int(bounds[at]) - x) <= step / 2:
                x = int(bounds[at])
        if edges[-1] < x < tokens:
            edges.append(x)
    edges.append(tokens)
    return np.asarray(edges, np.int64)


def block_sums(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """float64 [..., n, n]: |S| summed over each (query block, key block) of `scores`
    [..., T, T] (rows queries), blocks as `edges` gives them (`block_edges`)."""
    mag = np.abs(np.asarray(scores, np.float64))
    starts = np.asarray(edges[:-1], np.intp)
    by_key = np.add.reduceat(mag, starts, axis=-1)
    return np.add.reduceat(by_key, starts, axis=-2)


def block_of(edges: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The block index of each token position (int64, shaped like `positions`)."""
    return np.searchsorted(np.asarray(edges), np.asarray(positions), side="right") - 1
