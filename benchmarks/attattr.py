"""Benchmark 2: integrated gradients on attention (`attattr`, m steps) against the
straightforward loop, at equal results.

The reference is what one writes from the paper (Hao et al. 2021): for every layer l and step
k = 1..m, one forward pass over the batch with layer l's attention scaled by α = k/m (through
reportgen's public `attention_control` gates), one backward pass to that layer's attention
weights, and S_l = A_l ⊙ mean_k ∂L(α_k A_l)/∂A_l. The engine is `compute_batch(method="attattr")`.
Both are checked to give the same scores before their times count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks import fixtures
from benchmarks.common import Options, Table, interleaved, median, ms, paired_ratio, verdict

TARGET = 5.0
"""The engine at least this many times faster than the reference loop."""
ROUNDS = 5
"""At most this many timed rounds (one per-input round at 8 inputs is ~2,000 passes)."""
TOLERANCE = 1e-4
"""Largest |engine − reference| allowed, relative to the largest |reference| score (float32)."""


class MismatchError(AssertionError):
    """The engine's attattr scores differ from the reference loop's."""


def reference(lm: Any, rows: Sequence[Any], steps: int) -> list[np.ndarray]:
    """attattr scores the straightforward way, float32 [L, H, T, T] per row (causal LMs with
    given targets)."""
    import torch

    from reportgen.engine.attention import attention_control

    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id or 0)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, : len(row.ids)] = torch.tensor(row.ids)
        mask[b, : len(row.ids)] = 1
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if lm.accepts_position_ids:
        kwargs["position_ids"] = torch.arange(width).expand(len(rows), -1)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = [
            logp[b, list(row.loss_positions), list(row.target_ids)].sum()
            for b, row in enumerate(rows)
        ]
        return -torch.stack(picked).sum()

    with torch.no_grad(), attention_control(record=True) as base:
        lm.model(**kwargs)
    # As a user's own loop would have it: the model's weights require gradients (reportgen's
    # loaded model has them frozen), so the graph reaches every layer's attention.
    lm.model.requires_grad_(True)
    try:
        return _integrate(lm, rows, steps, kwargs, loss, base)
    finally:
        lm.model.requires_grad_(False)


def _integrate(
    lm: Any, rows: Sequence[Any], steps: int, kwargs: Any, loss: Any, base: Any
) -> list[np.ndarray]:
    import torch

    from reportgen.engine.attention import attention_control

    layers, heads = lm.num_layers, lm.num_heads
    total = [torch.zeros_like(a, dtype=torch.float64) for a in base]
    for layer in range(layers):
        for k in range(1, steps + 1):
            alpha = k / steps
            gates = torch.ones(len(rows), layers, heads)
            gates[:, layer] = alpha
            with attention_control(gates=gates, record=True) as weights:
                logits = lm.model(**kwargs).logits
            (grad,) = torch.autograd.grad(loss(logits), weights[layer])
            # The gate scales the head's output, so this is α · ∂L/∂A at αA.
            total[layer] += grad.double() / alpha
    scores = torch.stack([a.double() * t / steps for a, t in zip(base, total, strict=True)], 1)
    return [
        scores[b, :, :, : len(row.ids), : len(row.ids)].float().numpy()
        for b, row in enumerate(rows)
    ]


def difference(engine: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over all scores, relative to the largest |reference|."""
    scale = max(float(np.abs(r).max()) for r in ref)
    assert scale > 0, "the reference scores are all zero: nothing would be compared"
    diff = max(float(np.abs(e - r).max()) for e, r in zip(engine, ref, strict=True))
    return diff / scale


def per_input(lm: Any, rows: Sequence[Any], steps: int) -> list[np.ndarray]:
    """The reference loop run for one input at a time, as a notebook over a dataset would."""
    return [reference(lm, [row], steps)[0] for row in rows]


def _time(
    lm: Any, rows: Sequence[Any], settings: Any, reps: int, batched: bool
) -> dict[str, list[float]]:
    """Seconds per call of the reference loops and the engine, interleaved."""
    from reportgen.engine import compute_batch

    candidates = {
        "per input": lambda: per_input(lm, rows, settings.steps),
        "batched": lambda: reference(lm, rows, settings.steps),
        "engine": lambda: compute_batch(lm, rows, settings, ablate=False),
    }
    if not batched:
        del candidates["batched"]
    return interleaved(candidates, reps, warmup=0)


def run(opts: Options) -> list[Table]:
    from reportgen.engine import load_model
    from reportgen.engine.encoding import encode
    from reportgen.engine.runner import compute_batch
    from reportgen.inputs import examples_from_items
    from reportgen.settings import Settings

    steps = 4 if opts.quick else 20
    reps = min(opts.reps, ROUNDS)
    label, path = fixtures.demo_subject(opts.work, opts.quick)
    lm = load_model(path, device="cpu")
    table = Table(
        f"2. Integrated gradients on attention: attattr (m = {steps}) vs the reference loop",
        [
            "model",
            "inputs",
            "T (max)",
            "reference, per input (ms)",
            "reference, inputs batched (ms)",
            "reportgen attattr (ms)",
            "speed-up vs per input",
            "speed-up vs batched",
            "max rel. difference",
            "target",
            "met",
        ],
    )
    for batch in (1, 8):
        opts.log(f"attattr: {label}, {batch} input(s)")
        examples = examples_from_items(fixtures.demo_inputs(batch, seed=batch))
        rows = [encode(ex, lm, None, False) for ex in examples]
        settings = Settings(method="attattr", steps=steps, batch_size=batch)
        checked = replace(settings, store="dense")  # every cell, to compare with the references
        engine = [r.dense for r in compute_batch(lm, rows, checked, ablate=False)]
        diff = max(
            difference(engine, per_input(lm, rows, steps)),
            difference(engine, reference(lm, rows, steps)),
        )
        if diff > TOLERANCE:
            raise MismatchError(
                f"attattr differs from the reference loop by {diff:.2e} (relative) with {batch} "
                "input(s); the engine is wrong, not slow"
            )
        times = _time(lm, rows, settings, reps, batched=batch > 1)
        speedup = paired_ratio(times["per input"], times["engine"])
        batched = times.get("batched", times["per input"])
        table.add(
            label,
            batch,
            max(len(r.ids) for r in rows),
            ms(median(times["per input"])),
            ms(median(batched)) if batch > 1 else "(same)",
            ms(median(times["engine"])),
            f"{speedup:.2f}×",
            f"{paired_ratio(batched, times['engine']):.2f}×",
            f"{diff:.1e}",
            f"≥ {TARGET:.0f}× vs per input",
            verdict(speedup, TARGET, at_most=False, quick=opts.quick),
        )
    table.notes += [
        "Speed-up: median over rounds of reference ÷ engine, timed in the same round "
        f"({reps} rounds, interleaved; the equality checks are the warm-up).",
        "Reference: for each layer l and step k, one forward (layer l's attention scaled by "
        "α = k/m) and one `torch.autograd.grad` to layer l's attention only; per input: one "
        "input per pass, as a loop over a dataset runs it; inputs batched: all inputs "
        "right-padded into each pass (a stronger baseline, shown for comparison). All include "
        "the unscaled pass for A and the copy to numpy. Inputs: generated demo inputs.",
        f"Equal results: every score of both references within {TOLERANCE:g} of the largest "
        "|score| (float32), checked before timing; a mismatch fails the run.",
    ]
    return [table]
