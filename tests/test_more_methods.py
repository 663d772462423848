"""attn-norm, rollout, grad-rollout and attn-grad's Wang et al. aggregation, in float64 on tiny
random models of tests/architectures.py, against oracles written here: a plain transformers
forward (eager, unpadded, one input at a time) with output_attentions, forward hooks on the
value projections, the output projection's weights sliced by hand, and torch.autograd.

reportgen runs three inputs of different lengths as one right-padded batch, with both engines
(tiled, the default, and the dense eager reference)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from architectures import FAMILIES, build, case_for, inputs_for, load_plain, relative_difference
from synthetic import assert_stats_match_dense

from reportgen.engine import compute, load_model
from reportgen.errors import ModelError, SaliencyError, SettingsError
from reportgen.inputs import examples_from_items
from reportgen.records import Run
from reportgen.settings import Settings

pytestmark = pytest.mark.e2e

TOLERANCE = 1e-6
NORM_FAMILIES = ("gpt2", "llama", "qwen3", "mistral-sw", "qwen2-sw", "gemma2", "phi3")
"""GPT-2 (Conv1D c_proj), Llama (o_proj, grouped-query: 4 heads, 2 key/value heads), Qwen3,
Mistral and Qwen2 with sliding windows, Gemma 2 (softcapping), Phi-3 (fused qkv_proj): every
attention class attn-norm supports."""
ROLLOUT_FAMILIES = ("gpt2", "llama", "bert-mlm")
ENGINES = ("tiled", "eager")


class Zoo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[Any, Any] = {}

    def folder(self, name: str) -> Path:
        if ("folder", name) not in self.cache:
            self.cache["folder", name] = build(FAMILIES[name], self.root / name)
        return Path(self.cache["folder", name])

    def lm(self, name: str) -> Any:
        if ("lm", name) not in self.cache:
            self.cache["lm", name] = load_model(self.folder(name), device="cpu", dtype="float64")
        return self.cache["lm", name]

    def results(self, name: str, **changes: Any) -> list[Any]:
        key = ("results", name, *sorted(changes.items()))
        if key not in self.cache:
            settings = Settings(
                **{
                    "dtype": "float64",
                    "device": "cpu",
                    "ablate_k": 0,
                    "store": "dense",
                    "batch_size": 8,
                    **changes,
                }
            )
            examples = examples_from_items(inputs_for(FAMILIES[name]))
            self.cache[key] = list(compute(examples, self.lm(name), settings))
        return list(self.cache[key])

    def plain(self, name: str) -> tuple[Any, list[Any]]:
        if ("plain", name) not in self.cache:
            from transformers import AutoTokenizer

            family = FAMILIES[name]
            model = load_plain(family, self.folder(name), "eager")
            tok = AutoTokenizer.from_pretrained(self.folder(name))
            cases = [case_for(family, item, tok, model) for item in inputs_for(family)]
            self.cache["plain", name] = (model, cases)
        return self.cache["plain", name]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Zoo(tmp_path_factory.mktemp("more-methods"))
    finally:
        torch.set_num_threads(threads)


# --- the oracles ------------------------------------------------------------------------------


def _layers_of(model: Any) -> list[Any]:
    """The model's attention modules, in layer order."""
    base = model.base_model
    if hasattr(base, "h"):  # GPT-2
        return [block.attn for block in base.h]
    return [layer.self_attn for layer in base.layers]


