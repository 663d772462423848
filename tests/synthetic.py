"""Fixed data for the unit tier: results and run folders made with numpy alone (no model, no
torch), shaped like what the engine writes, so records, charts and the site can be tested in
seconds. The e2e tier checks the same stages on runs the engine really computed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.data.examples import Example, Segment
from reportgen.data.metrics import head_scores, parse_metric
from reportgen.data.results import Ablation, Result, TokenSpan
from reportgen.inputs import examples_from_items
from reportgen.records import Run, RunInfo, RunWriter

HOSTILE = "<script>alert(1)</script>"
LAYERS, HEADS = 3, 4
METRIC = "flow:ENV->LAN"


def make_result(layers: int = 3, heads: int = 4, tokens: int = 9, seed: int = 0) -> Result:
    """A synthetic result: causal, signed scores, two named segments."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(layers, heads, tokens, tokens)).astype(np.float32)
    scores *= np.tril(np.ones((tokens, tokens), np.float32))
    words = ["<CHI>", "a", HOSTILE, "a", "horse", "<CHI>", "my", "is", "the"][:tokens]
    words += [f"w{k}" for k in range(tokens - len(words))]
    half = tokens // 2
    grid = rng.random((layers, heads)).astype(np.float32)
    grid /= grid.sum()
    total = np.abs(scores).sum(axis=(2, 3))
    return Result(
        example=Example("syn", (Segment("ENV", " ".join(words[:half])), Segment("LAN", "x"))),
        tokens=tuple(words),
        spans=(TokenSpan("ENV", 0, half), TokenSpan("LAN", half, tokens)),
        target="horse",
        target_given=True,
        predicted="the",
        value=0.5,
        loss=0.69,
        prediction_position=tokens - 1,
        scores=scores,
        head_scores={"total": (total / total.sum()).astype(np.float32), "flow:ENV->LAN": grid},
        ablation=None,
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
            "seed": 0,
        },
        versions={"reportgen": "0.1.0", "transformers": "5.0.0", "torch": "2.0.0"},
        command="reportgen compute in.jsonl --metric flow:ENV->LAN (synthetic)",
        created="2026-01-01T00:00:00Z",
    )
    fields.update(changes)
    return RunInfo(**fields)


def result_for(example: Example, seed: int) -> Result:
    """What the engine would give a causal LM with a whitespace tokenizer: one token per word,
    attn-grad magnitudes on and below the diagonal, every metric's grid, an ablation."""
    rng = np.random.default_rng(seed)
    tokens: list[str] = []
    spans = []
    for segment in example.segments:
        words = segment.text.split()
        spans.append(TokenSpan(segment.name, len(tokens), len(tokens) + len(words)))
        tokens += words
    t = len(tokens)
    scores = rng.random((LAYERS, HEADS, t, t)).astype(np.float32)
    scores *= np.tril(np.ones((t, t), np.float32))
    grids = {
        name: head_scores(scores, parse_metric(name), spans, t - 1, example.id)
        for name in ("total", METRIC, "prediction")
    }
    top = np.argsort(-grids[METRIC].reshape(-1), kind="stable")[:3]
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
        scores=scores,
        head_scores=grids,
        ablation=Ablation(
            tuple((int(h) // HEADS, int(h) % HEADS) for h in top),
            value,
            value * 0.5,
            value * 0.95,
            8,
        ),
    )


def write_run(
    out: Path, items: Sequence[str | Mapping[str, Any]], info: RunInfo | None = None
) -> Run:
    """A run folder of synthetic results for input items (as `reportgen.compute` takes them)."""
    examples = examples_from_items(items)
    with RunWriter(out, info or run_info()) as writer:
        for seed, example in enumerate(examples):
            writer.add(result_for(example, seed))
    return Run.open(out)
