"""The example page of a run with a rollout, Wang et al.'s flow and attribution patching, in
headless Chromium from file://: it draws without errors or requests, the views by layer
follow the grid's selection (click a head in layer 2: layer 2 is outlined and marked), and a
click on a layer of the rollout chart selects that layer's heads in the grid."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from architectures import FAMILIES, build, inputs_for
from browser import assert_heat, cell_center, expected_heat, heat_cells, launch

from reportgen.pipeline import compute, render
from reportgen.records import Run
from reportgen.settings import Settings

pytestmark = pytest.mark.browser

LAYERS_OF_MARK_JS = """
(name) => {
  const found = [];
  function walk(mark) {
    if (!mark) return;
    if (mark.name === name) for (const item of mark.items) found.push(item.datum.layer);
    if (mark.marktype === "group")
      for (const group of mark.items) for (const child of group.items || []) walk(child);
  }
  walk(window.reportgen.view.scenegraph().root);
  return found.sort();
}
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Run]:
    """The example page's URL and its run (one input, grad-rollout, patching)."""
    root = tmp_path_factory.mktemp("browser-methods")
    folder = build(FAMILIES["gpt2"], root / "gpt2")
    settings = Settings(
        model=str(folder),
        method="grad-rollout",
        patching=True,
        dtype="float64",
        device="cpu",
        ablate_k=0,
        metric="flow:ENV->LAN",
    )
    run = compute(inputs_for(FAMILIES["gpt2"])[:1], root / "run", settings)
    render(run, root / "site", settings)
    [page] = sorted((root / "site" / "examples").glob("*.html"))
    return page.as_uri(), run


@pytest.fixture(scope="module")
def page_url(made: tuple[str, Run]) -> str:
    return made[0]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def test_views_by_layer_follow_the_grid(browser: Any, page_url: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(page_url)
        assert page.evaluate("() => window.reportgen.ready.then(v => !!v)")
        before = page.evaluate(LAYERS_OF_MARK_JS, "relevance_outline_marks")
        assert len(before) == 1  # the top head's layer
        x, y = cell_center(page, "grid_cells_marks", layer=2, head=3)
        page.mouse.move(x, y, steps=3)
        page.mouse.down()
        page.mouse.up()
        page.evaluate("() => window.reportgen.settled().then(() => true)")
        assert page.evaluate(LAYERS_OF_MARK_JS, "relevance_outline_marks") == [2]
        outlined = page.evaluate(
            """() => { const out = [];
              (function walk(m) { if (!m) return;
                if (m.name === "patching_outline_marks")
                  for (const i of m.items) out.push([i.datum.layer, i.datum.head]);
                if (m.marktype === "group")
                  for (const g of m.items) for (const c of g.items || []) walk(c); })(
                window.reportgen.view.scenegraph().root);
              return out; }"""
        )
        assert outlined == [[2, 3]]
        assert page.locator("[data-rg=patching] tbody tr").count() == 3
    finally:
        context.close()
    assert problems == []
    assert all(u.startswith(("file://", "data:", "blob:")) for u in requests)


def test_a_click_on_a_layer_of_the_rollout_chart_selects_its_heads(
    browser: Any, made: tuple[str, Run]
) -> None:
    url, run = made
    layers, heads = run.info.num_layers, run.info.num_heads
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    def settle() -> None:
        page.evaluate("() => window.reportgen.settled().then(() => true)")

    def selection() -> list[list[int]]:
        return page.evaluate("() => window.reportgen.selection()")  # type: ignore[no-any-return]

    try:
        page.goto(url)
        assert page.evaluate("() => window.reportgen.ready.then(v => !!v)")
        [start] = selection()  # the top head
        layer = layers if start[0] != layers else 1
        x, y = cell_center(page, "relevance_cells_marks", layer=layer, j=1)
        page.mouse.click(x, y)
        settle()
        whole = [[layer, h] for h in range(1, heads + 1)]
        assert selection() == whole
        assert page.evaluate(LAYERS_OF_MARK_JS, "relevance_outline_marks") == [layer]
        want = expected_heat(run, 0, [(layer - 1, h - 1) for h in range(1, heads + 1)])
        assert_heat(heat_cells(page), want)
        caption = page.inner_text("[data-rg=caption]")
        assert caption.startswith(
            f"{heads} heads: " + ", ".join(f"L{layer} H{h}" for _, h in whole)
        )
        # The keyboard goes on from there as from a block it selected: Shift+arrow adds a layer.
        page.locator("[data-rg=chart]").focus()
        other = layer - 1 if layer == layers else layer + 1
        page.keyboard.press("Shift+ArrowUp" if layer == layers else "Shift+ArrowDown")
        settle()
        assert selection() == sorted(whole + [[other, h] for h in range(1, heads + 1)])
    finally:
        context.close()
    assert problems == []
