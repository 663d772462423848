"""Benchmark 5: saliency at real lengths: time, peak memory and storage, tiled against eager.

- Time: attn-grad (the tiled engine, and the dense `--engine eager` beside it) against a plain
  SDPA forward of the same model and batch, interleaved in one process.
- Memory: peak resident memory over the loaded model, each case in a fresh process (a process's
  peak only grows, and freed memory stays with the allocator). The baseline is a plain SDPA
  forward and backward of the same input to the embeddings (the least a gradient method runs:
  the weights frozen, no weight gradients), beside the tiled and the eager engines.
- Storage: bytes of one example's record at T = 512, 12 × 12 heads, default settings, and how
  far its head scores are from those of the dense computation.
- On CUDA (when present) the same tables run on the GPU, plus a 1B-parameter-class shape.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.common import (
    Options,
    Table,
    in_fresh_process,
    interleaved,
    median,
    ms,
    paired_ratio,
    verdict,
)

TIME_TARGETS = {("demo", 8, 128): 2.0, ("bert", 8, 128): 2.0, ("bert", 1, 2048): 2.5}
"""Saliency ÷ SDPA forward, at most, per (model, batch, T)."""
MEMORY_TARGET = (4096, 1.5)
"""At T = 4096 (batch 1, BERT-base shape), tiled peak ÷ SDPA forward + backward peak, at most."""
STORAGE_TARGET = 2**20
"""Bytes per example's record at T = 512, 12 × 12 heads, default settings, at most."""
CELL_BUDGET = 120.0


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model(opts: Options, which: str, positions: int = 512) -> Path:
    if which == "demo":
        return fixtures.demo_subject(opts.work, quick=opts.quick)[1]
    if opts.quick:
        return fixtures.bert(opts.work / f"bert-tiny-{positions}", 2, 2, 32, 300, positions)
    return fixtures.bert(opts.work / f"bert-base-{positions}", positions=positions)


def _rows(lm: Any, tokens: int, batch: int) -> list[Any]:
    from reportgen.engine.encoding import encode
    from reportgen.inputs import examples_from_items

    make = fixtures.causal_input if lm.task.value == "causal-lm" else fixtures.masked_input
    items = [make(tokens, seed) for seed in range(batch)]
    rows = [encode(ex, lm, None, False) for ex in examples_from_items(items)]
    assert all(len(r.ids) == tokens for r in rows), "inputs of the wrong length"
    return rows