def oracle_attn_norm(model: Any, case: Any) -> np.ndarray:
    """S[l, h, i, j] = A[l, h, i, j] · ‖v_j^{kv(h)} W_O^h‖, from the value projection's output
    (a forward hook) and the output projection's weight, sliced per head by hand."""
    (ids,) = case.sequences
    config = model.config
    heads = config.num_attention_heads
    modules = _layers_of(model)
    values: list[torch.Tensor] = []

    def keep(module: Any, args: Any, out: torch.Tensor) -> None:
        values.append(out.detach()[0])

    hooks = []
    for attn in modules:
        if hasattr(attn, "v_proj"):
            hooks.append(attn.v_proj.register_forward_hook(keep))
        elif hasattr(attn, "qkv_proj"):  # Phi-3: q, k, v concatenated, v last
            hooks.append(attn.qkv_proj.register_forward_hook(keep))
        else:  # GPT-2's c_attn: q, k, v concatenated
            hooks.append(attn.c_attn.register_forward_hook(keep))
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([list(ids)]), output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    t = len(ids)
    scores = np.zeros((len(modules), heads, t, t))
    for layer, (attn, value) in enumerate(zip(modules, values, strict=True)):
        a = out.attentions[layer][0].numpy()  # [H, T, T]
        if hasattr(attn, "o_proj"):
            d = attn.head_dim
            kv_heads = config.num_key_value_heads
            v = value.numpy()[:, -kv_heads * d :].reshape(t, kv_heads, d)
            w = attn.o_proj.weight.detach().numpy()  # [E, H * d]
            for h in range(heads):
                kv = h // (heads // kv_heads)
                moved = v[:, kv, :] @ w[:, h * d : (h + 1) * d].T  # [T, E]
                scores[layer, h] = a[h] * np.linalg.norm(moved, axis=-1)[None, :]
        else:
            e = config.n_embd
            d = e // heads
            v = value.numpy()[:, 2 * e :].reshape(t, heads, d)
            w = attn.c_proj.weight.detach().numpy()  # Conv1D: [H * d, E]
            for h in range(heads):
                moved = v[:, h, :] @ w[h * d : (h + 1) * d, :]
                scores[layer, h] = a[h] * np.linalg.norm(moved, axis=-1)[None, :]
    return scores


def _position(case: Any) -> int:
    """The prediction position: the first scored position (LMs)."""
    return int(case.scored[0][0])


