"""Benchmark 1: attn-grad saliency (scores for every head) against a plain forward pass.

The baseline is what a user runs anyway: the same weights loaded with transformers' default SDPA
attention, one `inference_mode` forward over the same batch. The eager forward (what reportgen's
attention wrapper runs) is timed beside it to show where the cost goes. Saliency is
`engine.compute_batch` without the ablation check: gated eager forward with gradients,
backward to the attention weights, |A ⊙ ∂L/∂A| and head scores, numpy arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.common import Options, Table, interleaved, median, ms, paired_ratio, verdict

TARGET = 3.0
"""Saliency at most this many plain SDPA forwards, at batch 8 and T = 128."""
TARGET_AT = (8, 128)
CELL_BUDGET = 90.0
"""Seconds of timing per (model, batch, T) after which its rounds stop (at least 3 are run)."""


def _models(opts: Options) -> list[tuple[str, Path]]:
    """(label, folder) of the models to time: the demo model (or a random stand-in of its
    shape while it is not trained yet) and a BERT-base-shaped masked LM."""
    if opts.quick:
        return [
            fixtures.demo_subject(opts.work, quick=True),
            ("tiny BERT 2×2", fixtures.bert(opts.work / "bert-tiny", 2, 2, 32, 300, 64)),
        ]
    return [
        fixtures.demo_subject(opts.work, quick=False),
        ("BERT-base shape (random)", fixtures.bert(opts.work / "bert-base")),
    ]


def _batch_inputs(lm: Any, rows: Sequence[Any]) -> dict[str, Any]:
    """The forward's keyword arguments for equal-length rows (as the engine passes them)."""
    import torch

    ids = torch.tensor([row.ids for row in rows])
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if lm.accepts_position_ids:
        kwargs["position_ids"] = torch.arange(ids.shape[1]).expand(len(rows), -1)
    return kwargs


def _time(
    lm: Any, plain: dict[str, Any], rows: Sequence[Any], settings: Any, reps: int
) -> dict[str, list[float]]:
    """Seconds per call of the SDPA and eager forwards and of saliency, interleaved."""
    import torch

    from reportgen.engine import compute_batch

    kwargs = _batch_inputs(lm, rows)

    def forward(impl: str) -> None:
        with torch.inference_mode():
            plain[impl](**kwargs)

    return interleaved(
        {
            "sdpa": lambda: forward("sdpa"),
            "eager": lambda: forward("eager"),
            "saliency": lambda: compute_batch(lm, rows, settings, ablate=False),
        },
        reps,
        budget=CELL_BUDGET,
    )


def run(opts: Options) -> list[Table]:
    import torch
    import transformers

    from reportgen.engine import load_model
    from reportgen.engine.encoding import encode
    from reportgen.inputs import examples_from_items
    from reportgen.settings import Settings

    table = Table(
        "1. Compute: attn-grad saliency vs a plain forward of the same model and batch",
        [
            "model",
            "batch",
            "T",
            "SDPA forward (ms)",
            "eager forward (ms)",
            "saliency (ms)",
            "saliency ÷ SDPA",
            "saliency ÷ eager",
            "saliency inputs/s",
            "target",
            "met",
        ],
    )
    settings = Settings(method="attn-grad", metric="total")
    batches, lengths = ((1, 8), (16,)) if opts.quick else ((1, 8), (16, 128, 512))
    for label, path in _models(opts):
        lm = load_model(path, device="cpu")
        cls = getattr(transformers, lm.architecture)
        plain = {
            impl: cls.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).eval()
            for impl in ("sdpa", "eager")
        }
        for batch in batches:
            for tokens in lengths:
                if lm.max_tokens is not None and tokens > lm.max_tokens:
                    limit = f"n/a: the model reads at most {lm.max_tokens} tokens"
                    table.add(label, batch, tokens, limit, "", "", "", "", "", "", "")
                    continue
                opts.log(f"compute: {label}, batch {batch}, T {tokens}")
                make = fixtures.causal_input if lm.task.value == "causal-lm" else None
                items = [
                    make(tokens, seed) if make else fixtures.masked_input(tokens, seed)
                    for seed in range(batch)
                ]
                rows = [encode(ex, lm, None, False) for ex in examples_from_items(items)]
                assert all(len(r.ids) == tokens for r in rows), "inputs of the wrong length"
                times = _time(lm, plain, rows, settings, opts.reps)
                ratio = paired_ratio(times["saliency"], times["sdpa"])
                judged = (batch, tokens) == TARGET_AT
                table.add(
                    label,
                    batch,
                    tokens,
                    ms(median(times["sdpa"])),
                    ms(median(times["eager"])),
                    ms(median(times["saliency"])),
                    f"{ratio:.2f}×",
                    f"{paired_ratio(times['saliency'], times['eager']):.2f}×",
                    f"{batch / median(times['saliency']):.3g}",
                    f"≤ {TARGET:.1f}×" if judged else "",
                    verdict(ratio, TARGET, at_most=True, quick=opts.quick) if judged else "",
                )
    table.notes += [
        "Ratios are medians over rounds of (saliency ÷ forward) timed in the same round; "
        f"{opts.reps} rounds (fewer, but at least 3, where a cell's rounds pass "
        f"{CELL_BUDGET:.0f} s), candidates interleaved, one warm-up call each.",
        "Saliency = `compute_batch(..., ablate=False)`: gated eager forward with gradients, "
        "backward to the attention weights, |A ⊙ ∂L/∂A| for every head, head scores, numpy "
        "out. Forwards run under `torch.inference_mode()`.",
        "Inputs have exactly T tokens (demo-style ENV/LAN text for GPT-2, a [MASK] at the end "
        "for BERT), so no padding.",
    ]
    return [table]
