"""Fixed data for the unit tier: results and run folders made with numpy alone (no model, no
torch), shaped like what the engine writes, so records, charts and the site can be tested in
seconds. The e2e tier checks the same stages on runs the engine really computed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.data.blocks import block_edges, block_of, block_sums, is_long
from reportgen.data.examples import Example, Segment
from reportgen.data.metrics import parse_metric, shares
from reportgen.data.results import Ablation, HeadStats, Knockout, Result, TokenSpan, default_top_k
from reportgen.inputs import examples_from_items
from reportgen.records import Run, RunInfo, RunWriter

HOSTILE = "<script>alert(1)</script>"
LAYERS, HEADS = 3, 4
METRIC = "flow:ENV->LAN"


def stats_from_dense(
    dense: np.ndarray,
    spans: Sequence[TokenSpan],
    prediction_position: int | None,
    top_k: int,
) -> HeadStats:
    """HeadStats of a dense S [L, H, T, T] (rows queries), reduced here with numpy alone, as
    results.HeadStats defines them: float64 sums of |S| (all cells, the prediction row, and by
    (query segment, key segment) with a last group for tokens in no segment), and each head's
    top_k cells by |S|, ties by cell index, padded with -1 / 0 past its non-zero cells."""
    signed = np.asarray(dense, np.float32)
    mag = np.abs(np.asarray(dense, np.float64))
    layers, heads, t, _ = mag.shape
    groups = np.full(t, len(spans))
    for index, span in enumerate(spans):
        groups[span.start : span.end] = index
    onehot = np.eye(len(spans) + 1)[groups]  # [T, n + 1]
    flow = np.einsum("lhqk,qa,kb->lhab", mag, onehot, onehot)
    if prediction_position is None:
        prediction = np.zeros((layers, heads))
    else:
        prediction = mag[:, :, prediction_position, :].sum(-1)
    flat = signed.reshape(layers, heads, t * t)
    order = np.argsort(-np.abs(flat), axis=-1, kind="stable")[..., :top_k]
    values = np.take_along_axis(flat, order, -1)
    cells = np.where(values != 0, order, -1).astype(np.int32)
    values = np.where(cells >= 0, values, 0).astype(np.float32)
    if top_k > t * t:
        pad = ((0, 0), (0, 0), (0, top_k - t * t))
        cells = np.pad(cells, pad, constant_values=-1)
        values = np.pad(values, pad)
    edges = block_edges(t, spans) if is_long(t) else None
    return HeadStats(
        segments=tuple(s.name for s in spans),
        total=mag.sum(axis=(2, 3)),
        prediction=prediction,
        flow=flow,
        top_cells=cells,
        top_values=values,
        edges=edges,
        blocks=None if edges is None else block_sums(mag, edges),
    )


def assert_stats_match_dense(
    stats: HeadStats,
    dense: np.ndarray,
    spans: Sequence[TokenSpan],
    prediction_position: int | None,
    rtol: float = 1e-6,
) -> None:
    """The engine's reductions and top cells agree with the dense S it also returned: its sums
    against float64 sums of the stored cells (to the rounding of the stored dtype), and the
    stored top cells are the strongest cells of S, in order, with their values."""
    want = stats_from_dense(dense, spans, prediction_position, stats.k)
    assert stats.segments == want.segments
    scale = float(np.abs(want.total).max()) or 1.0
    for name in ("total", "prediction", "flow"):
        got = getattr(stats, name)
        assert got.dtype == np.float64, name
        np.testing.assert_allclose(got, getattr(want, name), rtol=rtol, atol=rtol * scale)
    # (a float32 model's reductions add up in float32: equal to its rounding)
    np.testing.assert_allclose(stats.flow.sum((2, 3)), stats.total, rtol=rtol, atol=0)
    # Magnitudes in order; ties may be broken differently only between equal magnitudes.
    top = np.abs(stats.top_values.astype(np.float64))
    np.testing.assert_allclose(top, np.abs(want.top_values), rtol=rtol, atol=rtol * scale)
    assert (np.diff(top, axis=-1) <= 0).all(), "strongest first"
    np.testing.assert_array_equal(stats.top_cells < 0, want.top_cells < 0)
    flat = np.asarray(dense, np.float32).reshape(*dense.shape[:2], -1)
    kept = stats.top_cells >= 0
    at = np.take_along_axis(flat, np.where(kept, stats.top_cells, 0), -1)
    np.testing.assert_allclose(np.where(kept, at, 0), stats.top_values, rtol=rtol, atol=0)
    assert (stats.top_values[~kept] == 0).all()
    for row in stats.top_cells.reshape(-1, stats.k):
        cells = row[row >= 0]
        assert len(set(cells.tolist())) == len(cells), "each cell once"


def make_scores(layers: int = 3, heads: int = 4, tokens: int = 9, seed: int = 0) -> np.ndarray:
    """The dense S of `make_result` (same arguments): causal, signed, float32 [L, H, T, T]."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(layers, heads, tokens, tokens)).astype(np.float32)
    return scores * np.tril(np.ones((tokens, tokens), np.float32))


