"""The example page of a run with a rollout, Wang et al.'s flow and attribution patching, in
headless Chromium from file://: it draws without errors or requests, and the views by layer
follow the grid's selection (click a head in layer 2: layer 2 is outlined and marked)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from architectures import FAMILIES, build, inputs_for
from browser import cell_center, launch

from reportgen.pipeline import compute, render
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
def page_url(tmp_path_factory: pytest.TempPathFactory) -> str:
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
    return page.as_uri()


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
