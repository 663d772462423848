"""Unit tier for the newer methods' data and views: Wang et al.'s pair means on fixed numbers
(against a direct numpy computation), the rollout and patching rows, the linked spec's extra
views (present only with their data, following the grid's selection), and the run folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthetic import HEADS, LAYERS, result_for, run_info

from reportgen.charts import linked_spec
from reportgen.charts.views import pair_flow_rows, patching_rows, relevance_rows
from reportgen.data.methods import METHODS, parse_method
from reportgen.data.results import PairFlow, Patching
from reportgen.inputs import examples_from_items
from reportgen.records import Run, RunWriter
from reportgen.settings import Settings

pytestmark = pytest.mark.unit

ITEM = {
    "id": "x",
    "segments": [{"name": "ENV", "text": "a red ball"}, {"name": "LAN", "text": "the toy is"}],
    "target": "ball",
}


def _pairs() -> PairFlow:
    rng = np.random.default_rng(3)
    sums = rng.random((LAYERS, 4, 4))
    pairs = rng.integers(1, 5, (LAYERS, 4, 4)).astype(np.float64)
    pairs[:, 2, :] = 0  # no token in "no segment"
    sums[:, 2, :] = 0
    return PairFlow(("ENV", "LAN"), sums, pairs)


def test_pair_means_are_sums_over_pairs():
    flow = _pairs()
    s, n = flow.sums, flow.pairs
    np.testing.assert_allclose(
        flow.mean([(1, 0)]), np.where(n[:, 1, 0] > 0, s[:, 1, 0] / n[:, 1, 0], np.nan)
    )
    curves = dict(flow.curves("ENV", "LAN"))
    assert list(curves) == ["ENV → LAN", "ENV → target", "LAN → target", "other pairs"]
    np.testing.assert_allclose(curves["ENV → target"], s[:, 3, 0] / n[:, 3, 0])
    rest = np.ones((4, 4), bool)
    rest[1, 0] = rest[3, 0] = rest[3, 1] = False
    np.testing.assert_allclose(curves["other pairs"], s[:, rest].sum(-1) / n[:, rest].sum(-1))
    # Without a flow metric there is no SRC → DST curve; "other" then includes LAN ← ENV.
    assert [label for label, _ in flow.curves()] == ["ENV → target", "LAN → target", "other pairs"]


def test_a_curve_without_pairs_is_left_out():
    flow = _pairs()
    empty = replace(flow, pairs=np.where(np.arange(4)[None, :, None] == 3, 0.0, flow.pairs))
    assert [label for label, _ in empty.curves("ENV", "LAN")] == ["ENV → LAN", "other pairs"]


def test_rows_of_the_views():
    relevance = np.array([[1.0, 3.0], [0.0, 0.0]])
    assert relevance_rows(relevance) == [
        {"layer": 1, "j": 0, "v": 1.0, "share": 0.25},
        {"layer": 1, "j": 1, "v": 3.0, "share": 0.75},
        {"layer": 2, "j": 0, "v": 0.0, "share": 0.0},
        {"layer": 2, "j": 1, "v": 0.0, "share": 0.0},
    ]
    patching = Patching(
        np.array([[0.5, -0.25]]), np.array([[0, 1]], np.int32), np.array([-0.2], np.float64)
    )
    assert patching_rows(patching) == [
        {"layer": 1, "head": 1, "estimate": 0.5},
        {"layer": 1, "head": 2, "estimate": -0.25, "real": -0.2},
    ]
    rows = pair_flow_rows(_pairs(), "flow:ENV->LAN")
    assert rows[0]["curve"] == "ENV → LAN" and {r["layer"] for r in rows} == {1, 2, 3}


def _views(spec: dict) -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "name" in node and ("layer" in node or "mark" in node):
                found.append(node["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def test_the_linked_spec_adds_views_by_layer_only_with_their_data():
    [example] = examples_from_items([ITEM])
    plain = result_for(example, 0)
    t = len(plain.tokens)
    full = replace(
        plain,
        relevance=np.full((LAYERS, t), 1 / t),
        pairs=_pairs(),
        patching=Patching(
            np.zeros((LAYERS, HEADS)), np.array([[0, 0], [1, 1], [2, 2]], np.int32), np.zeros(3)
        ),
    )
    base = linked_spec(plain, "flow:ENV->LAN").spec
    assert "vconcat" not in base and "hconcat" in base
    spec = linked_spec(full, "flow:ENV->LAN").spec
    [top, *below] = spec["vconcat"]
    assert top == {k: base[k] for k in ("hconcat", "spacing", "resolve")}
    assert [view["name"] for view in below] == ["patching", "relevance", "pair_flow"]
    names = _views(spec)
    for name in ("relevance_cells", "relevance_outline", "pair_flow_lines", "patching_cells"):
        assert name in names
    assert {"relevance_rows", "pair_flow_rows", "patching_rows"} <= set(spec["datasets"])
    # The views by layer follow the grid's selection: the grid's rows filtered by pick | brush.
    outline = json_find(spec, "relevance_outline")
    assert outline["data"] == {"name": "heads"}
    assert outline["transform"][0]["filter"]["or"] == [
        {"param": "pick", "empty": False},
        {"param": "brush", "empty": False},
    ]


def json_find(node: object, name: str) -> dict:
    if isinstance(node, dict):
        if node.get("name") == name:
            return node
        for value in node.values():
            try:
                return json_find(value, name)
            except KeyError:
                pass
    elif isinstance(node, list):
        for value in node:
            try:
                return json_find(value, name)
            except KeyError:
                pass
    raise KeyError(name)


def test_the_run_folder_keeps_them(tmp_path: Path):
    [example] = examples_from_items([ITEM])
    plain = result_for(example, 0)
    t = len(plain.tokens)
    full = replace(
        plain,
        relevance=np.arange(LAYERS * t, dtype=np.float64).reshape(LAYERS, t),
        pairs=_pairs(),
        patching=Patching(
            np.ones((LAYERS, HEADS)), np.array([[0, 1], [1, 2], [2, 3]], np.int32), np.ones(3)
        ),
    )
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(full)
        writer.add(plain)
    run = Run.open(tmp_path / "run")
    back, bare = run.result(0), run.result(1)
    np.testing.assert_array_equal(back.relevance, full.relevance)
    assert back.pairs is not None and back.pairs.segments == ("ENV", "LAN")
    np.testing.assert_array_equal(back.pairs.sums, full.pairs.sums)
    assert back.patching is not None
    np.testing.assert_array_equal(back.patching.heads, full.patching.heads)
    assert bare.relevance is None and bare.pairs is None and bare.patching is None


def test_the_views_by_layer_have_text_alternatives(tmp_path: Path):
    """Beside the charts by layer, tables as their text alternatives: each layer's three
    strongest key tokens with their shares of the layer (an unknown token says the word it
    replaced), and each curve of the per-layer flow at every layer. A page without those
    views has neither table."""
    import html
    import re

    from reportgen import site
    from reportgen.data.results import UnknownToken
    from reportgen.site.html import number

    [example, other] = examples_from_items([ITEM, {**ITEM, "id": "y"}])
    plain = result_for(example, 0)
    t = len(plain.tokens)
    relevance = np.random.default_rng(5).random((LAYERS, t))
    relevance[0, 1] = 10.0  # layer 1's strongest key token: one the model read as [UNK]
    at = example.text.index("red")
    unknown = (UnknownToken(1, "red", at, at + 3),)
    tokens = tuple("[UNK]" if p == 1 else w for p, w in enumerate(plain.tokens))
    full = replace(plain, tokens=tokens, unknown=unknown, relevance=relevance, pairs=_pairs())
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(full)
        writer.add(result_for(other, 1))
    site.render_site(Run.open(tmp_path / "run"), tmp_path / "site", Settings())
    page, bare = (
        (tmp_path / "site" / "examples" / f"{name}.html").read_text("utf-8")
        for name in ("0001-x", "0002-y")
    )

    def details(name: str) -> str:
        found = re.search(rf'<details class="rg-alt" data-rg="{name}">(.*?)</details>', page, re.S)
        assert found is not None, name
        return found.group(1)

    shares = relevance / relevance.sum(-1, keepdims=True)
    want = [
        (f"L{layer + 1}", html.escape(tokens[j]), str(j), f"{100 * shares[layer, j]:.1f}")
        for layer in range(LAYERS)
        for j in np.argsort(-shares[layer])[:3]
    ]
    got = re.findall(
        r'<tr><td>(L\d+)</td><td>(.*?) \((\d+)\)</td><td class="rg-n">([\d.]+)%</td></tr>',
        details("alt-relevance"),
    )
    assert [(a, b.split(" for ")[0], c, d) for a, b, c, d in got] == want
    assert got[0][1] == "[UNK] for “red” (not in the vocabulary)"
    flow = details("alt-pair-flow")
    curves = dict(_pairs().curves("ENV", "LAN"))
    heads = re.findall(r'<th class="rg-n">(.*?)</th>', flow)
    assert [html.unescape(h) for h in heads] == list(curves)
    rows = re.findall(r"<tr><td>(L\d+)</td>(.*?)</tr>", flow)
    assert [layer for layer, _ in rows] == [f"L{layer + 1}" for layer in range(LAYERS)]
    for layer, (_, cells) in enumerate(rows):
        values = re.findall(r'<td class="rg-n">(.*?)</td>', cells)
        assert values == [number(float(c[layer]), 3) for c in curves.values()]
    assert "alt-relevance" not in bare and "alt-pair-flow" not in bare


def test_the_registry_and_the_settings():
    assert {"attn-norm", "rollout", "grad-rollout"} <= set(METHODS)
    assert not parse_method("attn-norm").signed
    Settings(method="grad-rollout", patching=True).validate()
    Settings(aggregate="wang").validate()