def _attentions_and_grads(model: Any, case: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    (ids,) = case.sequences
    out = model(input_ids=torch.tensor([list(ids)]), output_attentions=True)
    loss = case.loss([out])
    grads = torch.autograd.grad(loss, list(out.attentions))
    return [a[0].detach().numpy() for a in out.attentions], [g[0].numpy() for g in grads]


def oracle_rollout(model: Any, case: Any) -> tuple[np.ndarray, np.ndarray]:
    """(per-head A, relevance [L, T]): Abnar & Zuidema's rollout of the heads' mean attention,
    ½A + ½I with rows renormalised, multiplied up from layer 1; the prediction position's row."""
    attentions, _ = _attentions_and_grads(model, case)
    t = attentions[0].shape[-1]
    rolled = np.eye(t)
    rows = []
    for a in attentions:
        step = 0.5 * a.mean(0) + 0.5 * np.eye(t)
        step = step / step.sum(-1, keepdims=True)
        rolled = step @ rolled
        rows.append(rolled[_position(case)])
    return np.stack(attentions), np.stack(rows)


def oracle_grad_rollout(model: Any, case: Any) -> tuple[np.ndarray, np.ndarray]:
    """(per-head (A ⊙ ∂log p/∂A)⁺, relevance [L, T]): Chefer et al.'s R ← R + mean_h(...)⁺ R."""
    attentions, grads = _attentions_and_grads(model, case)
    t = attentions[0].shape[-1]
    per_head = [np.maximum(a * -g, 0) for a, g in zip(attentions, grads, strict=True)]
    rolled = np.eye(t)
    rows = []
    for s in per_head:
        rolled = rolled + s.mean(0) @ rolled
        rows.append(rolled[_position(case)])
    return np.stack(per_head), np.stack(rows)


def oracle_wang(model: Any, case: Any, spans: Any, position: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums, pairs) [L, n+2, n+2]: I_l = |Σ_h A_h ⊙ ∂L/∂A_h| summed over the causal pairs
    j < i by (group of i, group of j); groups are the spans, no span, the prediction position."""
    attentions, grads = _attentions_and_grads(model, case)
    t = attentions[0].shape[-1]
    n = len(spans)
    group = np.full(t, n)
    for g, span in enumerate(spans):
        group[span.start : span.end] = g
    group[position] = n + 1
    sums = np.zeros((len(attentions), n + 2, n + 2))
    pairs = np.zeros((len(attentions), n + 2, n + 2))
    for layer, (a, g) in enumerate(zip(attentions, grads, strict=True)):
        flow = np.abs((a * g).sum(0))  # the heads summed before the magnitude
        for i in range(t):
            for j in range(i):
                sums[layer, group[i], group[j]] += flow[i, j]
                pairs[layer, group[i], group[j]] += 1
    return sums, pairs


# --- attn-norm --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", NORM_FAMILIES)
def test_attn_norm_equals_attention_times_projected_value_norms(zoo, name, engine):
    results = zoo.results(name, method="attn-norm", engine=engine)
    model, cases = zoo.plain(name)
    for case, result in zip(cases, results, strict=True):
        want = oracle_attn_norm(model, case)
        assert relative_difference(result.dense, want) <= TOLERANCE
        assert_stats_match_dense(
            result.stats, result.dense, result.spans, result.prediction_position
        )
        assert result.relevance is None and result.pairs is None


def test_attn_norm_sees_grouped_query_heads(zoo):
    """In the GQA model two query heads share a value head but not their slice of W_O: their
    norms differ (a test that broadcasting one head's norm to its group would fail)."""
    (result, *_) = zoo.results("llama", method="attn-norm")
    model, _ = zoo.plain("llama")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert not np.allclose(result.dense[:, 0], result.dense[:, 1])


@pytest.mark.parametrize("name", ["gpt-neox", "bert-mlm"])
def test_attn_norm_refuses_other_families_clearly(zoo, name):
    examples = examples_from_items(inputs_for(FAMILIES[name]))
    with pytest.raises(
        ModelError, match=r"attn-norm does not support \w+ \(supported: GPT-2, Llama"
    ):
        list(compute(examples, zoo.lm(name), Settings(method="attn-norm", dtype="float64")))


# --- rollout and grad-rollout ------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", ["rollout", "grad-rollout"])
@pytest.mark.parametrize("name", ROLLOUT_FAMILIES)
def test_rollout_equals_its_definition(zoo, name, method, engine):
    results = zoo.results(name, method=method, engine=engine)
    model, cases = zoo.plain(name)
    oracle = oracle_rollout if method == "rollout" else oracle_grad_rollout
    for case, result in zip(cases, results, strict=True):
        per_head, relevance = oracle(model, case)
        assert result.prediction_position == _position(case)
        assert relative_difference(result.dense, per_head) <= TOLERANCE
        assert result.relevance is not None
        assert result.relevance.shape == (len(per_head), len(result.tokens))
        assert relative_difference(result.relevance, relevance) <= TOLERANCE
        assert_stats_match_dense(
            result.stats, result.dense, result.spans, result.prediction_position
        )
    if method == "rollout":  # rows of a rollout stay distributions
        assert np.allclose(results[0].relevance.sum(-1), 1)


def test_rollout_needs_a_prediction_position(zoo):
    examples = examples_from_items(inputs_for(FAMILIES["bert"]))
    with pytest.raises(SaliencyError, match="rollout .* bare encoder"):
        list(compute(examples, zoo.lm("bert"), Settings(method="rollout", dtype="float64")))


def _page_data(path: Path) -> Any:
    import json
    import re

    found = re.search(
        r'<script type="application/json" id="rg-data">(.*?)</script>',
        path.read_text("utf-8"),
        flags=re.S,
    )
    assert found, f"{path}: no page data"
    return json.loads(found.group(1))


def _datasets(vega: Any) -> dict[str, Any]:
    return {d["name"]: d.get("values") for d in vega.get("data", [])}


@pytest.mark.parametrize(
    ("method", "changes", "dataset", "note"),
    [
        ("grad-rollout", {}, "relevance_rows", "relevance-note"),
        ("attn-grad", {"aggregate": "wang"}, "pair_flow_rows", "pair-flow-note"),
        ("attn-grad", {"patching": True}, "patching_rows", "patching"),
    ],
)
def test_the_run_folder_and_the_example_page_keep_them(
    zoo, tmp_path, method, changes, dataset, note
):
    """Through the API: compute into a run folder (the arrays come back equal), render, and the
    example page draws the chart by layer and says how the heads were combined."""
    from reportgen.pipeline import compute as compute_run
    from reportgen.pipeline import render

    items = inputs_for(FAMILIES["gpt2"])
    settings = Settings(
        method=method, dtype="float64", device="cpu", ablate_k=0, metric="total", **changes
    )
    run = compute_run(items, tmp_path / "run", settings, model=zoo.lm("gpt2"))
    want = zoo.results("gpt2", method=method, store="top-k", **changes)
    for i, result in enumerate(want):
        back = run.result(i)
        if result.relevance is not None:
            np.testing.assert_array_equal(back.relevance, result.relevance)
        else:
            assert back.relevance is None
        if result.pairs is not None:
            assert back.pairs is not None
            np.testing.assert_array_equal(back.pairs.sums, result.pairs.sums)
            np.testing.assert_array_equal(back.pairs.pairs, result.pairs.pairs)
        else:
            assert back.pairs is None
        if result.patching is not None:
            assert back.patching is not None
            for field in ("estimate", "heads", "real"):
                np.testing.assert_array_equal(
                    getattr(back.patching, field), getattr(result.patching, field)
                )
        else:
            assert back.patching is None
    _check_export(run, want, tmp_path / "tables")
    if "aggregate" in changes:
        assert run.info.parameters["aggregate"] == "wang"
    if "patching" in changes:
        assert run.info.parameters["patching"] == "zero"
    render(run, tmp_path / "site", settings)
    page = sorted((tmp_path / "site" / "examples").glob("*.html"))[0]
    html = page.read_text("utf-8")
    assert f'data-rg="{note}"' in html
    if method == "grad-rollout":
        assert "Heads are averaged by this method" in " ".join(html.split())
    rows = _datasets(_page_data(page)["spec"])[dataset]
    layers = zoo.lm("gpt2").num_layers
    assert {row["layer"] for row in rows} == set(range(1, layers + 1))
    if method == "grad-rollout":
        tokens = len(want[0].tokens)
        assert len(rows) == layers * tokens
        shares = np.array([row["share"] for row in rows]).reshape(layers, tokens)
        np.testing.assert_allclose(shares.sum(-1), 1, atol=1e-3)


def _check_export(run: Run, want: list[Any], out: Path) -> None:
    """`reportgen export` of the computed run holds the engine's relevance and Wang curves."""
    import csv

    from reportgen.export import export

    export(run, out, "csv")

    def rows(name: str) -> list[dict[str, str]]:
        with (out / f"{name}.csv").open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    relevance = [
        (r["id"], int(r["layer"]), int(r["position"]), r["token"], float(r["relevance"]))
        for r in rows("layer_relevance")
    ]
    expected = [
        (result.example.id, layer + 1, j, result.tokens[j], float(result.relevance[layer, j]))
        for result in want
        if result.relevance is not None
        for layer in range(result.relevance.shape[0])
        for j in range(result.relevance.shape[1])
    ]
    assert relevance == expected
    flows = [(r["id"], int(r["layer"]), r["flow"], float(r["value"])) for r in rows("layer_flows")]
    expected_flows = [
        (result.example.id, layer + 1, label, float(value))
        for result in want
        if result.pairs is not None
        for label, curve in result.pairs.curves()  # the run's metric is total: no SRC → DST
        for layer, value in enumerate(curve)
        if np.isfinite(value)
    ]
    assert flows == expected_flows
    assert rows("layer_ablation") == []  # --ablate-k 0


# --- Wang et al.'s aggregation ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_wang_aggregation_equals_a_direct_computation(zoo, name):
    results = zoo.results(name, aggregate="wang")
    plain = zoo.results(name)
    model, cases = zoo.plain(name)
    seen = set()
    for case, result, alone in zip(cases, results, plain, strict=True):
        # The per-head grid is attn-grad's, unchanged by the option.
        np.testing.assert_array_equal(result.dense, alone.dense)
        assert result.pairs is not None and alone.pairs is None
        sums, pairs = oracle_wang(model, case, result.spans, result.prediction_position)
        np.testing.assert_array_equal(result.pairs.pairs, pairs)
        assert relative_difference(result.pairs.sums, sums) <= TOLERANCE
        curves = dict(result.pairs.curves("ENV", "LAN"))
        rest = np.ones(sums.shape[1:], bool)
        if [s.name for s in result.spans] == ["ENV", "LAN"]:
            env, lan, target = 0, 1, 3
            assert list(curves) == ["ENV → LAN", "ENV → target", "LAN → target", "other pairs"]
            want = sums[:, lan, env] / pairs[:, lan, env]
            np.testing.assert_allclose(curves["ENV → LAN"], want, rtol=TOLERANCE)
            want = sums[:, target, env] / pairs[:, target, env]
            np.testing.assert_allclose(curves["ENV → target"], want, rtol=TOLERANCE)
            rest[lan, env] = rest[target, env] = rest[target, lan] = False
            seen.add("segments")
        else:
            assert list(curves) == ["other pairs"]
        want = sums[:, rest].sum(-1) / pairs[:, rest].sum(-1)
        np.testing.assert_allclose(curves["other pairs"], want, rtol=TOLERANCE)
    assert seen == {"segments"}


def test_wang_aggregation_is_an_option_of_attn_grad_on_the_tiled_engine():
    with pytest.raises(SettingsError, match="option of --method attn-grad"):
        Settings(method="attention", aggregate="wang").validate()
    with pytest.raises(SettingsError, match="tiled engine"):
        Settings(aggregate="wang", engine="eager").validate()
    with pytest.raises(SettingsError, match="unknown --aggregate"):
        Settings(aggregate="layers").validate()


# --- attribution patching ---------------------------------------------------------------------


def _scaled_head_logp(model: Any, case: Any, layer: int, head: int, scale: float) -> float:
    """log p(target) with head `head` of `layer` scaled by `scale` where the heads meet the
    output projection (a forward pre-hook on o_proj / c_proj scaling that head's slice)."""
    attn = _layers_of(model)[layer]
    proj = attn.o_proj if hasattr(attn, "o_proj") else attn.c_proj
    d = attn.head_dim

    def pre(module: Any, args: Any) -> Any:
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] *= scale
        return (x, *args[1:])

    hook = proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            (ids,) = case.sequences
            loss = case.loss([model(input_ids=torch.tensor([list(ids)]))])
    finally:
        hook.remove()
    return -float(loss)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_attribution_patching_is_the_first_order_patching_effect(zoo, name):
    """The estimate equals the derivative of the patching effect along the patch (a central
    finite difference of log p with the head scaled by 1 ± ε), and the checked heads' real
    effect equals zeroing the head by hand."""
    results = zoo.results(name, method="attention", patching=True, store="top-k")
    model, cases = zoo.plain(name)
    # A family whose softmax runs in float32 (Llama's) rounds log p at ~1e-7: a wider step keeps
    # that noise below the tolerance (a central difference errs by O(ε²)).
    eps, tolerance = (1e-2, 1e-4) if FAMILIES[name].softmax32 else (1e-4, 1e-6)
    for case, result in zip(cases, results, strict=True):
        patching = result.patching
        assert patching is not None
        intact = _scaled_head_logp(model, case, 0, 0, 1.0)
        assert abs(intact - (-result.loss)) <= 1e-6 * abs(intact)
        scale = np.abs(patching.estimate).max()
        order = np.argsort(-np.abs(patching.estimate.reshape(-1)), kind="stable")[:3]
        heads = patching.estimate.shape[1]
        assert patching.heads.tolist() == [[int(h) // heads, int(h) % heads] for h in order]
        for layer, head in [*patching.heads.tolist(), [0, 0], [2, 3]]:
            down = _scaled_head_logp(model, case, layer, head, 1 - eps)
            up = _scaled_head_logp(model, case, layer, head, 1 + eps)
            derivative = (down - up) / (2 * eps)  # d log p / d(patch fraction), at 0
            assert abs(patching.estimate[layer, head] - derivative) <= tolerance * scale
        for (layer, head), real in zip(patching.heads.tolist(), patching.real, strict=True):
            want = _scaled_head_logp(model, case, layer, head, 0.0) - intact
            assert abs(real - want) <= 1e-6 * max(abs(want), 1e-12)


COUNTERFACTUALS = {
    "ref": "<MOT> painted a picture of a dog",
    "short": "<CHI> saw a cat",
    "two": "my dog ate an apple",
}
"""The causal inputs' counterfactual ENV segments: another word or two, as many tokens."""


def _with_counterfactual(item: dict[str, Any]) -> dict[str, Any]:
    """The input with its text as an ENV segment (if it has none) and a counterfactual ENV."""
    out = {k: v for k, v in item.items() if k != "text"}
    if "text" in item:
        out["segments"] = [{"name": "ENV", "text": item["text"]}]
    return {**out, "counterfactual": {"ENV": COUNTERFACTUALS[item["id"]]}}


def _counterfactual_text(item: dict[str, Any]) -> str:
    new = item["counterfactual"]
    return " ".join(new.get(s["name"], s["text"]) for s in item["segments"])


def _proj(model: Any, layer: int) -> Any:
    attn = _layers_of(model)[layer]
    return attn.o_proj if hasattr(attn, "o_proj") else attn.c_proj


def _head_inputs(model: Any, ids: Any, grad: bool = False) -> tuple[list[Any], float]:
    """The output projections' inputs [T, H·d] of every layer (the heads' outputs side by
    side), from forward pre-hooks, and log p(target) of `ids` scored as `ids.case`."""
    case, kept = ids, []

    def pre(module: Any, args: Any) -> None:
        kept.append(args[0])

    hooks = [_proj(model, layer).register_forward_pre_hook(pre) for layer in range(3)]
    try:
        with torch.set_grad_enabled(grad):
            (seq,) = case.sequences
            logp = -case.loss([model(input_ids=torch.tensor([list(seq)]))])
    finally:
        for hook in hooks:
            hook.remove()
    return [x[0] for x in kept] if not grad else kept, logp


def _patched_logp(model: Any, case: Any, layer: int, head: int, baseline: Any) -> float:
    """log p(target) with head `head` of `layer` replaced where the heads meet the output
    projection: by `baseline` [T, d] (per position) or [d] (every position)."""
    d = _layers_of(model)[layer].head_dim

    def pre(module: Any, args: Any) -> Any:
        x = args[0].clone()
        x[0, :, head * d : (head + 1) * d] = baseline
        return (x, *args[1:])

    hook = _proj(model, layer).register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            (ids,) = case.sequences
            return -float(case.loss([model(input_ids=torch.tensor([list(ids)]))]))
    finally:
        hook.remove()


@pytest.mark.parametrize("baseline", ["mean", "counterfactual"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_patching_from_the_mean_and_a_counterfactual_equals_replacing_heads_by_hand(
    zoo, name, baseline
):
    """Against hooks on the plain model's output projection: the estimate is (o' − o) ·
    ∂log p/∂o per head (autograd through the plain forward), and the checked heads' real
    effect is the forward with that head's slice replaced by o' (the mean over every token of
    every input, or the counterfactual's output at each position)."""
    from transformers import AutoTokenizer

    family = FAMILIES[name]
    items = [_with_counterfactual(item) for item in inputs_for(family)]
    settings = Settings(
        dtype="float64",
        device="cpu",
        ablate_k=0,
        method="attention",
        patching=True,
        patch_baseline=baseline,
        batch_size=8,
    )
    results = list(compute(examples_from_items(items), zoo.lm(name), settings))
    model, cases = zoo.plain(name)
    tok = AutoTokenizer.from_pretrained(zoo.folder(name))
    attn = _layers_of(model)[0]
    heads, d = model.config.num_attention_heads, attn.head_dim
    outs = [torch.stack(_head_inputs(model, case)[0]) for case in cases]  # [L, T, H·d] each
    mean = torch.cat(outs, 1).mean(1)  # [L, H·d]
    for item, case, result in zip(items, cases, results, strict=True):
        patching = result.patching
        assert patching is not None and patching.baseline == baseline
        whole, logp = _head_inputs(model, case, grad=True)
        grads = [g[0] for g in torch.autograd.grad(logp, whole)]
        kept = [x[0] for x in whole]
        if baseline == "mean":
            patch = [mean[layer].expand_as(kept[layer]).detach() for layer in range(3)]
        else:
            twin = {"text": _counterfactual_text(item)}
            if "target" in item:
                twin["target"] = item["target"]
            other = case_for(family, twin, tok, model)
            assert len(other.sequences[0]) == len(case.sequences[0])
            patch = _head_inputs(model, other)[0]
        expected = np.zeros((3, heads))
        for layer in range(3):
            moved = ((patch[layer] - kept[layer].detach()) * grads[layer]).reshape(-1, heads, d)
            expected[layer] = moved.sum((0, 2)).numpy()
        scale = np.abs(expected).max()
        assert scale > 0
        assert np.abs(patching.estimate - expected).max() <= TOLERANCE * scale
        for (layer, head), real in zip(patching.heads.tolist(), patching.real, strict=True):
            cut = slice(head * d, (head + 1) * d)
            intact = float(logp.detach())
            want = _patched_logp(model, case, layer, head, patch[layer][:, cut]) - intact
            # A float32 softmax (Llama's) rounds log p itself at ~1e-8 relative.
            floor = abs(intact) if family.softmax32 else 1e-9
            assert abs(real - want) <= 1e-6 * max(abs(want), floor)


def test_patching_from_a_counterfactual_needs_one_of_the_same_length(zoo):
    lm = zoo.lm("gpt2")
    settings = Settings(dtype="float64", patching=True, patch_baseline="counterfactual")
    items = inputs_for(FAMILIES["gpt2"])
    with pytest.raises(SaliencyError, match="input 'ref' has no \"counterfactual\""):
        list(compute(examples_from_items(items), lm, settings))
    short = [{**_with_counterfactual(items[1]), "counterfactual": {"ENV": "<CHI> saw"}}]
    with pytest.raises(SaliencyError, match="its counterfactual is 2 tokens and the input 4"):
        list(compute(examples_from_items(short), lm, settings))
    with pytest.raises(SettingsError, match="--patch-baseline mean is an option of --patching"):
        Settings(patch_baseline="mean").validate()
    with pytest.raises(SettingsError, match="unknown --patch-baseline 'half'"):
        Settings(patching=True, patch_baseline="half").validate()


def test_attribution_patching_needs_a_target(zoo):
    examples = examples_from_items(inputs_for(FAMILIES["bert"]))
    with pytest.raises(SaliencyError, match="--patching .* bare encoder"):
        list(compute(examples, zoo.lm("bert"), Settings(patching=True, dtype="float64")))


def test_the_command_line_computes_them(zoo, tmp_path):
    """`reportgen compute` with the new options: the run records what was asked, and an
    option that does not apply is a one-line error (exit code 2)."""
    import json

    from typer.testing import CliRunner

    from reportgen.cli import app

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps(i) for i in inputs_for(FAMILIES["gpt2"])), "utf-8")
    model = str(zoo.folder("gpt2"))
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["compute", str(inputs), "--model", model, "--out", str(out), "--quiet"]
    done = runner.invoke(app, [*args, "--aggregate", "wang", "--patching", "--ablate-k", "0"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))["run"]
    assert manifest["parameters"]["aggregate"] == "wang"
    assert manifest["parameters"]["patching"] == "zero"
    assert "--aggregate wang" in manifest["command"] and "--patching" in manifest["command"]
    run = Run.open(out)
    assert run.result(0).pairs is not None and run.result(0).patching is not None
    mean = runner.invoke(
        app, [*args, "--patching", "--patch-baseline", "mean", "--ablate-k", "0", "--force"]
    )
    assert mean.exit_code == 0, mean.output
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))["run"]
    assert manifest["parameters"]["patching"] == "mean"
    assert "--patch-baseline mean" in manifest["command"]
    patched = Run.open(out).result(0).patching
    assert patched is not None and patched.baseline == "mean"
    alone = runner.invoke(app, [*args, "--patch-baseline", "counterfactual", "--force"])
    assert alone.exit_code == 2 and "is an option of --patching" in alone.output
    wrong = runner.invoke(app, [*args, "--method", "rollout", "--aggregate", "wang", "--force"])
    assert wrong.exit_code == 2
    assert "--aggregate wang is an option of --method attn-grad" in wrong.output
