"""The architecture matrix: every family of tests/architectures.py through reportgen in float64,
three inputs of different lengths in one padded batch, checked against an independent oracle.

(a) loss: reportgen's objective equals the same objective from a plain transformers forward
    (the model's default attention, unpadded, one input at a time);
(b) method: attention, attn-grad and attattr scores equal the oracle's, computed from an eager
    model's output_attentions with torch.autograd (attattr by scaling one layer's attention);
    reportgen computes with --store dense to give every cell, and its stored reductions and
    top cells (what a default run keeps) must be those of that dense S;
(c) batch: a batch of 8 gives the scores, values, targets and ablation of one input at a time;
(d) the later methods: rollout and grad-rollout equal their definitions, attn-norm equals
    A · ‖v W_O^h‖ or is refused naming the attention class, and attribution patching equals
    head gates in the family's own eager attention (zero baseline) and head outputs replaced
    there (mean and counterfactual baselines; a bare encoder refuses the rollouts and patching
    by name).

Bare encoders run both ways reportgen reads two segments: as one sequence (joint) and each on
its own (separate, a bi-encoder; the oracle runs the two sequences and joins their blocks).

Families reportgen may refuse must either pass all of it or fail to load with a ReportgenError
that says plainly the architecture is not supported; token classification and encoder-decoder
models must be refused with a clear error."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from architectures import (
    EXACT_OR_UNSUPPORTED,
    FAMILIES,
    REFUSED,
    Family,
    build,
    case_for,
    counterfactual_text,
    edited_head_outputs,
    inputs_for,
    load_plain,
    oracle_attattr,
    oracle_attention,
    oracle_attn_grad,
    plain_loss,
    relative_difference,
    scaled_attention,
    with_counterfactuals,
)
from architectures import _attentions as plain_attentions
from synthetic import assert_stats_match_dense

from reportgen.engine import compute, load_model
from reportgen.engine.norms import SUPPORTED_CLASSES
from reportgen.errors import ModelError, ReportgenError, SaliencyError
from reportgen.inputs import examples_from_items
from reportgen.settings import Settings

pytestmark = pytest.mark.e2e

STEPS = 4
TOLERANCE = 1e-6
"""Scores: max |reportgen − oracle| / max |oracle| (reportgen stores float32)."""
LOSS_TOLERANCE = 1e-9
LOSS_TOLERANCE_SOFTMAX32 = 1e-6
"""Against a float64 SDPA forward, a family whose eager softmax runs in float32 (Llama's and
most since) differs at rounding level of float32."""
METHODS = ("attention", "attn-grad", "attattr")
ONE_AT_A_TIME = {"llama-cls"}
"""Classifiers without a pad token: transformers pools no batch above one, and reportgen says
so up front (test_a_classifier_without_a_pad_token_asks_for_batches_of_one)."""


def settings(family: Family, **changes: Any) -> Settings:
    base: dict[str, Any] = dict(
        batch_size=1 if family.name in ONE_AT_A_TIME else 8,
        dtype="float64",
        device="cpu",
        steps=STEPS,
        ablate_k=0,
        store="dense",  # every cell, to compare with the oracle's
    )
    # How a bare encoder reads its two segments, where reportgen has the option (the objective
    # the oracle computes for the family).
    if "pairing" in {f.name for f in dataclasses.fields(Settings)}:
        base["pairing"] = family.pairing
    return Settings(**{**base, **changes})


class Zoo:
    """Every family built, loaded and computed at most once per session (errors included)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[Any, ...], Any] = {}

    def _once(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = ("ok", make())
            except Exception as err:
                self._cache[key] = ("error", err)
        kind, value = self._cache[key]
        if kind == "error":
            raise value
        return value

    def folder(self, family: Family) -> Path:
        return self._once(("folder", family.name), lambda: build(family, self.root / family.name))

    def reportgen(self, family: Family) -> Any:
        return self._once(
            ("reportgen", family.name),
            lambda: load_model(self.folder(family), device="cpu", dtype="float64"),
        )

    def results(self, family: Family, counterfactuals: bool = False, **changes: Any) -> list[Any]:
        """reportgen's results for the family's inputs (`with_counterfactuals`' if asked)."""
        key = ("results", family.name, counterfactuals, *sorted(changes.items()))

        def run() -> list[Any]:
            lm = self.reportgen(family)
            items = with_counterfactuals(family) if counterfactuals else inputs_for(family)
            examples = examples_from_items(items)
            # One run either way (batch_size=1: one input per pass): mean ablation replaces a
            # head's output by its mean over the run's inputs, which a run of one input changes.
            return list(compute(examples, lm, settings(family, **changes)))

        return self._once(key, run)

    def plain(self, family: Family, attention: str | None) -> tuple[Any, list[Any]]:
        """(model, oracle cases) with plain transformers: default attention or eager."""

        def make() -> tuple[Any, list[Any]]:
            from transformers import AutoTokenizer

            folder = self.folder(family)
            model = load_plain(family, folder, attention)
            tok = AutoTokenizer.from_pretrained(folder)
            return model, [case_for(family, item, tok, model) for item in inputs_for(family)]

        return self._once(("plain", family.name, attention), make)

    def counterfactual_cases(self, family: Family) -> list[Any]:
        """The oracle's cases of `with_counterfactuals`' counterfactual texts (eager model)."""

        def make() -> list[Any]:
            from transformers import AutoTokenizer

            model, _ = self.plain(family, "eager")
            tok = AutoTokenizer.from_pretrained(self.folder(family))
            twins = [
                {
                    "text": counterfactual_text(item),
                    **{k: item[k] for k in ("target", "label") if k in item},
                }
                for item in with_counterfactuals(family)
            ]
            return [case_for(family, twin, tok, model) for twin in twins]

        return self._once(("counterfactual cases", family.name), make)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    # Tiny models: a second thread only adds synchronisation (5-20x slower on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Zoo(tmp_path_factory.mktemp("architectures"))
    finally:
        torch.set_num_threads(threads)


def reportgen_results(zoo: Zoo, family: Family, **changes: Any) -> list[Any] | None:
    """reportgen's results, or None where the family may be, and is, refused as unsupported."""
    try:
        return zoo.results(family, **changes)
    except ReportgenError as err:
        if family.expect == EXACT_OR_UNSUPPORTED and "not supported" in str(err).lower():
            return None
        raise


def failures(diffs: dict[str, float], tolerance: float) -> str:
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    return ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_loss_matches_a_plain_transformers_forward(zoo, name):
    family = FAMILIES[name]
    results = reportgen_results(zoo, family)
    if results is None:
        return
    model, cases = zoo.plain(family, None)
    tolerance = LOSS_TOLERANCE_SOFTMAX32 if family.softmax32 else LOSS_TOLERANCE
    diffs = {}
    for item, case, result in zip(inputs_for(family), cases, results, strict=True):
        want = plain_loss(model, case)
        diffs[item["id"]] = abs(result.loss - want) / max(abs(want), 1e-12)
    assert not failures(diffs, tolerance), f"relative loss error: {failures(diffs, tolerance)}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_method_matches_the_oracle(zoo, name, method):
    family = FAMILIES[name]
    results = reportgen_results(zoo, family, method=method)
    if results is None:
        return
    model, cases = zoo.plain(family, "eager")
    oracle = {
        "attention": oracle_attention,
        "attn-grad": oracle_attn_grad,
        "attattr": lambda m, c: oracle_attattr(m, c, STEPS),
    }[method]
    diffs = {}
    for item, case, result in zip(inputs_for(family), cases, results, strict=True):
        diffs[item["id"]] = relative_difference(result.dense, oracle(model, case))
        assert_stats_match_dense(
            result.stats, result.dense, result.spans, result.prediction_position
        )
    assert not failures(diffs, TOLERANCE), f"max relative difference: {failures(diffs, TOLERANCE)}"


@pytest.mark.parametrize("method", ["attn-grad", "attattr"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_tiled_engine_equals_the_eager_engine(zoo, name, method):
    """The default engine (attention recomputed in tiles from the head outputs' gradient) and
    the eager one (every layer's attention kept with its autograd gradient) give the same
    scores and stored reductions on every family."""
    family = FAMILIES[name]
    tiled = reportgen_results(zoo, family, method=method)
    if tiled is None:
        return
    eager = zoo.results(family, method=method, engine="eager")
    diffs = {}
    for a, b in zip(tiled, eager, strict=True):
        pairs = [(a.dense, b.dense), (a.stats.total, b.stats.total), (a.stats.flow, b.stats.flow)]
        diffs[a.example.id] = max(relative_difference(x, y) for x, y in pairs if y.size)
        assert a.tokens == b.tokens and a.target == b.target
    assert not failures(diffs, TOLERANCE), f"tiled vs eager: {failures(diffs, TOLERANCE)}"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_padded_batch_equals_one_at_a_time(zoo, name):
    family = FAMILIES[name]
    alone = reportgen_results(zoo, family, ablate_k=3, batch_size=1)
    if alone is None:
        return
    together = reportgen_results(zoo, family, ablate_k=3)
    assert together is not None
    # Different batch shapes round differently; a float32 softmax shows it at ~1e-8.
    tol = LOSS_TOLERANCE_SOFTMAX32 if family.softmax32 else LOSS_TOLERANCE

    def close(x: float, y: float) -> bool:
        return abs(x - y) <= tol * max(abs(y), 1e-12)

    problems = []
    for item, a, b in zip(inputs_for(family), together, alone, strict=True):
        where = item["id"]
        diff = relative_difference(a.dense, b.dense)
        if not diff <= TOLERANCE:
            problems.append(f"{where}: scores differ by {diff:.3g}")
        diff = relative_difference(a.stats.total, b.stats.total)
        if not diff <= TOLERANCE:
            problems.append(f"{where}: head totals differ by {diff:.3g}")
        if not close(a.value, b.value):
            problems.append(f"{where}: value {a.value:.6g} in the batch, {b.value:.6g} alone")
        if (a.target, a.predicted) != (b.target, b.predicted):
            problems.append(f"{where}: target, prediction {a.target}, {a.predicted} in the batch")
        if a.ablation and b.ablation and not close(a.ablation.value_top, b.ablation.value_top):
            problems.append(f"{where}: ablation {a.ablation} in the batch, {b.ablation} alone")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("name", sorted(ONE_AT_A_TIME))
def test_a_classifier_without_a_pad_token_asks_for_batches_of_one(zoo, name):
    from reportgen.errors import SettingsError

    family = FAMILIES[name]
    lm = zoo.reportgen(family)
    examples = examples_from_items(inputs_for(family))
    with pytest.raises(SettingsError, match=r"defines no pad token .* pass --batch-size 1"):
        list(compute(examples, lm, settings(family, batch_size=8)))


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_tasks_are_refused_clearly(zoo, name):
    family = REFUSED[name]
    folder = zoo.folder(family)
    if family.task == "encoder-decoder":
        with pytest.raises(ModelError, match="encoder-decoder"):
            load_model(folder, device="cpu", dtype="float64")
        return
    # Token classification: refused at load or at compute, never read as a bare encoder.
    with pytest.raises(ReportgenError, match=r"(?i)token classification") as caught:
        lm = load_model(folder, device="cpu", dtype="float64")
        items = [
            {"segments": [{"name": "a", "text": "a red ball"}, {"name": "b", "text": "the toy"}]}
        ]
        list(compute(examples_from_items(items), lm, settings(family)))
    message = str(caught.value).lower()
    assert "not supported" in message or "no objective" in message, message


# --- the methods added since: rollout, grad-rollout, attn-norm ---------------------------------


def oracle_rollouts(model: Any, case: Any, position: int) -> dict[str, tuple[Any, Any]]:
    """Per method, (per-head scores [L, H, T, T], relevance [L, T]) from one eager forward and
    backward: rollout (Abnar & Zuidema 2020) multiplies up ½·mean_h A + ½·I, rows renormalised;
    grad-rollout (Chefer et al. 2021) adds up mean_h (A ⊙ ∂log p/∂A)⁺ R; the rows of
    `position`."""
    loss, (layers,) = plain_attentions(model, case)
    grads = torch.autograd.grad(loss, list(layers))
    a = [x[0].detach().numpy() for x in layers]
    g = [x[0].numpy() for x in grads]
    eye = np.eye(a[0].shape[-1])
    rolled, rows = eye, []
    for x in a:
        step = 0.5 * x.mean(0) + 0.5 * eye
        rolled = step / step.sum(-1, keepdims=True) @ rolled
        rows.append(rolled[position])
    per_head = [np.maximum(x * -y, 0) for x, y in zip(a, g, strict=True)]
    summed, grad_rows = eye, []
    for x in per_head:
        summed = summed + x.mean(0) @ summed
        grad_rows.append(summed[position])
    return {
        "rollout": (np.stack(a), np.stack(rows)),
        "grad-rollout": (np.stack(per_head), np.stack(grad_rows)),
    }


@pytest.mark.parametrize("name", list(FAMILIES))
def test_rollouts_and_attn_norm_match_their_oracles_or_are_refused(zoo, name):
    """Every family: rollout and grad-rollout equal their definitions computed here (a bare
    encoder, without a prediction position, is refused by name), and attn-norm either equals
    A · ‖v W_O^h‖ (tests/test_more_methods.py's oracle) or is refused naming the attention
    class, which is then not one attn-norm lists as supported. One reportgen run per method and
    one plain forward and backward per input, the plain model shared with the matrix above."""
    from test_more_methods import oracle_attn_norm

    family = FAMILIES[name]
    if reportgen_results(zoo, family) is None:
        return  # refused as unsupported (test_loss_matches_a_plain_transformers_forward)
    encoder = family.task == "encoder"
    for method in ("rollout", "grad-rollout"):
        if encoder:
            with pytest.raises(SaliencyError, match="rollout .* bare encoder"):
                zoo.results(family, method=method)
            continue
        model, cases = zoo.plain(family, "eager")
        results = zoo.results(family, method=method)
        for case, result in zip(cases, results, strict=True):
            per_head, relevance = oracle_rollouts(model, case, result.prediction_position)[method]
            assert relative_difference(result.dense, per_head) <= TOLERANCE, method
            assert relative_difference(result.relevance, relevance) <= TOLERANCE, method
    try:
        results = zoo.results(family, method="attn-norm")
    except ModelError as err:
        found = str(err)
        assert "attn-norm does not support" in found and "use attn-grad" in found, found
        refused = found.split("does not support ", 1)[1].split(" ", 1)[0]
        assert refused not in SUPPORTED_CLASSES, found
        return
    model, cases = zoo.plain(family, "eager")
    for case, result in zip(cases, results, strict=True):
        assert relative_difference(result.dense, oracle_attn_norm(model, case)) <= TOLERANCE


def _gated_loss(model: Any, case: Any, gates: torch.Tensor) -> torch.Tensor:
    """The objective with each layer l's attention weights of head h scaled by gates[l, h]
    (its output g · A V), through the family's own eager attention, patched once per layer."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        for layer in range(gates.shape[0]):
            stack.enter_context(scaled_attention(model, layer, gates[layer][None, :, None, None]))
        loss, _ = plain_attentions(model, case)
    return loss


@pytest.mark.parametrize("name", list(FAMILIES))
def test_attribution_patching_matches_gated_eager_attention_or_is_refused(zoo, name):
    """Every family, zero baseline (the mean and counterfactual baselines: the next test): each
    head's estimate is ∂L/∂g_h at g = 1
    with the head's output scaled by g_h in the plain eager model (autograd, one backward),
    and the checked heads' real effect is that model with g_h = 0. A bare encoder, without
    log p(target), is refused by name."""
    family = FAMILIES[name]
    if reportgen_results(zoo, family) is None:
        return
    if family.task == "encoder":
        with pytest.raises(SaliencyError, match="--patching .* bare encoder"):
            zoo.results(family, method="attention", patching=True)
        return
    results = zoo.results(family, method="attention", patching=True, store="top-k")
    model, cases = zoo.plain(family, "eager")
    for case, result in zip(cases, results, strict=True):
        patching = result.patching
        assert patching is not None and patching.baseline == "zero"
        ones = torch.ones(patching.estimate.shape, dtype=torch.float64)
        gates = ones.clone().requires_grad_()
        (grad,) = torch.autograd.grad(_gated_loss(model, case, gates), [gates])
        want = grad.numpy()  # Δ log p ≈ (0 − 1) · ∂(−L)/∂g
        assert relative_difference(patching.estimate, want) <= TOLERANCE, name
        with torch.no_grad():
            intact = -float(_gated_loss(model, case, ones))
            for (layer, head), real in zip(patching.heads.tolist(), patching.real, strict=True):
                gates = ones.clone()
                gates[layer, head] = 0
                expected = -float(_gated_loss(model, case, gates)) - intact
                tol = LOSS_TOLERANCE_SOFTMAX32 if family.softmax32 else LOSS_TOLERANCE
                assert abs(real - expected) <= tol * max(abs(expected), abs(intact)), name


def _head_outputs(model: Any, case: Any, grad: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each layer's head outputs [1, T, H, d] in the plain eager forward of `case` (one
    sequence), kept by a hook on the family's attention function, and log p(target)."""
    kept: list[torch.Tensor] = []

    def keep(layer: int, out: torch.Tensor) -> torch.Tensor:
        kept.append(out)
        return out

    (sequence,) = case.sequences
    with torch.set_grad_enabled(grad), edited_head_outputs(model, keep):
        logp = -case.loss([model(input_ids=torch.tensor([list(sequence)]))])
    return kept, logp


def _logp_with_head(model: Any, case: Any, layer: int, head: int, patch: torch.Tensor) -> float:
    """log p(target) with head `head` of `layer` replaced by `patch` ([T, d] or [d]) where the
    family's attention function returns it."""

    def replace(here: int, out: torch.Tensor) -> torch.Tensor:
        if here != layer:
            return out
        out = out.clone()
        out[0, :, head] = patch
        return out

    (sequence,) = case.sequences
    with torch.no_grad(), edited_head_outputs(model, replace):
        return -float(case.loss([model(input_ids=torch.tensor([list(sequence)]))]))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_patching_from_the_mean_and_a_counterfactual_matches_replaced_head_outputs(zoo, name):
    """Every family where patching applies, baselines mean and counterfactual, against hooks on
    the plain eager model's attention function: the baseline computed here (each head's
    output averaged over every token of the three inputs, or its output at each position of
    the input's counterfactual), each head's estimate (o' − o) · ∂log p/∂o (one autograd
    backward per input, shared by both baselines), and the checked heads' real effect, the
    forward with that head's output replaced by o'. The plain model and cases are the
    matrix's; reportgen computes once per baseline."""
    family = FAMILIES[name]
    if reportgen_results(zoo, family) is None or family.task == "encoder":
        return  # unsupported, or refused by name (the test above)
    model, cases = zoo.plain(family, "eager")
    outputs, grads, intact = [], [], []
    for case in cases:
        kept, logp = _head_outputs(model, case, grad=True)
        grads.append([g[0] for g in torch.autograd.grad(logp, kept)])
        outputs.append([o[0].detach() for o in kept])
        intact.append(float(logp.detach()))
    tokens = sum(o[0].shape[0] for o in outputs)
    mean = [sum(o[layer].sum(0) for o in outputs) / tokens for layer in range(len(outputs[0]))]
    twins = [
        [o[0] for o in _head_outputs(model, twin, grad=False)[0]]
        for twin in zoo.counterfactual_cases(family)
    ]
    tol = LOSS_TOLERANCE_SOFTMAX32 if family.softmax32 else LOSS_TOLERANCE
    for baseline in ("mean", "counterfactual"):
        results = zoo.results(
            family,
            counterfactuals=True,
            method="attention",
            patching=True,
            patch_baseline=baseline,
            store="top-k",
        )
        for b, result in enumerate(results):
            patching = result.patching
            assert patching is not None and patching.baseline == baseline
            if baseline == "mean":
                patch = [m.expand_as(o) for m, o in zip(mean, outputs[b], strict=True)]
            else:
                patch = twins[b]
                assert [p.shape for p in patch] == [o.shape for o in outputs[b]], "same length"
            want = np.stack(
                [
                    ((p - o) * g).sum((0, 2)).numpy()  # [T, H, d] -> [H]
                    for p, o, g in zip(patch, outputs[b], grads[b], strict=True)
                ]
            )
            assert np.abs(want).max() > 0
            assert relative_difference(patching.estimate, want) <= TOLERANCE, (name, baseline)
            for (layer, head), real in zip(patching.heads.tolist(), patching.real, strict=True):
                moved = _logp_with_head(model, cases[b], layer, head, patch[layer][:, head])
                expected = moved - intact[b]
                assert abs(real - expected) <= tol * max(abs(expected), abs(intact[b])), (
                    name,
                    baseline,
                )
