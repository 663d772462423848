"""`reportgen compare`: models and checkpoints compared on the same inputs.

The numbers the comparison page draws (trajectories, bands, difference grids, per-layer sums)
are checked against numpy computed here from the run folders' own head scores; reuse of run
folders by counting model loads; the errors; determinism; and (browser tier) the page in
Chromium, where a click on a head redraws its trajectory."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_INPUTS, _configs, _tokenizer, in_fresh_processes
from typer.testing import CliRunner

from reportgen.charts import compare as views
from reportgen.errors import ModelError, ReportgenError, SettingsError
from reportgen.records import Run
from reportgen.settings import Settings

METRIC = "flow:ENV->LAN"
SETTINGS = Settings(metric=METRIC, device="cpu")
STEPS = (0, 10, 200)


def _save(folder: Path, seed: int, **config: object) -> Path:
    import torch

    cls, base, kind = _configs()["gpt2"]
    for key, value in config.items():
        setattr(base, key, value)
    torch.manual_seed(seed)
    cls(base).save_pretrained(folder)
    _tokenizer(kind).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny GPT-2 checkpoints (one tokenizer, different weights), compared once."""
    from reportgen import compare

    root = tmp_path_factory.mktemp("compare")
    inputs = root / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(item) + "\n" for item in DEMO_INPUTS), "utf-8")
    ckpts = root / "ckpts"
    for step in STEPS:
        _save(ckpts / f"checkpoint-{step}", seed=step)
    (ckpts / "logs").mkdir()  # no step number: not a checkpoint
    report = compare(inputs, root / "site", checkpoints=ckpts, settings=SETTINGS)
    runs = report.run or Path()
    return {"root": root, "inputs": inputs, "ckpts": ckpts, "site": report.site, "runs": runs}


def _page_data(site: Path) -> dict:
    html = (site / "index.html").read_text("utf-8")
    found = re.search(r'<script type="application/json" id="rg-data">(.*?)</script>', html, re.S)
    assert found
    return json.loads(found.group(1))


def _dataset(data: dict, name: str) -> list[dict]:
    return next(d["values"] for d in data["spec"]["data"] if d["name"] == name)


def _scores(runs: Path, label: str) -> np.ndarray:
    return np.asarray(Run.open(runs / label).head_scores(METRIC), np.float64)


@pytest.mark.e2e
def test_checkpoints_site_equals_numpy(built: dict[str, Path]) -> None:
    site, runs = built["site"], built["runs"]
    assert runs == built["root"] / "site.runs"  # the default: beside the site
    data = _page_data(site)
    assert data["kind"] == "compare"
    rows = _dataset(data, views.UNITS_DATA)
    folders = [f"step-{s}" for s in STEPS]
    for c, folder in enumerate(folders):
        scores = _scores(runs, f"checkpoint-{STEPS[c]}")  # [inputs, layers, heads]
        mean, sd = scores.mean(axis=0), scores.std(axis=0)
        mine = [r for r in rows if r["c"] == c]
        assert len(mine) == mean.size
        for r in mine:
            ly, h = r["layer"] - 1, r["head"] - 1
            assert r["checkpoint"] == f"step {STEPS[c]}"
            assert r["mean"] == pytest.approx(mean[ly, h], abs=1e-6)
            assert r["lo"] == pytest.approx(max(0.0, mean[ly, h] - sd[ly, h]), abs=1e-6)
            assert r["hi"] == pytest.approx(min(1.0, mean[ly, h] + sd[ly, h]), abs=1e-6)
        entries = Run.open(runs / f"checkpoint-{STEPS[c]}").entries
        got = next(v for v in _dataset(data, views.CHECKPOINTS_DATA) if v["c"] == c)
        assert got["value"] == pytest.approx(np.mean([e.value for e in entries]))
        # each checkpoint's own top-k heads ablated against random heads, from its run
        tops = [e.ablation.value_top - e.ablation.value for e in entries if e.ablation]
        drawn = [np.mean(e.ablation.random_values) - e.ablation.value
                 for e in entries if e.ablation]  # fmt: skip
        assert len(tops) == len(entries) > 0
        assert got["ablate_top"] == pytest.approx(np.mean(tops), abs=1e-6)
        assert got["ablate_random"] == pytest.approx(np.mean(drawn), abs=1e-6)
        assert (site / "models" / folder / "index.html").is_file()
        assert f'href="models/{folder}/index.html"' in (site / "index.html").read_text("utf-8")
    html = (site / "index.html").read_text("utf-8")
    assert 'data-rg="ablation-note"' in html and views.TREND_ABLATION in json.dumps(data)
    assert data["names"]["views"][-1] == views.TREND_ABLATION
    # heads ranked by the last checkpoint's mean, strongest first
    last = _scores(runs, "checkpoint-200").mean(axis=0)
    ranked = sorted((r["rank"], r["layer"] - 1, r["head"] - 1) for r in rows if r["c"] == 2)
    assert [last[ly, h] for _, ly, h in ranked] == sorted(last.ravel(), reverse=True)


@pytest.mark.e2e
def test_difference_grid_equals_numpy(built: dict[str, Path]) -> None:
    runs = built["runs"]
    first, last = _scores(runs, "checkpoint-0"), _scores(runs, "checkpoint-200")
    trend = views.trends(
        ["a", "b", "c"], [first, _scores(runs, "checkpoint-10"), last], [[], [], []]
    )
    want = last.mean(axis=0) - first.mean(axis=0)
    np.testing.assert_allclose(views.difference(trend, 0, 2), want, atol=1e-12)
    np.testing.assert_allclose(views.difference(trend, 2, 0), -want, atol=1e-12)