def make_result(
    layers: int = 3,
    heads: int = 4,
    tokens: int = 9,
    seed: int = 0,
    top_k: int | None = None,
    dense: bool = False,
) -> Result:
    """A synthetic result of `make_scores`: causal, signed scores, two named segments. Its
    stats keep `top_k` cells per head (default: every cell, so any page k can be packed);
    `dense` keeps S on the result as `--store dense` does."""
    scores = make_scores(layers, heads, tokens, seed)
    words = ["<CHI>", "a", HOSTILE, "a", "horse", "<CHI>", "my", "is", "the"][:tokens]
    words += [f"w{k}" for k in range(tokens - len(words))]
    half = tokens // 2
    spans = (TokenSpan("ENV", 0, half), TokenSpan("LAN", half, tokens))
    return Result(
        example=Example("syn", (Segment("ENV", " ".join(words[:half])), Segment("LAN", "x"))),
        tokens=tuple(words),
        spans=spans,
        target="horse",
        target_given=True,
        predicted="the",
        value=0.5,
        loss=0.69,
        prediction_position=tokens - 1,
        stats=stats_from_dense(scores, spans, tokens - 1, top_k or tokens * tokens),
        ablation=None,
        dense=scores if dense else None,
    )


def run_info(**changes: Any) -> RunInfo:
    """A run description like the one `reportgen compute` writes for a tiny GPT-2."""
    fields: dict[str, Any] = dict(
        model="tiny-gpt2",
        model_path="…/models/tiny-gpt2",
        weights_sha256="5e" * 32,
        architecture="GPT2LMHeadModel",
        task="causal-lm",
        num_layers=LAYERS,
        num_heads=HEADS,
        attn_implementation="the model's own eager attention, in reportgen's gated wrapper",
        dtype="float32",
        device="cpu",
        method="attn-grad",
        metric=METRIC,
        parameters={
            "steps": None,
            "batch_size": 8,
            "max_tokens": 40,
            "truncate": False,
            "ablate_k": 3,
            "ablate_draws": 8,
            "ablation": "mean",
            "effect": "logprob",
            "seed": 0,
            "engine": "tiled",
            "store": "top-k",
            "top_k": None,
            "pairing": None,
            "reductions": "float32",
            "torch_threads": 1,
        },
        versions={"reportgen": "0.1.0", "transformers": "5.0.0", "torch": "2.0.0"},
        command="reportgen compute in.jsonl --metric flow:ENV->LAN (synthetic)",
        created="2026-01-01T00:00:00Z",
    )
    fields.update(changes)
    return RunInfo(**fields)


