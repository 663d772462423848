"""Benchmark 8: reportgen against what users already have, at equal results.

Compute peers, each checked against reportgen's dense scores (`--store dense`) before it is
timed, then timed side by side with reportgen (its default settings) and an SDPA forward of the
same weights and batch, in one process, interleaved (ratios to the forward, medians):
- hand-written attention × gradient: `output_attentions=True` on the eager model and
  `torch.autograd.grad` of the loss to every layer's attention;
- Captum `LayerGradientXActivation` on every layer's attention probabilities (the attention
  modules' second output), all layers in one call;
- Captum `IntegratedGradients` per layer on its attention probabilities (baseline 0, m
  right-Riemann steps α = k/m, the steps batched), against reportgen's attattr;
- inseq's `attention` and `saliency` methods, where inseq imports with this transformers.

Peak memory of each compute peer: one fresh process per case, as benchmark 5 measures it. Pages:
bertviz `head_view` and CircuitsVis `attention_patterns` at T = 128 and 512, their JavaScript
served from local copies of the npm packages their pages fetch from CDNs (see `pages`).

Every peer is optional (`pip install ".[bench]"`): an absent one is a row saying so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

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

TOLERANCE = 1e-4
"""Largest |peer − reportgen| over all scores, relative to the largest |reportgen| score."""
CELL_BUDGET = 25.0
"""Seconds of timing per cell after which its rounds stop (at least 3 are run)."""
ATTATTR_BUDGET = 90.0
"""The same for table 8b, whose calls take seconds: with 3 rounds its verdicts flipped from
one run to the next (the order of the calls in a round moved them more than the difference)."""
IG_ATTENTION = "bench_ig"
"""The attention function the Captum IG peer registers: eager, with one layer's weights
replaced by Captum's scaled input."""


class MismatchError(AssertionError):
    """A peer's scores differ from reportgen's: one of them is wrong, and nothing is timed."""


def version(package: str) -> str | None:
    """The installed version of `package`, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- the inputs, as a peer's user holds them -------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Equal-length rows as plain tensors, and where each row's loss reads the logits."""

    ids: Any
    """int64 [B, T]"""
    mask: Any
    positions: list[list[int]]
    targets: list[list[int]]

    def loss(self, logits: Any) -> Any:
        """Per row: −Σ log p(target) at its loss positions (reportgen's objective), [B]."""
        import torch

        logp = torch.log_softmax(logits.float(), dim=-1)
        return -torch.stack(
            [
                logp[b, p, t].sum()
                for b, (p, t) in enumerate(zip(self.positions, self.targets, strict=True))
            ]
        )

    def repeat(self, times: int) -> Batch:
        """Each row `times` times over, in Captum's order (all rows, then all rows again)."""
        return Batch(
            self.ids.repeat(times, 1),
            self.mask.repeat(times, 1),
            self.positions * times,
            self.targets * times,
        )


def batch_of(rows: Sequence[Any]) -> Batch:
    import torch

    assert all(r.target_ids is not None for r in rows), "peers need given targets"
    ids = torch.tensor([r.ids for r in rows])
    return Batch(
        ids,
        torch.ones_like(ids),
        [list(r.loss_positions) for r in rows],
        [list(r.target_ids) for r in rows],
    )


def attention_modules(model: Any) -> list[Any]:
    """Each layer's attention module (its forward returns (output, weights)), in layer order."""
    found = [
        m for m in model.modules() if type(m).__name__ in ("GPT2Attention", "BertSelfAttention")
    ]
    assert found, f"no attention modules known to the benchmark in {type(model).__name__}"
    return found


# --- the compute peers -------------------------------------------------------------------------


def hand_written(model: Any, batch: Batch) -> list[Any]:
    """|A ⊙ ∂L/∂A| per layer [B, H, T, T], as one writes it with transformers and autograd."""
    import torch

    out = model(input_ids=batch.ids, attention_mask=batch.mask, output_attentions=True)
    grads = torch.autograd.grad(batch.loss(out.logits).sum(), out.attentions)
    return [(a.detach() * g).abs() for a, g in zip(out.attentions, grads, strict=True)]


def captum_gxa(model: Any, batch: Batch) -> list[Any]:
    """|A ⊙ ∂L/∂A| per layer from Captum's LayerGradientXActivation on the attention modules'
    weights output, every layer in one forward and backward."""
    from captum.attr import LayerGradientXActivation

    def forward(ids: Any, mask: Any) -> Any:
        return batch.loss(model(input_ids=ids, attention_mask=mask).logits)

    layers = attention_modules(model)
    found = LayerGradientXActivation(forward, layers).attribute(
        batch.ids, additional_forward_args=(batch.mask,)
    )
    return [outputs[1].abs() for outputs in found]