def _plain_forward(lm: Any, path: Path, rows: list[Any]) -> Any:
    """A plain `inference_mode` SDPA forward of the same weights and batch."""
    import torch
    import transformers

    plain = (
        getattr(transformers, lm.architecture)
        .from_pretrained(path, attn_implementation="sdpa", dtype=lm.dtype)
        .to(lm.device)
        .eval()
    )
    ids = torch.tensor([r.ids for r in rows], device=lm.device)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def run() -> None:
        with torch.inference_mode():
            plain(**kwargs)
        _sync()

    return run


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_table(opts: Options) -> Table:
    from reportgen.engine import compute_batch, load_model
    from reportgen.settings import Settings

    table = Table(
        "5a. Scale: attn-grad time against a plain SDPA forward of the same batch",
        [
            "model",
            "batch",
            "T",
            "SDPA forward (ms)",
            "tiled (ms)",
            "eager (ms)",
            "tiled ÷ SDPA",
            "eager ÷ SDPA",
            "target",
            "met",
        ],
    )
    device = _device()
    cases = (
        [("demo", 2, 16), ("bert", 2, 16), ("bert", 1, 64)]
        if opts.quick
        else [("demo", 8, 128), ("bert", 8, 128), ("bert", 1, 512), ("bert", 1, 2048)]
    )
    for which, batch, tokens in cases:
        path = _model(opts, which, positions=max(512, tokens))
        lm = load_model(path, device=device)
        label = "demo model" if which == "demo" else "BERT-base shape (random)"
        if opts.quick:
            label = "tiny " + label
        rows = _rows(lm, tokens, batch)
        opts.log(f"scale/time: {label}, batch {batch}, T {tokens}")
        candidates = {
            "sdpa": _plain_forward(lm, path, rows),
            "tiled": lambda lm=lm, rows=rows: (
                compute_batch(lm, rows, Settings(), ablate=False),
                _sync(),
            ),
        }
        eager_fits = tokens <= 512
        if eager_fits:
            candidates["eager"] = lambda lm=lm, rows=rows: (
                compute_batch(lm, rows, Settings(engine="eager"), ablate=False),
                _sync(),
            )
        times = interleaved(candidates, opts.reps, budget=CELL_BUDGET)
        tiled = paired_ratio(times["tiled"], times["sdpa"])
        target = TIME_TARGETS.get((which, batch, tokens))
        table.add(
            label,
            batch,
            tokens,
            ms(median(times["sdpa"])),
            ms(median(times["tiled"])),
            ms(median(times["eager"])) if eager_fits else "not timed",
            f"{tiled:.2f}×",
            f"{paired_ratio(times['eager'], times['sdpa']):.2f}×" if eager_fits else "",
            f"≤ {target:.1f}×" if target else "",
            verdict(tiled, target, at_most=True, quick=opts.quick) if target else "",
        )
    table.notes += [
        f"Device: {device}. Medians over rounds of (saliency ÷ forward) timed in the same round, "
        f"{opts.reps} rounds (at least 3 where a cell passes {CELL_BUDGET:.0f} s), interleaved.",
        "Saliency = `compute_batch(..., ablate=False)` with default settings: every head's "
        "exact reductions and top-k cells (tiled), or the dense reference engine (eager). "
        "The forward is the same weights loaded with SDPA, under `torch.inference_mode()`.",
        "Inputs have exactly T tokens (a [MASK] at the end for BERT; demo-style text for the "
        "demo model), so no padding.",
    ]
    return table


# --- memory, one case per fresh process ------------------------------------------------------