def result_for(example: Example, seed: int, layers: int = LAYERS, heads: int = HEADS) -> Result:
    """What the engine would give a causal LM with a whitespace tokenizer: one token per word,
    attn-grad magnitudes on and below the diagonal reduced to HeadStats with the default top-k
    (2T, at most 512), and an ablation of the top heads under the run's metric."""
    rng = np.random.default_rng(seed)
    tokens: list[str] = []
    spans = []
    for segment in example.segments:
        words = segment.text.split()
        spans.append(TokenSpan(segment.name, len(tokens), len(tokens) + len(words)))
        tokens += words
    t = len(tokens)
    scores = rng.random((layers, heads, t, t)).astype(np.float32)
    scores *= np.tril(np.ones((t, t), np.float32))
    stats = stats_from_dense(scores, spans, t - 1, default_top_k(t))
    grid = shares(stats, parse_metric(METRIC), example.id)
    top = np.argsort(-grid.reshape(-1), kind="stable")[:3]
    value = float(rng.uniform(0.2, 0.9))
    predicted = example.target or "ball"
    return Result(
        example=example,
        tokens=tuple(tokens),
        spans=tuple(spans),
        target=predicted,
        target_given=example.target is not None,
        predicted=predicted,
        value=value,
        loss=float(-np.log(value)),
        prediction_position=t - 1,
        stats=stats,
        ablation=synthetic_ablation(
            tuple((int(h) // heads, int(h) % heads) for h in top),
            float(np.log(value)),
            seed,
            layers,
            heads,
        ),
    )


def synthetic_ablation(
    heads: tuple[tuple[int, int], ...],
    value: float,
    seed: int,
    num_layers: int = LAYERS,
    num_heads: int = HEADS,
) -> Ablation:
    """An ablation record as the engine writes one (mean ablation, log p, a flow knockout):
    the top heads lower log p more than random heads, head by head."""
    rng = np.random.default_rng([seed, 99])
    k = len(heads)
    curve = tuple(value - 0.5 * (n + 1) / k - 0.01 * float(rng.random()) for n in range(k))
    draws = tuple(
        tuple(
            (int(h) // num_heads, int(h) % num_heads)
            for h in rng.choice(num_layers * num_heads, k, False)
        )
        for _ in range(8)
    )
    randoms = tuple(value - 0.05 * float(rng.random()) for _ in draws)
    layers = tuple(value - 0.2 * float(rng.random()) for _ in range(num_layers))
    knocked = tuple(value - 0.1 * float(rng.random()) for _ in range(num_layers))
    return Ablation(
        intervention="mean",
        effect="logprob",
        heads=heads,
        value=value,
        value_top=curve[-1],
        random_heads=draws,
        random_values=randoms,
        curve=curve,
        layers=layers,
        donor=None,
        knockout=Knockout("ENV", "LAN", value - 0.3, knocked),
    )


def write_run(
    out: Path, items: Sequence[str | Mapping[str, Any]], info: RunInfo | None = None
) -> Run:
    """A run folder of synthetic results for input items (as `reportgen.compute` takes them),
    of the model shape `info` gives (by default 3 layers × 4 heads)."""
    examples = examples_from_items(items)
    info = info or run_info()
    with RunWriter(out, info) as writer:
        for seed, example in enumerate(examples):
            writer.add(result_for(example, seed, info.num_layers, info.num_heads))
    return Run.open(out)


def long_result(
    layers: int, heads: int, tokens: int, seed: int = 0, top_k: int | None = None
) -> Result:
    """A long causal input's result without its dense S (which at T = 8192 would not fit):
    two segments, each head's block sums random on and below the diagonal, its kept cells
    random distinct cells below the diagonal whose values fit inside their blocks' sums
    (strongest first), and totals and flow from the blocks. For page weight and speed, not
    for values against an oracle (`stats_from_dense` is that)."""
    rng = np.random.default_rng(seed)
    half = tokens // 2
    spans = (TokenSpan("ENV", 0, half), TokenSpan("LAN", half, tokens))
    edges = block_edges(tokens, spans)
    n = len(edges) - 1
    k = top_k or default_top_k(tokens)
    blocks = rng.gamma(0.5, size=(layers, heads, n, n)) * np.tril(np.ones((n, n)))
    i = rng.integers(0, tokens, size=(layers, heads, 4 * k))
    j = (rng.random(size=i.shape) * (i + 1)).astype(np.int64)
    cells = np.full((layers, heads, k), -1, np.int32)
    values = np.zeros((layers, heads, k), np.float32)
    for layer in range(layers):
        for head in range(heads):
            flat = np.unique(i[layer, head] * tokens + j[layer, head])[:k]
            qb, kb = block_of(edges, flat // tokens), block_of(edges, flat % tokens)
            share = blocks[layer, head, qb, kb] * rng.random(flat.size) / (4 * k / n)
            order = np.argsort(-share, kind="stable")
            cells[layer, head, : flat.size] = flat[order]
            values[layer, head, : flat.size] = share[order]
    total = blocks.sum((2, 3))
    groups = block_of(np.array([0, half, tokens]), edges[:-1])
    flow = np.zeros((layers, heads, 3, 3))
    for q in range(2):
        for kk in range(2):
            flow[:, :, q, kk] = blocks[:, :, groups == q][:, :, :, groups == kk].sum((2, 3))
    words = tuple(f"w{m % 97}" for m in range(tokens))
    stats = HeadStats(
        segments=("ENV", "LAN"),
        total=total,
        prediction=blocks[:, :, -1].sum(-1),
        flow=flow,
        top_cells=cells,
        top_values=values,
        edges=edges,
        blocks=blocks,
    )
    example = Example(
        f"t{tokens}",
        (Segment("ENV", " ".join(words[:half])), Segment("LAN", " ".join(words[half:]))),
    )
    return Result(
        example=example,
        tokens=words,
        spans=spans,
        target="w1",
        target_given=True,
        predicted="w1",
        value=0.5,
        loss=0.69,
        prediction_position=tokens - 1,
        stats=stats,
        ablation=None,
    )