_REPLACED: dict[int, Any] = {}
"""layer index → the attention weights that layer uses instead of its own (the IG peer)."""


def _ig_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """Eager attention, except in the layer Captum scales: there its input is the weights."""
    import torch

    weights = _REPLACED.get(module.layer_idx)
    if weights is None:
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def ig_model(path: Path) -> Any:
    """The model loaded with `_ig_attention` (registered once under IG_ATTENTION)."""
    import torch
    import transformers
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IG_ATTENTION, _ig_attention)
    AttentionMaskInterface.register(IG_ATTENTION, eager_mask)  # additive, causal included
    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, config.architectures[0])
    return cls.from_pretrained(path, attn_implementation=IG_ATTENTION, dtype=torch.float32).eval()


def captum_ig(model: Any, batch: Batch, steps: int, rows_per_pass: int) -> list[Any]:
    """attattr the Captum way: per layer l, IntegratedGradients with layer l's attention weights
    as the input (baseline 0, right Riemann sum: α = k/m, as reportgen), the steps batched
    `rows_per_pass` rows a pass. Signed, [L][B, H, T, T]."""
    import torch
    from captum.attr import IntegratedGradients

    with torch.no_grad():
        base = model(input_ids=batch.ids, attention_mask=batch.mask, output_attentions=True)
    scores = []
    for layer, weights in enumerate(base.attentions):

        def forward(x: Any, ids: Any, mask: Any, layer: int = layer) -> Any:
            _REPLACED[layer] = x
            try:
                logits = model(input_ids=ids, attention_mask=mask).logits
            finally:
                _REPLACED.clear()
            return batch.repeat(len(ids) // len(batch.ids)).loss(logits)

        scores.append(
            IntegratedGradients(forward).attribute(
                weights,
                baselines=torch.zeros_like(weights),
                additional_forward_args=(batch.ids, batch.mask),
                n_steps=steps,
                method="riemann_right",
                internal_batch_size=max(len(batch.ids), rows_per_pass),
            )
        )
    return scores


def difference(ours: Sequence[np.ndarray], peer: Sequence[np.ndarray]) -> float:
    """Largest |peer − reportgen| over every score, relative to the largest |reportgen|."""
    scale = max(float(np.abs(o).max()) for o in ours)
    assert scale > 0, "reportgen's scores are all zero: nothing would be compared"
    return max(float(np.abs(o - p).max()) for o, p in zip(ours, peer, strict=True)) / scale


def per_example(layers: Sequence[Any]) -> list[np.ndarray]:
    """[L][B, H, T, T] tensors as one float32 [L, H, T, T] array per example."""
    import torch

    stacked = torch.stack([x.detach().float() for x in layers], 1).numpy()
    return list(stacked)


# --- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One (model, batch, T) cell of a compute table."""

    label: str
    path: Path
    batch: int
    tokens: int
    steps: int = 0
    """attattr's m (0: attn-grad)."""


def _gpt2(opts: Options, layers: int = 12, heads: int = 12, width: int = 96) -> tuple[str, Path]:
    if opts.quick:
        return "tiny GPT-2 2×2", fixtures.gpt2(opts.work / "gpt2-tiny", 2, 2, 16, 64)
    name = f"gpt2-{layers}x{heads}-{width}"
    label = (
        "demo-shaped GPT-2 (random, 512 positions)"
        if (layers, heads, width) == (12, 12, 96)
        else f"GPT-2 {layers}×{heads}, width {width} (random)"
    )
    return label, fixtures.gpt2(opts.work / name, layers, heads, width, 512)


def _bert(opts: Options, positions: int = 512) -> tuple[str, Path]:
    if opts.quick:
        return "tiny BERT 2×2", fixtures.bert(opts.work / "bert-tiny", 2, 2, 32, 300, 64)
    return "BERT-base shape (random)", fixtures.bert(
        opts.work / f"bert-base-{positions}", positions=positions
    )


def attn_grad_cases(opts: Options) -> list[Case]:
    if opts.quick:
        return [Case(*_gpt2(opts), 2, 16), Case(*_bert(opts), 2, 16)]
    gpt, bert = _gpt2(opts), _bert(opts)
    cells = [(1, 128), (8, 128), (1, 512), (8, 512)]
    return [Case(*gpt, b, t) for b, t in cells] + [Case(*bert, b, t) for b, t in cells[:3]]


def attattr_cases(opts: Options) -> list[Case]:
    if opts.quick:
        return [Case(*_gpt2(opts), 2, 16, steps=3)]
    # A smaller model than 8a's: each (layer, step) is a pass row, 12 × 20 = 240 rows per input
    # on the demo shape, too long for a run of a few minutes on 2 cores.
    small = _gpt2(opts, 4, 4, 64)
    return [Case(*small, b, t, 20) for b, t in [(1, 128), (8, 128), (1, 512), (8, 512)]]


def _rows(lm: Any, tokens: int, batch: int) -> list[Any]:
    from reportgen.engine.encoding import encode
    from reportgen.inputs import examples_from_items

    make = fixtures.causal_input if lm.task.value == "causal-lm" else fixtures.masked_input
    rows = [
        encode(ex, lm, None, False)
        for ex in examples_from_items(make(tokens, s) for s in range(batch))
    ]
    assert all(len(r.ids) == tokens for r in rows), "inputs of the wrong length"
    return rows


def _plain(path: Path, impl: str) -> Any:
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, config.architectures[0])
    return cls.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).eval()