def _worker(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case and return its peak memory over the loaded model (bytes) and its time."""
    import time

    import torch

    from reportgen.engine import compute_batch, load_model
    from reportgen.settings import Settings

    torch.set_num_threads(case["threads"] or torch.get_num_threads())
    lm = load_model(case["path"], device=case["device"], dtype=case.get("dtype", "float32"))
    device = lm.device
    rows = _rows(lm, case["tokens"], 1)
    if case["kind"] == "baseline":
        import transformers

        ids = torch.tensor([rows[0].ids], device=device)
        plain = (
            getattr(transformers, lm.architecture)
            .from_pretrained(case["path"], attn_implementation="sdpa", dtype=lm.dtype)
            .to(device)
            .eval()
            .requires_grad_(False)
        )
        del lm  # only the plain model's memory is measured
        base = plain.base_model
        embeddings = plain.get_input_embeddings()
        position = rows[0].loss_positions[0] if rows[0].loss_positions else 0

        def run() -> None:
            handle = embeddings.register_forward_hook(lambda m, a, out: out.requires_grad_())
            try:
                hidden = base(input_ids=ids).last_hidden_state
                loss = hidden[0, position].square().sum()
                torch.autograd.grad(loss, [hidden])
            finally:
                handle.remove()

    else:
        settings = Settings(engine=case["kind"], ablate_k=0)

        def run(lm: Any = lm) -> None:
            compute_batch(lm, rows, settings, ablate=False)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss()
        _reset_peak()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _peak() - before
    return {"peak": peak, "seconds": time.perf_counter() - start}


def _rss() -> int:
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    """Reset the process's peak resident set (VmHWM) to its current size (Linux)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def _measure(case: dict[str, Any]) -> dict[str, Any] | str:
    return in_fresh_process("benchmarks.scale", case, timeout=3600)


def memory_table(opts: Options) -> Table:
    table = Table(
        "5b. Scale: peak memory and time vs T (batch 1, BERT-base shape), fresh processes",
        [
            "T",
            "SDPA fwd + bwd (MiB)",
            "tiled (MiB)",
            "eager (MiB)",
            "tiled ÷ fwd + bwd",
            "tiled (s)",
            "eager (s)",
            "target",
            "met",
        ],
    )
    device = _device()
    lengths = (32, 64) if opts.quick else (128, 512, 2048, 4096, 8192)
    eager_limit = 64 if opts.quick else 2048
    for tokens in lengths:
        path = _model(opts, "bert", positions=max(512, tokens))
        opts.log(f"scale/memory: T {tokens}")
        base = {"path": str(path), "tokens": tokens, "device": device, "threads": opts.threads}
        found = {
            kind: _measure({**base, "kind": kind})
            for kind in ("baseline", "tiled", *(["eager"] if tokens <= eager_limit else []))
        }

        def mib(kind: str, found: dict[str, Any] = found) -> str:
            got = found.get(kind)
            if got is None:
                return "not run (quadratic)"
            return got if isinstance(got, str) else f"{got['peak'] / 2**20:.0f}"

        def secs(kind: str, found: dict[str, Any] = found) -> str:
            got = found.get(kind)
            return f"{got['seconds']:.2f}" if isinstance(got, dict) else ""

        ratio = None
        if isinstance(found["baseline"], dict) and isinstance(found["tiled"], dict):
            ratio = found["tiled"]["peak"] / max(1, found["baseline"]["peak"])
        judged = tokens == MEMORY_TARGET[0]
        table.add(
            tokens,
            mib("baseline"),
            mib("tiled"),
            mib("eager"),
            f"{ratio:.2f}×" if ratio is not None else "",
            secs("tiled"),
            secs("eager"),
            f"≤ {MEMORY_TARGET[1]}×" if judged else "",
            verdict(ratio, MEMORY_TARGET[1], at_most=True, quick=opts.quick)
            if judged and ratio is not None
            else "",
        )
    table.notes += [
        f"Device: {device}. Peak resident memory (CUDA: peak allocated) over the process after "
        "the model has loaded, one fresh process per cell; the default allocator (freed "
        "memory returns to the system between cases).",
        "SDPA fwd + bwd: the same weights with SDPA, frozen, the embeddings' output requiring "
        "a gradient, one forward and `autograd.grad` of a loss at the mask position to the "
        "last hidden state: the least a gradient method costs.",
        "Eager keeps every layer's T × T weights and gradients (about "
        "12 · 12 · T² · 4 bytes each): not run above T = 2048 (about 19 GiB at T = 4096).",
    ]
    return table


def storage_table(opts: Options) -> Table:
    """Bytes of one example's run record at T = 512 with 12 × 12 heads, default settings."""
    import numpy as np

    from reportgen.engine import compute, load_model
    from reportgen.inputs import examples_from_items
    from reportgen.records import Run, RunWriter
    from reportgen.settings import Settings

    table = Table(
        "5c. Scale: run record per example (12 × 12 heads), default settings",
        ["T", "record (KiB)", "target", "met", "head scores vs dense: max rel. difference"],
    )
    tokens = 64 if opts.quick else 512
    path = fixtures.gpt2(opts.work / "gpt2-12x12-storage", 12, 12, 96, positions=max(512, tokens))
    lm = load_model(path, device="cpu")
    items = [fixtures.causal_input(tokens, 0)]
    examples = examples_from_items(items)
    settings = Settings(ablate_k=0, metric="flow:ENV->LAN")
    [dense] = compute(examples, lm, Settings(store="dense", ablate_k=0, metric=settings.metric))
    [tiled] = compute(examples, lm, settings)
    from reportgen.pipeline import run_info

    with RunWriter(opts.work / "storage-run", run_info(lm, settings, "benchmark")) as writer:
        writer.add(tiled)
    run = Run.open(opts.work / "storage-run")
    record = run.path / run.entries[0].record
    size = record.stat().st_size + len((run.path / "entries.jsonl").read_bytes())
    # Head scores from the stored reductions against numpy sums over the dense S.
    assert dense.dense is not None
    mag = np.abs(dense.dense.astype(np.float64))
    env, lan = dense.spans
    by_hand = {
        "total": mag.sum((2, 3)),
        "prediction": mag[:, :, dense.prediction_position].sum(-1),
        "flow:ENV->LAN": mag[:, :, lan.start : lan.end, env.start : env.end].sum((2, 3)),
    }
    worst = 0.0
    for metric, mass in by_hand.items():
        expected = mass / mass.sum()
        got = run.result(0).head_scores(metric).astype(np.float64)
        worst = max(worst, float(np.abs(got - expected).max() / expected.max()))
    table.add(
        tokens,
        f"{size / 1024:.0f}",
        f"≤ {STORAGE_TARGET / 1024:.0f}",
        verdict(size, STORAGE_TARGET, at_most=True, quick=opts.quick),
        f"{worst:.1e}",
    )
    table.notes += [
        "A random 12 × 12-head GPT-2 (demo vocabulary), one input of exactly T tokens: the "
        "record file (exact float64 totals, prediction rows and segment flows; each head's "
        f"top {tiled.stats.k} cells as int32 + float32) plus its entries.jsonl line.",
        "Head scores: total, prediction and flow:ENV->LAN from the stored reductions, against "
        "the same sums in float64 over the dense S of `--store dense` (float32): the difference "
        "is float32 rounding of the dense array.",
    ]
    return table


LARGE = {"layers": 16, "heads": 32, "width": 2048, "kv_heads": 8, "positions": 4096}
"""The large-model row: a 1B-parameter-class Llama shape (random weights), T = 4096, bfloat16."""


def large_table(opts: Options) -> Table:
    """Peak memory and time of the 1B-class shape at T = 4096 in bfloat16, on CUDA (on a CPU
    machine the full mode says so; the quick mode runs a tiny Llama on CPU through the same
    code, so the path stays working where no GPU is)."""
    table = Table(
        "5d. Scale: a 1B-parameter-class model (Llama shape, 16 × 32 heads, width 2048, "
        "random), batch 1, bfloat16",
        ["device", "T", "SDPA fwd + bwd (MiB)", "tiled (MiB)", "tiled ÷ fwd + bwd", "tiled (s)"],
    )
    device = _device()
    if device != "cuda" and not opts.quick:
        table.add(device, 4096, "CUDA only: not run", "", "", "")
        return table
    shape = {**LARGE, "layers": 2, "heads": 4, "width": 64, "kv_heads": 2, "positions": 128}
    tokens = 64 if opts.quick else 4096
    path = fixtures.llama(
        opts.work / ("llama-tiny" if opts.quick else "llama-1b"), **(shape if opts.quick else LARGE)
    )
    opts.log(f"scale/large: T {tokens} on {device}")
    base = {"path": str(path), "tokens": tokens, "device": device, "threads": opts.threads}
    found = {
        kind: _measure({**base, "kind": kind, "dtype": "bfloat16"})
        for kind in ("baseline", "tiled")
    }
    shown = {k: v if isinstance(v, str) else f"{v['peak'] / 2**20:.0f}" for k, v in found.items()}
    ratio = ""
    if isinstance(found["baseline"], dict) and isinstance(found["tiled"], dict):
        ratio = f"{found['tiled']['peak'] / max(1, found['baseline']['peak']):.2f}×"
    seconds = found["tiled"]["seconds"] if isinstance(found["tiled"], dict) else None
    table.add(
        device,
        tokens,
        shown["baseline"],
        shown["tiled"],
        ratio,
        f"{seconds:.2f}" if seconds is not None else "",
    )
    table.notes.append(
        "Same measurement as 5b (fresh process per cell, peak over the loaded model); weights "
        "and compute in bfloat16, reductions in float32 and float64."
    )
    return table


def run(opts: Options) -> list[Table]:
    return [time_table(opts), memory_table(opts), storage_table(opts), large_table(opts)]


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
