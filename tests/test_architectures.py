"""The architecture matrix: every family of tests/architectures.py through reportgen in float64,
three inputs of different lengths in one padded batch, checked against an independent oracle.

(a) loss: reportgen's objective equals the same objective from a plain transformers forward
    (the model's default attention, unpadded, one input at a time);
(b) method: attention, attn-grad and attattr scores equal the oracle's, computed from an eager
    model's output_attentions with torch.autograd (attattr by scaling one layer's attention);
    reportgen computes with --store dense to give every cell, and its stored reductions and
    top cells (what a default run keeps) must be those of that dense S;
(c) batch: a batch of 8 gives the scores, values, targets and ablation of one input at a time.

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

import pytest
import torch
from architectures import (
    EXACT_OR_UNSUPPORTED,
    FAMILIES,
    REFUSED,
    Family,
    build,
    case_for,
    inputs_for,
    load_plain,
    oracle_attattr,
    oracle_attention,
    oracle_attn_grad,
    plain_loss,
    relative_difference,
)
from synthetic import assert_stats_match_dense

from reportgen.engine import compute, load_model
from reportgen.errors import ModelError, ReportgenError
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

    def results(self, family: Family, **changes: Any) -> list[Any]:
        key = ("results", family.name, *sorted(changes.items()))

        def run() -> list[Any]:
            lm = self.reportgen(family)
            examples = examples_from_items(inputs_for(family))
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