def _rows_per_pass(lm: Any, settings: Any, tokens: int) -> int:
    """attattr's rows per pass as reportgen plans them (Captum's IG is given as many, up to
    `CAPTUM_COPIES` of its eager weights a row within the same memory budget)."""
    from reportgen.engine.runner import MemoryPlan

    plan = MemoryPlan.of(lm, settings)
    ours = max(1, min(settings.batch_size * settings.steps, plan.rows(tokens)))
    weights = lm.num_layers * lm.num_heads * tokens * tokens * 4
    return max(1, min(ours, plan.budget // (CAPTUM_COPIES * weights)))


CAPTUM_COPIES = 32
"""Copies of every layer's float32 T × T weights one of Captum IG's rows may hold (the eager
weights, scores, their gradients and IG's expanded inputs): as many rows as reportgen's (160 at
batch 8, T 512, the 4 × 4 model) passed 24 GiB and were killed; 32 cap it at 20 there (the
table-8b run then peaked near 23 GiB used on the machine) and leave every other cell of 8b as
it was."""


class Peers:
    """The loaded models of one checkpoint: reportgen's, and plain eager, SDPA and IG ones."""

    def __init__(self, path: Path) -> None:
        from reportgen.engine import load_model

        self.path = path
        self.lm = load_model(path, device="cpu")
        self.sdpa = _plain(path, "sdpa")
        self.eager = _plain(path, "eager")
        self._ig: Any = None

    @property
    def ig(self) -> Any:
        if self._ig is None:
            self._ig = ig_model(self.path)
        return self._ig

    def forward(self, batch: Batch) -> Callable[[], object]:
        import torch

        def run() -> None:
            with torch.inference_mode():
                self.sdpa(input_ids=batch.ids, attention_mask=batch.mask)

        return run


def _candidates(
    peers: Peers, case: Case, rows: list[Any], batch: Batch
) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """(name → call, timed with reportgen's default settings; name → max rel. difference of its
    dense scores from reportgen's, checked first). Raises MismatchError."""
    from reportgen.engine import compute_batch
    from reportgen.settings import Settings

    lm = peers.lm
    method = "attattr" if case.steps else "attn-grad"
    settings = Settings(method=method, steps=case.steps or 20, batch_size=max(8, case.batch))
    ours = [
        r.dense for r in compute_batch(lm, rows, replace(settings, store="dense"), ablate=False)
    ]
    calls: dict[str, Callable[[], object]] = {
        "reportgen": lambda: compute_batch(lm, rows, settings, ablate=False)
    }
    if case.steps:
        rows_per_pass = _rows_per_pass(lm, settings, case.tokens)
        peer_calls = {
            "Captum IG": lambda: captum_ig(peers.ig, batch, case.steps, rows_per_pass),
        }
    else:
        peer_calls = {
            "hand-written": lambda: hand_written(peers.eager, batch),
            "Captum GxA": lambda: captum_gxa(peers.eager, batch),
        }
    diffs: dict[str, str] = {}
    for name, call in peer_calls.items():
        if name.startswith("Captum") and version("captum") is None:
            diffs[name] = "not installed"
            continue
        diff = difference(ours, per_example(call()))  # type: ignore[arg-type]
        if diff > TOLERANCE:
            raise MismatchError(
                f"{name} differs from reportgen's {method} by {diff:.2e} (relative) on "
                f"{case.label}, batch {case.batch}, T {case.tokens}"
            )
        diffs[name] = f"{diff:.1e}"
        calls[name] = call
    return calls, diffs


def compute_table(opts: Options, attattr: bool) -> Table:
    import torch

    cases = attattr_cases(opts) if attattr else attn_grad_cases(opts)
    names = ["Captum IG"] if attattr else ["hand-written", "Captum GxA"]
    what = (
        "attattr (integrated gradients on attention, signed A ⊙ mean_k ∂L/∂A at α_k A)"
        if attattr
        else "attn-grad (|A ⊙ ∂L/∂A|)"
    )
    table = Table(
        f"8{'b' if attattr else 'a'}. Peers: {what}, every head's T × T, ÷ SDPA forward",
        [
            "model",
            "batch",
            "T",
            *(["m"] if attattr else []),
            "SDPA forward (ms)",
            "reportgen",
            *names,
            "max rel. difference",
            "best peer ÷ reportgen",
            "met",
        ],
    )
    loaded: dict[Path, Peers] = {}
    for case in cases:
        if case.path not in loaded:
            loaded.clear()
            loaded[case.path] = Peers(case.path)
        peers = loaded[case.path]
        opts.log(f"peers: {what.split()[0]}, {case.label}, batch {case.batch}, T {case.tokens}")
        rows = _rows(peers.lm, case.tokens, case.batch)
        batch = batch_of(rows)
        calls, diffs = _candidates(peers, case, rows, batch)
        # The equality check above was every candidate's warm-up (but the forward's).
        peers.forward(batch)()
        times = interleaved(
            {"sdpa": peers.forward(batch), **calls},
            opts.reps,
            warmup=0,
            budget=ATTATTR_BUDGET if attattr else CELL_BUDGET,
        )
        timed = [n for n in names if n in times]
        best = min((paired_ratio(times[n], times["reportgen"]) for n in timed), default=None)

        def ratio(
            name: str, times: dict[str, list[float]] = times, diffs: dict[str, str] = diffs
        ) -> str:
            if name not in times:
                return diffs.get(name, "")
            return f"{paired_ratio(times[name], times['sdpa']):.2f}×"

        table.add(
            case.label,
            case.batch,
            case.tokens,
            *([case.steps] if attattr else []),
            ms(median(times["sdpa"])),
            ratio("reportgen"),
            *(ratio(n) for n in names),
            "; ".join(f"{n} {d}" for n, d in diffs.items()),
            f"{best:.2f}×" if best is not None else "",
            verdict(best, 1.0, at_most=False, quick=opts.quick) if best is not None else "",
        )
        del times
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    table.notes += [
        "One process, torch threads as set (`--threads`; 1 for the recorded run), candidates "
        f"interleaved round by round; medians over {opts.reps} rounds (at least 3 where a cell "
        f"passes {ATTATTR_BUDGET if attattr else CELL_BUDGET:.0f} s; the equality check is the "
        "warm-up) of each ÷ the SDPA "
        "forward timed in the same round. "
        "Best peer ÷ reportgen: the fastest peer's paired ratio; met when above 1 (reportgen "
        "faster).",
        "Before timing, each peer's scores are compared with reportgen's `--store dense` scores "
        f"(every cell of every head; a difference above {TOLERANCE:g} of the largest |score| "
        "fails the run). reportgen is timed with its default settings (exact per-head "
        "reductions and each head's top-k cells; the T × T scores are formed in tiles).",
    ]
    if attattr:
        table.notes.append(
            "Captum IG: per layer, `IntegratedGradients` with that layer's attention weights as "
            "its input (baseline 0, `riemann_right`: α = k/m as reportgen), the model's other "
            "layers eager; its steps run as many rows a pass as reportgen's "
            "(`internal_batch_size`), up to what 32 copies of a row's weights allow in the same "
            "memory budget (`CAPTUM_COPIES`: at batch 8, T 512 as many as reportgen's, 160, "
            "passed 24 GiB)."
        )
    else:
        table.notes.append(
            "Hand-written: `output_attentions=True` on the eager model, `torch.autograd.grad` of "
            "the loss to every layer's attention. Captum GxA: `LayerGradientXActivation` on every "
            "attention module (its second output, the attention probabilities), one call. Both "
            "score all positions' logits, as their users' code does."
        )
    return table


# --- peak memory, one case per fresh process ---------------------------------------------------


def _worker(case: dict[str, Any]) -> dict[str, Any]:
    """Load one candidate's model, then run it once: its peak resident memory over the loaded
    model (bytes) and its seconds."""
    import torch

    from benchmarks import scale
    from reportgen.engine import compute_batch, load_model
    from reportgen.settings import Settings

    torch.set_num_threads(case["threads"] or torch.get_num_threads())
    path, kind, steps = Path(case["path"]), case["kind"], case["steps"]
    lm = load_model(path, device="cpu")
    rows = _rows(lm, case["tokens"], case["batch"])
    batch = batch_of(rows)
    settings = Settings(method="attattr" if steps else "attn-grad", steps=steps or 20)
    rows_per_pass = _rows_per_pass(lm, settings, case["tokens"])
    run: Callable[[], object]
    if kind.startswith("Captum"):
        import captum.attr  # noqa: F401  (its import is not the computation's memory)
    if kind == "reportgen":
        run = lambda: compute_batch(lm, rows, settings, ablate=False)  # noqa: E731
    else:
        del lm  # only the peer's own model is measured
        model = ig_model(path) if kind == "Captum IG" else _plain(path, "eager")
        run = {
            "hand-written": lambda: hand_written(model, batch),
            "Captum GxA": lambda: captum_gxa(model, batch),
            "Captum IG": lambda: captum_ig(model, batch, steps, rows_per_pass),
        }[kind]
    before = scale._rss()
    scale._reset_peak()
    start = time.perf_counter()
    run()
    return {"peak": scale._peak() - before, "seconds": time.perf_counter() - start}


def memory_table(opts: Options) -> Table:
    table = Table(
        "8c. Peers: peak memory over the loaded model, batch 1, fresh processes (MiB)",
        [
            "work",
            "model",
            "T",
            "reportgen",
            "hand-written",
            "Captum",
            "best peer ÷ reportgen",
            "met",
        ],
    )
    if opts.quick:
        bert, gpt = _bert(opts), _gpt2(opts)
        cases = [(bert, 32, 0), (gpt, 16, 3)]
    else:
        cases = [(_bert(opts, 1024), 512, 0), (_bert(opts, 1024), 1024, 0)]
        cases.append((_gpt2(opts, 4, 4, 64), 512, 20))
    for (label, path), tokens, steps in cases:
        peers = ["Captum IG"] if steps else ["hand-written", "Captum GxA"]
        found: dict[str, dict[str, Any] | str] = {}
        for kind in ["reportgen", *peers]:
            if kind.startswith("Captum") and version("captum") is None:
                found[kind] = "not installed"
                continue
            opts.log(f"peers/memory: {kind}, {label}, T {tokens}")
            case = {"path": str(path), "tokens": tokens, "batch": 1, "steps": steps}
            found[kind] = in_fresh_process(
                "benchmarks.peers", {**case, "kind": kind, "threads": opts.threads}, timeout=1800
            )

        def cell(kind: str, found: dict[str, dict[str, Any] | str] = found) -> str:
            got = found.get(kind)
            if got is None:
                return "(no such peer)"
            return got if isinstance(got, str) else f"{got['peak'] / 2**20:.0f}"

        ours = found["reportgen"]
        peaks = [g["peak"] for k, g in found.items() if k != "reportgen" and isinstance(g, dict)]
        ratio = min(peaks) / max(1, ours["peak"]) if peaks and isinstance(ours, dict) else None
        table.add(
            f"attattr (m = {steps})" if steps else "attn-grad",
            label,
            tokens,
            cell("reportgen"),
            cell("hand-written"),
            cell("Captum IG" if steps else "Captum GxA"),
            f"{ratio:.2f}×" if ratio is not None else "",
            verdict(ratio, 1.0, at_most=False, quick=opts.quick) if ratio is not None else "",
        )
    table.notes += [
        "Peak resident memory (VmHWM) of a fresh process over its resident size after loading "
        "its model (reportgen's loaded model, or the peer's eager one); glibc's default "
        "allocator, torch threads as set. Met: reportgen's peak at or below the best peer's.",
        "reportgen with default settings; attattr's Captum IG runs as many rows a pass as "
        "reportgen plans (`internal_batch_size`).",
    ]
    return table


# --- pages ---------------------------------------------------------------------------------------

NPM = {
    # URL a bertviz page fetches → (npm package, file in its tarball). jQuery 2.0.0, which
    # bertviz names, was never published to npm: 2.1.0 is its nearest release there.
    "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js": (
        "requirejs@2.3.6",
        "package/require.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/d3/5.7.0/d3.min.js": (
        "d3@5.7.0",
        "package/dist/d3.min.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/jquery/2.0.0/jquery.min.js": (
        "jquery@2.1.0",
        "package/dist/jquery.min.js",
    ),
}
NPM_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reportgen-bench-npm"
PAGE_TIMEOUT_S = 90.0
"""A peer page not drawn after this long is reported as slower than it."""
OFFLINE_WAIT_S = 10.0
PAGE_TARGET = 10.0
"""reportgen's first render at least this many times faster than every peer's."""
DRAWN_JS = """
(id) => { const root = document.getElementById(id);
  return !!root && root.querySelectorAll("svg *, canvas, td").length > 0; }
"""


def npm_files() -> dict[str, bytes] | str:
    """URL → bytes of the files bertviz's page fetches from CDNs, from `npm pack` tarballs
    (cached); or why they are missing."""
    import tarfile

    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    found = {}
    for url, (spec, member) in NPM.items():
        name, ver = spec.rsplit("@", 1)
        tarball = NPM_CACHE / f"{name}-{ver}.tgz"
        if not tarball.is_file():
            done = subprocess.run(
                ["npm", "pack", spec, "--silent", "--pack-destination", str(NPM_CACHE)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode != 0 or not tarball.is_file():
                return f"npm pack {spec} failed: {(done.stderr.strip() or '?').splitlines()[-1]}"
        with tarfile.open(tarball) as tar:
            member_file = tar.extractfile(member)
            assert member_file is not None, f"no {member} in {tarball}"
            found[url] = member_file.read()
    return found


def _peer_pages(opts: Options, model: Path, items: list[dict[str, Any]]) -> dict[str, Path]:
    """bertviz and CircuitsVis pages of layer 0's attention for each item, as files."""
    import torch

    from reportgen.engine import load_model
    from reportgen.engine.encoding import encode
    from reportgen.inputs import examples_from_items

    lm = load_model(model, device="cpu")
    eager = _plain(model, "eager")
    out: dict[str, Path] = {}
    for row in [encode(e, lm, None, False) for e in examples_from_items(items)]:
        ids = torch.tensor([row.ids])
        with torch.no_grad():
            attention = eager(input_ids=ids, output_attentions=True).attentions
        tokens = [lm.tokenizer.convert_ids_to_tokens(i) for i in row.ids]
        tokens_n = len(tokens)
        if version("bertviz") is not None:
            from bertviz import head_view

            html = head_view(attention, tokens, include_layers=[0], html_action="return").data  # type: ignore[union-attr]
            path = opts.work / f"bertviz-{tokens_n}.html"
            path.write_text(f"<!doctype html><html><body>{html}</body></html>", "utf-8")
            out[f"bertviz:{tokens_n}"] = path
        if version("circuitsvis") is not None:
            from circuitsvis.attention import attention_patterns

            rendered = attention_patterns(tokens=tokens, attention=attention[0][0])
            for kind, src in (("cdn", rendered.cdn_src), ("local", rendered.local_src)):
                path = opts.work / f"circuitsvis-{kind}-{tokens_n}.html"
                path.write_text(f"<!doctype html><html><body>{src}</body></html>", "utf-8")
                out[f"circuitsvis-{kind}:{tokens_n}"] = path
    return out


def _root_id(path: Path) -> str:
    """The id of the element a peer page draws into (bertviz's vis id, CircuitsVis's uuid)."""
    import re

    text = path.read_text("utf-8")
    found = re.search(r'"root_div_id": "([^"]+)"', text) or re.search(
        r'<div id="(circuits-vis-[^"]+)"', text
    )
    assert found, f"no root element id in {path}"
    return found.group(1)


def _load_peer(
    page: Any,
    path: Path,
    files: dict[str, bytes] | None,
    wait: float,
    requested: list[str] | None = None,
) -> float | None:
    """ms from navigation start until the page drew into its root element (None: not within
    `wait` seconds). `files`: URL → body served for the page's CDN requests; every other
    request (and every request, with None) is refused and noted in `requested`."""
    requested = [] if requested is None else requested

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
            return
        body = (files or {}).get(url)
        if body is None:
            requested.append(url)
            route.abort()
        else:
            route.fulfill(status=200, body=body, content_type="application/javascript")

    page.unroute("**/*")
    page.route("**/*", handle)
    try:
        # Not "load": a module script whose import is refused may hold that event off.
        page.goto(path.as_uri(), timeout=wait * 1000, wait_until="commit")
        page.wait_for_function(DRAWN_JS, arg=_root_id(path), timeout=wait * 1000, polling=50)
    except Exception:
        return None
    return float(page.evaluate("performance.now()"))


def pages_table(opts: Options) -> Table:
    from benchmarks import browser

    lengths = (16,) if opts.quick else (128, 512)
    table = Table(
        "8d. Peers: attention pages in headless Chromium, first render",
        ["page", "shows", "T", "bytes", "first render (ms)", "offline", "peer ÷ reportgen", "met"],
    )
    site = opts.work / "pages-site" / "examples"
    built = {t: sorted(site.glob(f"*-t{t}.html")) for t in lengths} if site.is_dir() else {}
    if built and all(built.values()):  # benchmark 3 built them in this run
        pages = {t: found[0] for t, found in built.items()}
    else:
        pages = browser._pages(opts, lengths)
    items = [fixtures.causal_input(t, seed=t, ident=f"t{t}") for t in lengths]
    width = 24 if opts.quick else 48
    model = opts.work / f"gpt2-pages-{width}"
    peer = _peer_pages(opts, model, items)
    files = npm_files() if version("bertviz") is not None else {}
    ours: dict[int, float] = {}
    with browser._chromium() as chromium:
        page = chromium.new_page(viewport=browser.VIEWPORT)
        page.add_init_script(browser.PROBE_JS)
        for tokens, path in pages.items():
            session = browser._Session(page, path.as_uri())
            ours[tokens] = median([session.load() for _ in range(1 if opts.quick else 3)])
            table.add(
                "reportgen example page",
                f"{browser.HEADS} × {browser.HEADS} heads' saliency, linked",
                tokens,
                f"{path.stat().st_size:,}",
                f"{ours[tokens]:.0f}",
                "works (file://, no requests)",
                "",
                "",
            )
        for name, shows in (
            ("bertviz", "bertviz `head_view`, layer 0's attention, 12 heads"),
            ("circuitsvis-cdn", "CircuitsVis `attention_patterns` as saved (`str`), layer 0"),
            ("circuitsvis-local", "CircuitsVis `attention_patterns`, bundle inlined, layer 0"),
        ):
            for tokens in lengths:
                path = peer.get(f"{name}:{tokens}")
                if path is None:
                    table.add(name, shows, tokens, "not installed", "", "", "", "")
                    continue
                opts.log(f"peers/pages: {name}, T {tokens}")
                refused: list[str] = []
                served = None
                if name == "circuitsvis-local":  # needs no network: its offline load is timed
                    took = _load_peer(page, path, None, PAGE_TIMEOUT_S, refused)
                    offline = took is not None
                else:
                    offline = _load_peer(page, path, None, OFFLINE_WAIT_S, refused) is not None
                    served = files if name == "bertviz" and isinstance(files, dict) else None
                    # CircuitsVis's saved page imports its bundle from unpkg.com/circuitsvis,
                    # which is not on the npm registry reachable here: not timed.
                    took = (
                        None if served is None else _load_peer(page, path, served, PAGE_TIMEOUT_S)
                    )
                judged = served is not None or name == "circuitsvis-local"
                cell = f"{took:.0f}" if took is not None else f"> {PAGE_TIMEOUT_S * 1000:.0f}"
                if not judged:
                    cell = "not timed: its bundle is not on the npm registry"
                ratio = (took if took is not None else PAGE_TIMEOUT_S * 1000) / ours[tokens]
                hosts = sorted({u.split("/")[2] for u in refused if "://" in u})
                works = "works" if offline else f"does not render ({', '.join(hosts)} refused)"
                table.add(
                    name,
                    shows,
                    tokens,
                    f"{path.stat().st_size:,}",
                    cell,
                    works,
                    (f"{ratio:.0f}×" if took is not None else f"> {ratio:.0f}×") if judged else "",
                    verdict(ratio, PAGE_TARGET, at_most=False, quick=opts.quick) if judged else "",
                )
    table.notes += [
        "First render: ms from navigation start until the page has drawn (reportgen: "
        "`window.reportgen.ready`, median of 3 loads; a peer: its root element holds SVG, "
        f"canvas or table cells, one load, stopped after {PAGE_TIMEOUT_S:.0f} s). Met: the peer "
        f"at least {PAGE_TARGET:.0f}× slower. Same random 12 × 12-head GPT-2 and inputs as "
        "benchmark 3; the peers show one layer's attention weights (all layers would be 12× the "
        "data).",
        "Offline: loaded with every network request refused. bertviz's page fetches require.js "
        "2.3.6, d3 5.7.0 and jQuery 2.0.0 from cdnjs; for the timing they are served from "
        "`npm pack` copies (jQuery 2.1.0: 2.0.0 is not on npm). CircuitsVis's saved HTML "
        "imports its bundle from unpkg.com/circuitsvis, which is not on the npm registry: its "
        "`local_src` (the pip package's bundle inlined, what a notebook shows offline) is "
        "timed instead.",
    ]
    return table


# --- inseq ---------------------------------------------------------------------------------------


def _inseq_rows(opts: Options) -> list[Case]:
    if opts.quick:
        return [Case(*_gpt2(opts), 2, 16)]
    gpt = _gpt2(opts)
    return [Case(*gpt, 1, 128), Case(*gpt, 8, 128), Case(*gpt, 1, 512)]


def inseq_table(opts: Options) -> Table:
    """inseq's `attention` and `saliency` methods (what it attributes: the target token's step,
    token-level) against reportgen's `attention` and `attn-grad`."""
    table = Table(
        "8e. Peers: inseq (token-level outputs), ÷ SDPA forward",
        [
            "model",
            "batch",
            "T",
            "SDPA forward (ms)",
            "work",
            "reportgen",
            "inseq",
            "outputs",
            "max rel. difference",
            "inseq ÷ reportgen",
            "met",
        ],
    )
    installed = version("inseq")
    if installed is None:
        table.add("", "", "", "", "", "", "not installed", "", "", "", "")
        return table
    from reportgen.engine import compute_batch
    from reportgen.settings import Settings

    loaded: dict[Path, Any] = {}
    for case in _inseq_rows(opts):
        if case.path not in loaded:
            import inseq

            peers = Peers(case.path)
            tok = peers.lm.tokenizer
            # inseq's attention method needs the weights, which only eager attention returns.
            models = {
                m: inseq.load_model(peers.eager, m, tokenizer=tok)
                for m in ("attention", "saliency")
            }
            loaded = {case.path: (peers, models)}
        peers, models = loaded[case.path]
        rows = _rows(peers.lm, case.tokens, case.batch)
        batch = batch_of(rows)
        texts = [peers.lm.tokenizer.decode(r.ids) for r in rows]
        full = [
            peers.lm.tokenizer.decode([*r.ids, *r.target_ids])
            for r in rows  # type: ignore[misc]
        ]

        def attribute(
            method: str, texts: list[str] = texts, full: list[str] = full, models: Any = models
        ) -> Any:
            return models[method].attribute(texts, full, show_progress=False, batch_size=len(texts))

        opts.log(f"peers/inseq: {case.label}, batch {case.batch}, T {case.tokens}")
        # inseq's attention: each head's weights from the position predicting the target.
        found = attribute("attention")
        ours = compute_batch(
            peers.lm, rows, Settings(method="attention", store="dense"), ablate=False
        )
        diffs = []
        for seq, res, row in zip(found.sequence_attributions, ours, rows, strict=True):
            theirs = (
                seq.target_attributions
                if seq.source_attributions is None
                else (seq.source_attributions)
            )
            got = theirs[: len(row.ids), 0].permute(1, 2, 0).float().numpy()  # [L, H, T]
            want = res.dense[:, :, row.loss_positions[0], :]  # type: ignore[index]
            diffs.append(float(np.abs(got - want).max() / np.abs(want).max()))
        diff = max(diffs)
        if diff > TOLERANCE:
            raise MismatchError(f"inseq attention differs from reportgen's by {diff:.2e}")
        attribute("saliency")
        for work, method, outputs, compared in (
            (
                "attention",
                "attention",
                "each head's attention row at the prediction position (T per head)",
                f"{diff:.1e}",
            ),
            (
                "saliency vs attn-grad",
                "saliency",
                "∂L/∂embedding of each input token, target step (T × d); reportgen: T × T per head",
                "not comparable",
            ),
        ):
            settings = Settings(method="attention" if method == "attention" else "attn-grad")
            calls = {
                "sdpa": peers.forward(batch),
                "reportgen": lambda s=settings, lm=peers.lm, rows=rows: compute_batch(
                    lm, rows, s, ablate=False
                ),
                "inseq": lambda m=method: attribute(m),
            }
            times = interleaved(calls, opts.reps, budget=CELL_BUDGET)
            ratio = paired_ratio(times["inseq"], times["reportgen"])
            table.add(
                case.label,
                case.batch,
                case.tokens,
                ms(median(times["sdpa"])),
                work,
                f"{paired_ratio(times['reportgen'], times['sdpa']):.2f}×",
                f"{paired_ratio(times['inseq'], times['sdpa']):.2f}×",
                outputs,
                compared,
                f"{ratio:.2f}×",
                verdict(ratio, 1.0, at_most=False, quick=opts.quick),
            )
    table.notes += [
        f"inseq {installed} installs beside transformers {version('transformers')} and runs "
        "here; its `attention` method needs an eager model (with SDPA, transformers 5 returns "
        "no weights and inseq fails: `stack expects a non-empty TensorList`). It attributes the "
        "generated target token only: one row of each head's attention (checked equal to "
        "reportgen's row at the prediction position), or the gradient at each input token's "
        "embedding (saliency: a different quantity from attn-grad, so only timed). inseq runs "
        "decoder-only models one input at a time (it says so: batched constrained decoding is "
        "not supported).",
        "Timing as in 8a (one warm-up each, interleaved, medians); reportgen with default "
        "settings (`--method attention`, or attn-grad).",
    ]
    return table


def run(opts: Options) -> list[Table]:
    return [
        compute_table(opts, attattr=False),
        compute_table(opts, attattr=True),
        memory_table(opts),
        pages_table(opts),
        inseq_table(opts),
    ]


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