@pytest.mark.e2e
def test_reuse_computes_only_new_checkpoints(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reportgen.engine
    from reportgen import compare

    loads: list[str] = []
    real = reportgen.engine.load_model

    def counting(spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(str(spec))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(reportgen.engine, "load_model", counting)
    ckpts = tmp_path / "ckpts"
    shutil.copytree(built["ckpts"], ckpts)
    runs = tmp_path / "runs"
    shutil.copytree(built["runs"], runs)
    # the same checkpoints and settings: every run folder reused, nothing loaded, and the
    # site is byte for byte the first one
    again = compare(
        built["inputs"], tmp_path / "again", checkpoints=ckpts, settings=SETTINGS, runs=runs
    )
    assert loads == []
    assert _files(again.site) == _files(built["site"])
    # a new checkpoint: only it is computed
    _save(ckpts / "checkpoint-50", seed=50)
    more = compare(
        built["inputs"], tmp_path / "more", checkpoints=ckpts, settings=SETTINGS, runs=runs
    )
    assert [Path(p).name for p in loads] == ["checkpoint-50"]
    labels = [r["checkpoint"] for r in _dataset(_page_data(more.site), views.CHECKPOINTS_DATA)]
    assert labels == ["step 0", "step 10", "step 50", "step 200"]
    # other settings, weights or inputs: the run folder is not reused, and why
    from reportgen.comparison import reuse_differences, weights_sha256
    from reportgen.pipeline import load_examples

    run, examples = Run.open(runs / "checkpoint-10"), load_examples(built["inputs"])
    weights = weights_sha256(ckpts / "checkpoint-10")
    assert reuse_differences(run, weights, examples, SETTINGS) == []
    other = Settings(metric="total", device="cpu", ablate_k=1)
    assert reuse_differences(run, weights, examples, other) == ["metric", "ablate_k"]
    asked = replace(SETTINGS, aggregate="wang", patching=True)
    assert reuse_differences(run, weights, examples, asked) == ["aggregate", "patching"]
    layers = replace(SETTINGS, ablate_layers=True)  # recorded by the run, so compared
    assert reuse_differences(run, weights, examples, layers) == ["ablate_layers"]
    assert reuse_differences(run, "0" * 64, examples[:2], SETTINGS) == ["the weights", "the inputs"]


@pytest.mark.e2e
def test_a_run_off_the_defaults_is_reused_for_its_own_settings(
    built: dict[str, Path], tmp_path: Path
) -> None:
    """`reuse_differences` asks what `run_info` records: a run with layer ablation and a mean
    patching baseline is reused for those settings, and for no others."""
    from reportgen.comparison import reuse_differences, weights_sha256
    from reportgen.pipeline import compute, load_examples

    folder = built["ckpts"] / "checkpoint-10"
    weights, examples = weights_sha256(folder), load_examples(built["inputs"])
    asked = replace(SETTINGS, ablate_layers=True, patching=True, patch_baseline="mean")
    run = compute(built["inputs"], tmp_path / "run", replace(asked, model=str(folder)))
    assert run.info.parameters["patching"] == "mean" and run.info.parameters["ablate_layers"]
    assert reuse_differences(run, weights, examples, asked) == []
    assert reuse_differences(run, weights, examples, SETTINGS) == ["patching", "ablate_layers"]
    for baseline in ("zero", "counterfactual"):
        other = replace(asked, patch_baseline=baseline)
        assert reuse_differences(run, weights, examples, other) == ["patching"]
    other = replace(asked, ablate_layers=False)
    assert reuse_differences(run, weights, examples, other) == ["ablate_layers"]


def _files(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*") if p.is_file()}


@pytest.mark.e2e
def test_layer_level_when_shapes_differ(built: dict[str, Path], tmp_path: Path) -> None:
    from reportgen import compare

    narrow = _save(tmp_path / "narrow", seed=1, n_head=2)
    wide = built["ckpts"] / "checkpoint-200"
    shutil.copytree(built["runs"] / "checkpoint-200", tmp_path / "runs" / "checkpoint-200")
    report = compare(
        DEMO_INPUTS, tmp_path / "site", models=[str(narrow), str(wide)], settings=SETTINGS,
        runs=tmp_path / "runs",
    )  # fmt: skip
    html = (report.site / "index.html").read_text("utf-8")
    assert 'data-rg="layer-level"' in html
    assert "narrow: 3 × 2" in html and "checkpoint-200: 3 × 4" in html
    rows = _dataset(_page_data(report.site), views.UNITS_DATA)
    for c, name in enumerate(["narrow", "checkpoint-200"]):
        layers = _scores(tmp_path / "runs", name).sum(axis=2).mean(axis=0)
        mine = {r["layer"]: r["mean"] for r in rows if r["c"] == c}
        assert {r["head"] for r in rows} == {1}
        assert mine == pytest.approx({i + 1: v for i, v in enumerate(layers)}, abs=1e-6)
    # no token heatmaps per checkpoint at the layer level, and the page says why
    assert "No token heatmaps per checkpoint: the models differ in layers × heads" in html
    assert views.CELLS_DATA not in _page_data(report.site)["spec"].get("datasets", {})


@pytest.mark.e2e
def test_different_tokenizers_are_refused_before_computing(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reportgen.engine
    from reportgen import compare
    from reportgen.comparison import CompareError

    monkeypatch.setattr(reportgen.engine, "load_model", _no_load)
    other = _save(tmp_path / "other-tok", seed=3)
    _tokenizer("bert").save_pretrained(other)  # the same words, [CLS] ... [SEP] around inputs
    pair, runs = [str(built["ckpts"] / "checkpoint-0"), str(other)], tmp_path / "runs"
    with pytest.raises(CompareError, match="'checkpoint-0' and 'other-tok' tokenize the inputs"):
        compare(DEMO_INPUTS, tmp_path / "site", models=pair, settings=SETTINGS, runs=runs)
    vocab = json.loads((other / "tokenizer.json").read_text("utf-8"))
    vocab["model"]["vocab"]["zebra-word"] = len(vocab["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(vocab), "utf-8")
    with pytest.raises(CompareError, match="'checkpoint-0' and 'other-tok' have different tok"):
        compare(DEMO_INPUTS, tmp_path / "site", models=pair, settings=SETTINGS, runs=runs)


def _no_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("a model was loaded before the checks")


@pytest.mark.e2e
def test_weights_digest_is_the_engines(built: dict[str, Path]) -> None:
    from reportgen.comparison import weights_sha256
    from reportgen.engine.loading import weights_sha256 as engine_sha256

    folder = built["ckpts"] / "checkpoint-10"
    assert weights_sha256(folder) == engine_sha256(folder)
    assert Run.open(built["runs"] / "checkpoint-10").info.weights_sha256 == weights_sha256(folder)


# --- errors and folders, without models -------------------------------------------------------


def _fake_model(folder: Path, weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", "utf-8")
    if weights:
        (folder / "model.safetensors").write_bytes(b"x")
    return folder


@pytest.mark.unit
def test_checkpoint_folders_in_step_order(tmp_path: Path) -> None:
    from reportgen.comparison import checkpoint_folders

    for name in ("checkpoint-1000", "checkpoint-50", "step_200", "final"):
        _fake_model(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    got = checkpoint_folders(tmp_path)
    assert [(s.label, s.path.name) for s in got] == [
        ("step 50", "checkpoint-50"),
        ("step 200", "step_200"),
        ("step 1000", "checkpoint-1000"),
    ]


@pytest.mark.unit
def test_checkpoint_without_weights(tmp_path: Path) -> None:
    from reportgen.comparison import checkpoint_folders

    _fake_model(tmp_path / "checkpoint-10")
    _fake_model(tmp_path / "checkpoint-20", weights=False)
    with pytest.raises(ModelError, match=r"checkpoint-20: the folder has no weights"):
        checkpoint_folders(tmp_path)


@pytest.mark.unit
def test_fewer_than_two_models(tmp_path: Path) -> None:
    from reportgen.comparison import model_specs

    one = _fake_model(tmp_path / "one")
    with pytest.raises(SettingsError, match="at least two models, got 1"):
        model_specs([str(one)], None)
    with pytest.raises(SettingsError, match="at least two models, got 0"):
        model_specs([], None)
    two = _fake_model(tmp_path / "sub" / "one")
    with pytest.raises(SettingsError, match="label 'one'"):
        model_specs([str(one), str(two)], None)
    with pytest.raises(SettingsError, match="--label given 1 times for 2 models"):
        model_specs([str(one), str(two)], None, ["a"])
    assert [s.label for s in model_specs([str(one), str(two)], None, ["a", "b"])] == ["a", "b"]


@pytest.mark.unit
def test_hub_revisions_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ORG/NAME@REV` resolves to that revision's snapshot in the local cache; a revision not
    there is an error naming it."""
    import huggingface_hub.constants

    from reportgen.comparison import resolve

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    commit = "a" * 40
    _fake_model(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "step1000").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve("org/tiny@step1000") == repo / "snapshots" / commit
    with pytest.raises(ModelError, match="revision 'step2000' of 'org/tiny' is not in the local"):
        resolve("org/tiny@step2000")
    with pytest.raises(ModelError, match="'org/absent' is not in the local Hugging Face cache"):
        resolve("org/absent")


@pytest.mark.unit
def test_trends_and_difference_equal_numpy() -> None:
    rng = np.random.default_rng(1)
    scores = [rng.dirichlet(np.ones(6), size=4).reshape(4, 2, 3) for _ in range(3)]
    trend = views.trends(["a", "b", "c"], scores, [[0.5, 0.7], [0.1], []])
    for c, s in enumerate(scores):
        np.testing.assert_allclose(trend.mean[c], s.mean(axis=0))
        np.testing.assert_allclose(trend.hi[c], np.clip(s.mean(0) + s.std(0), 0, 1))
    assert trend.values == (pytest.approx(0.6), pytest.approx(0.1), None)
    np.testing.assert_allclose(views.difference(trend, 0, 2), scores[2].mean(0) - scores[0].mean(0))
    spec = views.compare_spec(trend)
    assert [p["name"] for p in spec["params"]] == ["pick", "brush", views.DIFF_FROM, views.DIFF_TO]
    top = views.order(trend)[0]
    assert spec["params"][0]["value"] == [{"layer": top[0] + 1, "head": top[1] + 1}]
    assert spec["params"][3]["value"] == 2  # last − first when the page opens


@pytest.mark.cli
def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    from reportgen.cli import app

    one = _fake_model(tmp_path / "one")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": "a b"}) + "\n", "utf-8")
    result = CliRunner().invoke(app, ["compare", str(inputs), "--model", str(one)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: compare needs at least two models, got 1: give --model twice or more, or "
        "--checkpoints with two or more checkpoint folders"
    ]
    assert isinstance(SettingsError("x"), ReportgenError)


# --- the page in Chromium ---------------------------------------------------------------------


LINES_JS = """
([lines]) => window.reportgen.view.data(lines).map((d) => [d.unit, d.c, d.mean])
"""
STROKES_JS = """
() => {
  const found = [];
  const walk = (node) => {
    if (node.marktype === "line" && String(node.name || "").startsWith("trend_lines")) {
      node.items.forEach((item) => found.push(item.stroke || null));
    }
    (node.items || []).forEach((item) => (item.items || []).forEach(walk));
  };
  walk(window.reportgen.view.scenegraph().root);
  return found;
}
"""


TOKENS_JS = """
() => {
  const found = [];
  const walk = (node) => {
    if (node.name === "trend_tokens_marks") {
      node.items.forEach((item) => found.push([item.datum.c, item.datum.q, item.datum.k,
                                              item.datum.share]));
    }
    (node.items || []).forEach((item) => (item.items || []).forEach(walk));
  };
  walk(window.reportgen.view.scenegraph().root);
  return found;
}
"""


DIFF_MARKS_JS = """
() => {
  const found = [];
  const walk = (node) => {
    if (node.name === "trend_diff_marks") {
      node.items.forEach((item) => found.push([item.datum.layer, item.datum.head, item.datum.diff,
                                              item.fill]));
    }
    (node.items || []).forEach((item) => (item.items || []).forEach(walk));
  };
  walk(window.reportgen.view.scenegraph().root);
  return found;
}
"""


def _assert_diff_marks(drawn: list, want: np.ndarray) -> None:
    """The difference grid as drawn: a cell per head holding `want` (numpy), red where it is
    above 0 and blue where below (the reversed red-blue scale, centred at 0)."""
    layers, heads = want.shape
    assert sorted((ly, h) for ly, h, _, _ in drawn) == [
        (ly + 1, h + 1) for ly in range(layers) for h in range(heads)
    ]
    clear = np.abs(want).max() / 4  # far enough from 0 for the hue to be plain
    for layer, head, value, fill in drawn:
        assert value == pytest.approx(want[layer - 1, head - 1], abs=2e-6)
        found = re.fullmatch(r"rgb\((\d+), (\d+), (\d+)\)", fill)
        assert found, fill
        red, _, blue = map(int, found.groups())
        if abs(value) > clear:
            assert (red > blue) == (value > 0), (layer, head, value, fill)


def _token_heat(runs: Path, heads: list[tuple[int, int]], index: int = 0) -> dict:
    """(checkpoint, query, key) -> the mean over `heads` of the cell's share |S| / total of the
    head's saliency, from each head's strongest TOKEN_CELLS cells (numpy, from the runs)."""
    want: dict = {}
    for c, step in enumerate(STEPS):
        result = Run.open(runs / f"checkpoint-{step}").result(index)
        t, stats = len(result.tokens), result.stats
        for ly, h in heads:
            cells = stats.top_cells[ly, h, : views.TOKEN_CELLS]
            values = np.abs(stats.top_values[ly, h, : views.TOKEN_CELLS].astype(np.float64))
            for cell, value in zip(cells, values, strict=True):
                if cell >= 0:
                    key = (c, *divmod(int(cell), t))
                    want[key] = want.get(key, 0.0) + value / stats.total[ly, h] / len(heads)
    return want


def _assert_token_heat(got: list, want: dict) -> None:
    assert {(c, q, k) for c, q, k, _ in got} == set(want)
    for c, q, k, share in got:
        assert share == pytest.approx(want[c, q, k], abs=1e-5)


def _mark_source(spec: dict, name: str) -> str:
    """The Vega dataset a named mark (or path group) draws from."""
    for mark in spec.get("marks", []):
        if mark.get("name") == name:
            source = mark["from"]
            return source["facet"]["data"] if "facet" in source else source["data"]
        if mark.get("type") == "group":
            try:
                return _mark_source(mark, name)
            except KeyError:
                pass
    raise KeyError(name)


@pytest.mark.browser
def test_click_on_a_head_draws_its_trajectory(built: dict[str, Path]) -> None:
    from browser import cell_center, launch, serve
    from playwright.sync_api import sync_playwright

    site, runs = built["site"], built["runs"]
    data = _page_data(site)
    lines = _mark_source(data["spec"], "trend_lines_0_pathgroup")
    diff = _mark_source(data["spec"], "trend_diff_marks")
    means = [_scores(runs, f"checkpoint-{s}").mean(axis=0) for s in STEPS]
    with sync_playwright() as pw, serve(site) as url:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1300, "height": 1400})  # every chart in view
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{url}/index.html")
        page.evaluate("window.reportgen.ready.then(() => 1)")
        top = views.order(views.trends(list("abc"), [m[None] for m in means], [[], [], []]))[0]
        label = f"L{top[0] + 1} H{top[1] + 1}"
        drawn = page.evaluate(LINES_JS, [lines])
        assert sorted(d[:2] for d in drawn) == [[label, c] for c in range(3)]
        for _, c, mean in drawn:
            assert mean == pytest.approx(means[c][top], abs=1e-6)
        _assert_token_heat(page.evaluate(TOKENS_JS), _token_heat(runs, [top]))
        strokes = page.evaluate(STROKES_JS)  # drawn in a colour (the legend is its own)
        assert strokes and all(isinstance(c, str) and c.startswith("#") for c in strokes)
        # the difference grid opens as last − first
        cells = page.evaluate(
            "([d]) => window.reportgen.view.data(d).map((r) => [r.layer, r.head, r.diff])", [diff]
        )
        assert len(cells) == means[0].size
        for layer, head, value in cells:
            want = means[2][layer - 1, head - 1] - means[0][layer - 1, head - 1]
            assert value == pytest.approx(want, abs=2e-6)
        _assert_diff_marks(page.evaluate(DIFF_MARKS_JS), means[2] - means[0])
        # any other pair from the two menus: step 10 − step 0, then the menus the other way
        # round from the opening pair (from a later checkpoint to an earlier one)
        for first, second in ((0, 1), (2, 1)):
            page.select_option(f"select[name={views.DIFF_FROM}]", label=f"step {STEPS[first]}")
            page.select_option(f"select[name={views.DIFF_TO}]", label=f"step {STEPS[second]}")
            page.evaluate("window.reportgen.view.runAsync().then(() => 1)")
            signals = "(names) => names.map((n) => window.reportgen.view.signal(n))"
            assert page.evaluate(signals, [views.DIFF_FROM, views.DIFF_TO]) == [first, second]
            _assert_diff_marks(page.evaluate(DIFF_MARKS_JS), means[second] - means[first])
        page.evaluate("window.scrollTo(0, 0)")  # where the clicks below were measured
        # click another head in the heatmap: its trajectory replaces the first
        other = (2, 3) if top != (2, 3) else (0, 0)
        x, y = cell_center(page, "trend_heat_marks", layer=other[0] + 1, head=other[1] + 1, c=0)
        page.mouse.click(x, y)
        page.evaluate("window.reportgen.view.runAsync().then(() => 1)")
        assert page.evaluate("window.reportgen.selection()") == [[other[0] + 1, other[1] + 1]]
        drawn = page.evaluate(LINES_JS, [lines])
        assert sorted(d[1] for d in drawn) == [0, 1, 2]
        for unit, c, mean in drawn:
            assert unit == f"L{other[0] + 1} H{other[1] + 1}"
            assert mean == pytest.approx(means[c][other], abs=1e-6)
        # a vertical drag over the heatmap brushes a run of heads: all of their trajectories
        ranked = views.order(views.trends(list("abc"), [m[None] for m in means], [[], [], []]))
        run = ranked[1:5]  # the 2nd to the 5th strongest at the last checkpoint
        x0, y0 = cell_center(page, "trend_heat_marks", layer=run[0][0] + 1, head=run[0][1] + 1, c=1)
        x1, y1 = cell_center(page, "trend_heat_marks", layer=run[-1][0] + 1, head=run[-1][1] + 1,
                             c=1)  # fmt: skip
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, (y0 + y1) / 2, steps=4)
        page.mouse.move(x1, y1, steps=4)
        page.mouse.up()
        page.evaluate("window.reportgen.view.runAsync().then(() => 1)")
        want = sorted([ly + 1, h + 1] for ly, h in run)
        assert page.evaluate("window.reportgen.selection()") == want
        drawn = page.evaluate(LINES_JS, [lines])
        assert sorted(d[:2] for d in drawn) == sorted(
            [f"L{ly + 1} H{h + 1}", c] for ly, h in run for c in range(3)
        )
        for unit, c, mean in drawn:
            ly, h = (int(n) - 1 for n in unit[1:].split(" H"))
            assert mean == pytest.approx(means[c][ly, h], abs=1e-6)
        # and the token heatmaps follow: the mean over the brushed heads, per checkpoint
        _assert_token_heat(page.evaluate(TOKENS_JS), _token_heat(runs, list(run)))
        assert errors == []
        # a click on a checkpoint's grid opens that model's own report
        x, y = cell_center(page, "trend_grids_marks", layer=1, head=1, c=1)
        with page.expect_navigation():
            page.mouse.click(x, y)
        assert page.url == f"{url}/models/step-10/index.html"
        page.evaluate("window.reportgen.ready.then(() => 1)")
        assert errors == []
        browser.close()


@pytest.mark.cli
def test_cli_compares_reusing_the_runs(built: dict[str, Path], tmp_path: Path) -> None:
    from reportgen.cli import app

    runs = tmp_path / "runs"
    shutil.copytree(built["runs"], runs)
    args = ["compare", str(built["inputs"]), "--checkpoints", str(built["ckpts"])]
    args += ["--metric", METRIC, "--device", "cpu", "--runs", str(runs), "--out"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert "computing" not in result.output  # every run folder reused
    assert _files(tmp_path / "site") == _files(built["site"])
    labels = ["--label", "first", "--label", "middle", "--label", "last"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "labelled"), *labels])
    assert result.exit_code == 0, result.output
    assert "computing" not in result.output  # run folders are named by checkpoint, not label
    assert (tmp_path / "labelled" / "models" / "middle" / "index.html").is_file()
    rows = _dataset(_page_data(tmp_path / "labelled"), views.CHECKPOINTS_DATA)
    assert [r["checkpoint"] for r in rows] == ["first", "middle", "last"]


FRESH_BUILD = """
import sys
from reportgen import compare
from reportgen.settings import Settings

inputs, ckpts, runs, out = sys.argv[1:]
compare(inputs, out, checkpoints=ckpts, runs=runs, settings=Settings(metric="flow:ENV->LAN"))
print("torch" in sys.modules)
"""


@pytest.mark.e2e
def test_builds_in_fresh_processes_are_byte_identical(
    built: dict[str, Path], tmp_path: Path
) -> None:
    """Two processes (other hash seeds) rendering the same run folders write the same bytes,
    and reusing every run folder never imports torch."""
    runs = tmp_path / "runs"
    shutil.copytree(built["runs"], runs)
    common = [str(built["inputs"]), str(built["ckpts"]), str(runs)]
    outs = in_fresh_processes(
        FRESH_BUILD, [*common, str(tmp_path / "a")], [*common, str(tmp_path / "b")]
    )
    assert [o.strip() for o in outs] == ["False", "False"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == _files(built["site"])


# --- grounding information gain ---------------------------------------------------------------


def _grounded(env: str, lan: str, target: str, **more: object) -> dict:
    segments = [{"name": "ENV", "text": env}, {"name": "LAN", "text": lan}]
    return {"id": target, "segments": segments, "target": target, **more}


GROUNDED = [
    _grounded("<CHI> painted a picture of a horse", "<CHI> my favorite animal is the", "horse"),
    _grounded("<MOT> saw a big dog", "<CHI> my favorite animal is the", "dog"),
    _grounded("<CHI> played with a red ball", "<CHI> my favorite toy is the", "ball"),
    _grounded("<MOT> saw a dog and a cat", "<CHI> my favorite animal is the", "cat"),
]


@pytest.mark.unit
def test_counterfactuals_swap_and_fields() -> None:
    from reportgen.data.grounding import counterfactuals, describe
    from reportgen.errors import InputError, SaliencyError
    from reportgen.pipeline import load_examples

    examples = load_examples(GROUNDED)
    assert counterfactuals(examples, None) is None  # neither given: no information gain
    swapped = counterfactuals(examples, "swap:ENV")
    assert swapped is not None
    envs = [ex.segments[0].text for ex in examples]
    # the next input whose ENV differs, with another target not named in it: the dog's next
    # is the ball's; the ball's next (the cat's) names no ball; the cat's wraps to the horse's
    assert [cf.segments[0].text for cf in swapped] == [envs[1], envs[2], envs[3], envs[0]]
    assert [cf.segments[1] for cf in swapped] == [ex.segments[1] for ex in examples]
    assert [(cf.id, cf.target) for cf in swapped] == [(ex.id, ex.target) for ex in examples]
    # the dog's ENV swapped into the input whose target is dog is skipped: it names the target
    named = load_examples([GROUNDED[3], GROUNDED[1], GROUNDED[0]])  # cat, dog, horse
    got = counterfactuals(named, "swap:ENV")
    assert got is not None and got[0].segments[0].text == envs[1]  # the cat's: dog's ENV
    assert got[1].segments[0].text == envs[0]  # the dog's: not the cat's ENV (names dog)
    assert "ENV segment of another input" in describe("swap:ENV")
    own = [dict(g, counterfactual={"ENV": "<MOT> ate an apple"}) for g in GROUNDED]
    fields = counterfactuals(load_examples(own), None)
    assert fields is not None
    assert [cf.text for cf in fields] == [
        "<MOT> ate an apple " + g["segments"][1]["text"] for g in GROUNDED
    ]
    with pytest.raises(SettingsError, match="give one of them"):
        counterfactuals(load_examples(own), "swap:ENV")
    with pytest.raises(SaliencyError, match="input 'dog' has no \"counterfactual\""):
        counterfactuals(load_examples([own[0], GROUNDED[1]]), None)
    with pytest.raises(SaliencyError, match="input 'x' has no \"target\""):
        no_target = {k: v for k, v in GROUNDED[0].items() if k != "target"}
        counterfactuals(load_examples([*GROUNDED, {**no_target, "id": "x"}]), "swap:ENV")
    with pytest.raises(SaliencyError, match="has no segment 'SCENE' to swap"):
        counterfactuals(examples, "swap:SCENE")
    with pytest.raises(SaliencyError, match="no other input has a ENV segment that differs"):
        counterfactuals(load_examples([GROUNDED[1], GROUNDED[3]]), "swap:ENV")
    with pytest.raises(SettingsError, match="give swap:SEGMENT"):
        counterfactuals(examples, "shuffle")
    bad = [
        ({"ENV": "<MOT> saw a big dog"}, "is the input's own text"),
        ({"SCENE": "x"}, "names segment 'SCENE', which the input lacks"),
        ({"ENV": ""}, "must be a non-empty string"),
        (["ENV"], "must be a non-empty JSON object"),
    ]
    for value, message in bad:
        with pytest.raises(InputError, match=re.escape(message)):
            load_examples([dict(GROUNDED[1], counterfactual=value)])


def _plain_gains(folder: Path, pairs: list[tuple[str, str, str]]) -> list[float]:
    """Per (text, counterfactual text, target): −log p(target | counterfactual) + log p(target |
    text), from one plain forward pass each (float64)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(folder)

    def surprisal(text: str, target: str) -> float:
        [target_id] = tok(target, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
        return -float(torch.log_softmax(logits, -1)[target_id])

    return [surprisal(cf, t) - surprisal(text, t) for text, cf, t in pairs]


@pytest.mark.e2e
def test_information_gain_equals_two_plain_forwards(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reportgen.engine
    from reportgen import compare
    from reportgen.data.grounding import counterfactuals
    from reportgen.pipeline import load_examples

    folders = [built["ckpts"] / "checkpoint-0", built["ckpts"] / "checkpoint-200"]
    settings = replace(SETTINGS, dtype="float64")
    runs = tmp_path / "runs"
    report = compare(
        GROUNDED, tmp_path / "site", models=[str(f) for f in folders], settings=settings,
        runs=runs, counterfactual="swap:ENV",
    )  # fmt: skip
    examples = load_examples(GROUNDED)
    others = counterfactuals(examples, "swap:ENV")
    assert others is not None
    data = _page_data(report.site)
    rows = _dataset(data, views.CHECKPOINTS_DATA)
    html = (report.site / "index.html").read_text("utf-8")
    assert 'data-rg="information-gain"' in html
    for c, folder in enumerate(folders):
        pairs = [(ex.text, cf.text, ex.target or "") for ex, cf in zip(examples, others)]
        want = _plain_gains(folder, pairs)
        kept = json.loads((runs / f"{folder.name}.grounding.json").read_text("utf-8"))
        got = [g["counterfactual"] - g["own"] for g in kept["gains"]]
        assert [g["id"] for g in kept["gains"]] == [ex.id for ex in examples]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        assert rows[c]["gain"] == pytest.approx(np.mean(want), abs=1e-6)
        assert rows[c]["gain_hi"] - rows[c]["gain_lo"] == pytest.approx(2 * np.std(want), abs=2e-6)
    assert "trend_gain" in data["names"]["views"]
    # again: the run folders and the gains are reused, nothing is loaded, the same bytes
    loads: list[str] = []
    monkeypatch.setattr(reportgen.engine, "load_model", lambda *a, **k: loads.append(a[0]))
    again = compare(
        GROUNDED, tmp_path / "again", models=[str(f) for f in folders], settings=settings,
        runs=runs, counterfactual="swap:ENV",
    )  # fmt: skip
    assert loads == []
    assert _files(again.site) == _files(report.site)


@pytest.mark.unit
def test_gain_rows_and_chart_equal_numpy() -> None:
    rng = np.random.default_rng(2)
    scores = [rng.dirichlet(np.ones(6), size=4).reshape(4, 2, 3) for _ in range(2)]
    gains = [rng.normal(size=4), rng.normal(1.0, size=4)]
    trend = views.trends(["a", "b"], scores, [[0.5], [0.7]], gains=gains)
    spec = views.compare_spec(trend)
    rows = spec["datasets"][views.CHECKPOINTS_DATA]
    for c, g in enumerate(gains):
        assert rows[c]["gain"] == pytest.approx(g.mean(), abs=1e-6)
        assert rows[c]["gain_lo"] == pytest.approx(g.mean() - g.std(), abs=1e-6)
        assert rows[c]["gain_hi"] == pytest.approx(g.mean() + g.std(), abs=1e-6)
    assert views.TREND_GAIN in json.dumps(spec)
    assert views.compare_names(gain=True)["views"][-1] == views.TREND_GAIN
    plain = views.compare_spec(views.trends(["a", "b"], scores, [[0.5], [0.7]]))
    assert views.TREND_GAIN not in json.dumps(plain)
    assert [set(r) for r in plain["datasets"][views.CHECKPOINTS_DATA]] == [
        {"c", "checkpoint", "value"}
    ] * 2


@pytest.fixture(scope="module")
def single(built: dict[str, Path]) -> Path:
    """The same comparison as one file (the runs reused: nothing computed again)."""
    from reportgen import compare

    path = built["root"] / "comparison.html"
    settings = replace(SETTINGS, single_file=path)
    report = compare(built["inputs"], built["root"] / "site-single", checkpoints=built["ckpts"],
                     settings=settings, runs=built["runs"])  # fmt: skip
    assert report.single_file == path
    return path


@pytest.mark.e2e
def test_the_single_file_holds_the_comparison_without_links_out(
    built: dict[str, Path], single: Path
) -> None:
    from reportgen.site.writer import is_single_file

    html = single.read_text("utf-8")
    assert is_single_file(single)
    assert 'data-rg="single-note"' in html and "models/" not in html.replace(
        "<code>models/</code>", ""
    )
    sections = re.findall(r'<section class="rg-page" id="rg-page-([^"]+)"', html)
    assert sections == ["index"]
    packed = re.search(
        r'<script type="application/gzip" class="rg-page-data">(.*?)</script>', html, re.S
    )
    assert packed
    data = json.loads(gzip.decompress(base64.b64decode(packed.group(1))))
    site = _page_data(built["site"])
    # the same numbers as the site's page; only the grids' links to the models' reports differ
    for name in (views.UNITS_DATA, views.CHECKPOINTS_DATA):
        assert _dataset(data, name) == _dataset(site, name)
    assert "href" in json.dumps(site["spec"]) and "href" not in json.dumps(data["spec"])


@pytest.mark.browser
def test_the_single_file_comparison_works_in_a_sandboxed_iframe(
    built: dict[str, Path], single: Path, tmp_path: Path
) -> None:
    from browser import launch
    from playwright.sync_api import sync_playwright

    from reportgen.site.writer import iframe_html

    host = tmp_path / "host.html"
    host.write_text(f"<!doctype html><title>host</title>{iframe_html(single)}", "utf-8")
    runs = built["runs"]
    means = [_scores(runs, f"checkpoint-{s}").mean(axis=0) for s in STEPS]
    data = _page_data(built["site"])
    lines = _mark_source(data["spec"], "trend_lines_0_pathgroup")
    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(host.as_uri())
        frame = page.frames[1]
        frame.wait_for_url("about:srcdoc")
        frame.wait_for_function("() => window.reportgen && window.reportgen.view")
        frame.evaluate("window.reportgen.ready.then(() => 1)")
        top = views.order(views.trends(list("abc"), [m[None] for m in means], [[], [], []]))[0]
        assert frame.evaluate("window.reportgen.selection()") == [[top[0] + 1, top[1] + 1]]
        drawn = frame.evaluate(LINES_JS, [lines])
        assert sorted(d[1] for d in drawn) == [0, 1, 2]
        for _, c, mean in drawn:
            assert mean == pytest.approx(means[c][top], abs=1e-6)
        assert frame.locator("[data-rg=single-note]").is_visible()
        assert errors == []
        assert [u for u in requests if not u.startswith(("file:", "about:", "data:"))] == []
        browser.close()


@pytest.mark.unit
def test_token_rows_keep_each_heads_strongest_cells_as_shares() -> None:
    rng = np.random.default_rng(4)
    t, layers, heads, k = 5, 2, 3, 7
    made = []
    for _ in range(2):
        values = -rng.random((layers, heads, k)).astype(np.float32)  # signed: magnitudes kept
        cells = np.stack([rng.permutation(t * t)[:k] for _ in range(layers * heads)])
        cells = cells.reshape(layers, heads, k).astype(np.int32)
        cells[1, 2, 3:] = -1  # a head with only three non-zero cells
        total = rng.random((layers, heads)) + 2.0
        total[0, 1] = 0.0  # a head without saliency: no rows
        made.append(views.TokenCells(cells, values, total))
    rows = views.token_rows(made, t, keep=4)
    for c, got in enumerate(made):
        for ly in range(layers):
            for h in range(heads):
                mine = [r for r in rows if (r["c"], r["l"], r["h"]) == (c, ly + 1, h + 1)]
                n = 0 if (ly, h) == (0, 1) else 3 if (ly, h) == (1, 2) else 4
                assert len(mine) == n
                for r, cell, value in zip(mine, got.top_cells[ly, h], got.top_values[ly, h]):
                    assert (r["q"], r["k"]) == divmod(int(cell), t)
                    assert r["v"] == pytest.approx(abs(value) / got.total[ly, h], abs=1e-6)


@pytest.mark.cli
def test_an_unknown_heat_input_is_refused_before_computing(tmp_path: Path) -> None:
    from reportgen.cli import app

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(item) + "\n" for item in DEMO_INPUTS), "utf-8")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "config.json").write_text("{}", "utf-8")
        (folder / "model.safetensors").write_bytes(b"")
    argv = ["compare", str(inputs), "--model", str(a), "--model", str(b)]
    result = CliRunner().invoke(app, [*argv, "--heat-input", "nope", "--out", str(tmp_path / "s")])
    assert result.exit_code != 0
    assert "--heat-input 'nope': no input has that id" in result.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.runs").exists()


ALT_PICKED_JS = """
() => [...document.querySelectorAll('[data-rg=alt-picked] tbody tr')].map(
  (tr) => [...tr.cells].map((td) => td.textContent))
"""


@pytest.mark.browser
def test_the_keyboard_moves_along_the_heatmap_and_the_tables_follow(
    built: dict[str, Path],
) -> None:
    from browser import launch, serve
    from playwright.sync_api import sync_playwright

    site, runs = built["site"], built["runs"]
    means = [_scores(runs, f"checkpoint-{s}").mean(axis=0) for s in STEPS]
    ranked = views.order(views.trends(list("abc"), [m[None] for m in means], [[], [], []]))
    labels = [f"step {s}" for s in STEPS]
    lines = _mark_source(_page_data(site)["spec"], "trend_lines_0_pathgroup")

    def picked_rows(units: list[tuple[int, int]]) -> list[list[str]]:
        return [
            [f"L{ly + 1} H{h + 1}", labels[c], f"{100 * means[c][ly, h]:.2f}%"]
            for ly, h in units
            for c in range(3)
        ]

    with sync_playwright() as pw, serve(site) as url:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{url}/index.html")
        page.evaluate("window.reportgen.ready.then(() => 1)")
        # the static table: the strongest heads at the last checkpoint, at every checkpoint
        top = page.evaluate(
            "() => [...document.querySelectorAll('[data-rg=alt-top] tbody tr')].map("
            "(tr) => [...tr.cells].map((td) => td.textContent))"
        )
        assert [row[0] for row in top] == [f"L{ly + 1} H{h + 1}" for ly, h in ranked[:10]]
        for row, (ly, h) in zip(top, ranked, strict=False):
            assert row[1:] == [f"{100 * means[c][ly, h]:.1f}%" for c in range(3)]
        assert page.evaluate(ALT_PICKED_JS) == picked_rows(ranked[:1])

        def press(key: str) -> list[list[int]]:
            page.keyboard.press(key)
            page.evaluate("window.reportgen.settled().then(() => 1)")
            return page.evaluate("window.reportgen.selection()")

        for _ in range(40):  # Tab through the page until the chart has the focus
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement.dataset.rg === 'chart'"):
                break
        else:
            pytest.fail("Tab never reaches the chart")
        assert press("ArrowDown") == [[ranked[1][0] + 1, ranked[1][1] + 1]]
        assert page.evaluate(ALT_PICKED_JS) == picked_rows(ranked[1:2])
        press("Shift+ArrowDown")
        run = ranked[1:4]
        assert press("Shift+ArrowDown") == sorted([ly + 1, h + 1] for ly, h in run)
        assert sorted(page.evaluate(ALT_PICKED_JS)) == sorted(picked_rows(run))
        drawn = page.evaluate(LINES_JS, [lines])  # the trajectories follow the keyboard
        assert sorted(d[0] for d in drawn) == sorted(f"L{ly + 1} H{h + 1}" for ly, h in run * 3)
        assert press("Escape") == []
        assert page.evaluate(ALT_PICKED_JS) == [["Nothing selected."]]
        assert press("Enter") == [[ranked[3][0] + 1, ranked[3][1] + 1]]
        assert errors == []
        browser.close()
