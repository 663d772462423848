"""A long input's page in Chromium: the overview of block sums, zoom in and out (mouse, Back,
Escape), linked to the grid, token search, each drawn value against numpy computed here from
the record's dense S. The run: a tiny random GPT-2 (2 layers × 3 heads) on one 300-token input
(and one short input, drawn as before), stored with --store dense (conftest's `long_run`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import cell_center, launch
from conftest import LONG_T as T

from reportgen.charts import GRID_CELLS
from reportgen.data.results import default_top_k
from reportgen.records import Run

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_url(long_site: Path) -> str:
    """The long input's page (the run is conftest's `long_run`, shared with test_browser_access)."""
    [page] = (long_site / "examples").glob("0001-*.html")
    return page.as_uri()


@pytest.fixture(scope="module")
def page(page_url: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        tab = chromium.new_page(viewport={"width": 1400, "height": 1100})
        problems: list[str] = []
        tab.on("pageerror", lambda e: problems.append(str(e)))
        tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        tab.on("request", lambda r: None if r.url.startswith("file:") else problems.append(r.url))
        tab.goto(page_url)
        tab.evaluate("() => window.reportgen.ready")
        yield tab
        chromium.close()
        assert problems == []


def settle(page: Any) -> None:
    page.evaluate("() => window.reportgen.settled().then(() => true)")


def drawn(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("() => window.reportgen.long.drawn()"))


def heads(page: Any) -> list[tuple[int, int]]:
    return [(a - 1, b - 1) for a, b in page.evaluate("() => window.reportgen.selection()")]


def caption(page: Any) -> str:
    return str(page.evaluate("() => document.querySelector('[data-rg=caption]').textContent"))


def block_center(page: Any, edges: np.ndarray, rb: int, cb: int) -> tuple[float, float]:
    page.evaluate("() => document.querySelector('[data-rg=heat-canvas]').scrollIntoView()")
    box = page.evaluate("() => window.reportgen.long.layout()")
    side = box["side"]
    x = box["left"] + (edges[cb] + edges[cb + 1]) / 2 / T * side
    y = box["top"] + (edges[rb] + edges[rb + 1]) / 2 / T * side
    return x, y


def expected_overview(run: Run, chosen: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Each block's share of the chosen heads' total, from the dense S, in numpy."""
    result = run.result(0)
    dense = np.abs(np.asarray(result.dense, np.float64))
    edges = result.stats.edges
    total = sum(dense[layer, head].sum() for layer, head in chosen)
    out = {}
    n = len(edges) - 1
    for q in range(n):
        for k in range(n):
            s = sum(
                dense[layer, head, edges[q] : edges[q + 1], edges[k] : edges[k + 1]].sum()
                for layer, head in chosen
            )
            if s > 0:
                out[(int(edges[q]), int(edges[k]))] = s / total
    return out


def assert_overview(page: Any, run: Run) -> None:
    got = drawn(page)
    assert got["mode"] == "overview"
    want = expected_overview(run, heads(page))
    items = {(it["row0"], it["col0"]): it["share"] for it in got["items"]}
    assert items.keys() == want.keys()
    for key, share in want.items():
        assert items[key] == pytest.approx(share, rel=2e-3, abs=1e-9), key
    assert sum(items.values()) == pytest.approx(1.0, abs=2e-3)
    assert "the overview's blocks carry 100.0% of its saliency" in caption(page)


def test_the_overview_shows_every_blocks_exact_share(page: Any, long_run: Run) -> None:
    assert page.evaluate("() => window.reportgen.long.state().mode") == "overview"
    assert_overview(page, long_run)


def test_the_overview_follows_a_click_and_a_brush_on_the_grid(page: Any, long_run: Run) -> None:
    mark = f"{GRID_CELLS}_marks"
    page.mouse.click(*cell_center(page, mark, layer=2, head=3))
    settle(page)
    assert heads(page) == [(1, 2)]
    assert_overview(page, long_run)
    page.mouse.dblclick(*cell_center(page, mark, layer=1, head=1))
    settle(page)
    page.mouse.move(*cell_center(page, mark, layer=1, head=1))
    page.mouse.down()
    page.mouse.move(*cell_center(page, mark, layer=2, head=2), steps=4)
    page.mouse.up()
    settle(page)
    assert heads(page) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert_overview(page, long_run)


def test_a_click_zooms_into_a_block_at_token_resolution_and_escape_zooms_out(
    page: Any, long_run: Run
) -> None:
    result = long_run.result(0)
    edges = result.stats.edges
    chosen = heads(page)
    best = max(drawn(page)["items"], key=lambda it: it["share"])
    rb, cb = list(edges).index(best["row0"]), list(edges).index(best["col0"])
    page.mouse.click(*block_center(page, edges, rb, cb))
    state = page.evaluate("() => window.reportgen.long.state()")
    assert state["mode"] == "zoom" and state["region"] == [rb, rb + 1, cb, cb + 1]
    settle(page)
    got = drawn(page)
    # numpy: the kept cells (default top-k) of the chosen heads inside the block, summed
    dense = np.abs(np.asarray(result.dense, np.float64))
    k = default_top_k(T)
    total = sum(dense[layer, head].sum() for layer, head in chosen)
    rows, cols = (edges[rb], edges[rb + 1]), (edges[cb], edges[cb + 1])
    want: dict[tuple[int, int], float] = {}
    for layer, head in chosen:
        for cell in result.stats.top_cells[layer, head, :k]:
            i, j = divmod(int(cell), T)
            if cell >= 0 and rows[0] <= i < rows[1] and cols[0] <= j < cols[1]:
                want[(i, j)] = want.get((i, j), 0.0) + dense[layer, head, i, j]
    items = {(it["row"], it["col"]): it["share"] for it in got["items"]}
    assert items.keys() == want.keys() and want
    for key, value in want.items():
        assert items[key] == pytest.approx(value / total, rel=1e-5), key
    region = sum(dense[lh[0], lh[1], rows[0] : rows[1], cols[0] : cols[1]].sum() for lh in chosen)
    share_in_region = 100 * region / total
    carried = 100 * sum(want.values()) / region
    text = caption(page)
    assert f"this region holds {share_in_region:.1f}% of its saliency" in text
    assert f"the {len(want)} cells drawn carry {carried:.1f}% of the region's" in text
    assert page.evaluate("() => document.querySelector('[data-rg=zoom-out]').disabled") is False
    page.keyboard.press("Escape")
    settle(page)
    assert page.evaluate("() => window.reportgen.long.state().mode") == "overview"
    assert page.evaluate("() => document.querySelector('[data-rg=zoom-out]').disabled") is True
    assert_overview(page, long_run)


def test_a_drag_zooms_into_the_blocks_it_covers_and_back_zooms_out(
    page: Any, long_run: Run
) -> None:
    edges = long_run.result(0).stats.edges
    page.mouse.move(*block_center(page, edges, 40, 3))
    page.mouse.down()
    page.mouse.move(*block_center(page, edges, 50, 12), steps=5)
    page.mouse.up()
    state = page.evaluate("() => window.reportgen.long.state()")
    assert state["mode"] == "zoom" and state["region"] == [40, 51, 3, 13]
    got = drawn(page)
    assert got["rows"] == [int(edges[40]), int(edges[51])]
    assert got["cols"] == [int(edges[3]), int(edges[13])]
    assert all(edges[40] <= it["row"] < edges[51] for it in got["items"])
    page.click("[data-rg=zoom-out]")
    settle(page)
    assert_overview(page, long_run)


def test_hover_shows_a_blocks_token_range_and_search_marks_tokens(page: Any, long_run: Run) -> None:
    result = long_run.result(0)
    edges = result.stats.edges
    page.mouse.move(*block_center(page, edges, 20, 5))
    tip = page.locator("[data-rg=tooltip]")
    tip.wait_for(state="visible")
    text = tip.text_content() or ""
    assert f"{edges[20]}–{edges[21] - 1}: {result.tokens[int(edges[20])]}" in text
    assert f"{edges[5]}–{edges[6] - 1}" in text
    page.mouse.move(0, 0)
    word = result.tokens[T - 5]
    page.fill("[data-rg=token-search]", word)
    count = sum(word.lower() in t.lower() for t in result.tokens)
    assert page.locator("[data-rg=token-hits]").text_content() == f"{count} found"
    assert page.locator(".rg-tok-hit").count() == count
    page.locator(".rg-tok").nth(7).click()
    assert page.evaluate("() => window.reportgen.long.state().picked") == {"query": 7, "key": 7}
    assert page.locator(".rg-tok-query").count() == 1


def test_the_keyboard_moves_and_extends_the_selection_and_the_overview_follows(
    page: Any, long_run: Run
) -> None:
    """Tab reaches the grid; arrow keys move the selected head, Shift extends a block, and the
    overview redraws each selection's exact shares; zoomed in, Escape zooms out and keeps the
    selection; in the overview it clears it."""
    mark = f"{GRID_CELLS}_marks"
    page.evaluate("() => window.scrollTo(0, 0)")  # the grid on screen, to click it
    page.mouse.dblclick(*cell_center(page, mark, layer=2, head=3))  # clears (a brush too)
    settle(page)
    page.wait_for_timeout(600)  # so that the next click is a click of its own
    page.mouse.click(*cell_center(page, mark, layer=1, head=1))
    settle(page)
    assert heads(page) == [(0, 0)]
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    for _ in range(40):  # Tab through the page until the grid has the focus
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.rg === 'chart'"):
            break
    else:
        pytest.fail("Tab never reaches the grid")
    page.keyboard.press("ArrowRight")
    settle(page)
    assert heads(page) == [(0, 1)]
    assert caption(page).startswith("L1 H2")
    assert_overview(page, long_run)
    page.keyboard.press("Shift+ArrowDown")
    settle(page)
    assert heads(page) == [(0, 1), (1, 1)]
    assert_overview(page, long_run)
    page.evaluate("() => window.reportgen.long.zoom([0, 4, 0, 4])")
    settle(page)
    page.focus("[data-rg=chart]")
    page.keyboard.press("Escape")
    settle(page)
    assert page.evaluate("() => window.reportgen.long.state().mode") == "overview"
    assert heads(page) == [(0, 1), (1, 1)], "Escape zoomed out and kept the selection"
    page.keyboard.press("Escape")
    settle(page)
    assert heads(page) == []
    page.keyboard.press("Enter")
    settle(page)
    assert heads(page) == [(1, 1)], "Enter selects the head under the cursor"
    assert_overview(page, long_run)


ALT_ROWS_JS = """
() => [...document.querySelectorAll('[data-rg=alt-cells] tbody tr')].map(
  (tr) => [...tr.cells].map((td) => td.textContent))
"""


def test_the_text_alternative_lists_the_strongest_blocks_then_cells(
    page: Any, long_run: Run
) -> None:
    """The chart as tables: the overview's ten strongest blocks of the selection (token ranges
    and shares, against numpy from the dense S), and once zoomed, the region's strongest cells."""
    mark = f"{GRID_CELLS}_marks"
    page.evaluate("() => window.scrollTo(0, 0)")
    page.mouse.dblclick(*cell_center(page, mark, layer=1, head=1))
    settle(page)
    page.wait_for_timeout(600)
    page.mouse.click(*cell_center(page, mark, layer=2, head=2))
    settle(page)
    assert heads(page) == [(1, 1)]
    want = expected_overview(long_run, [(1, 1)])
    edges = np.asarray(long_run.result(0).stats.edges)
    strongest = sorted(want.items(), key=lambda item: (-item[1], item[0]))[:10]
    rows = page.evaluate(ALT_ROWS_JS)
    assert len(rows) == len(strongest) == 10
    end = {int(a): int(b) for a, b in itertools.pairwise(edges)}
    for (query, key, share), ((q0, k0), value) in zip(rows, strongest, strict=True):
        assert query.endswith(f"({q0}–{end[q0] - 1})"), query  # rows are queries on this page
        assert key.endswith(f"({k0}–{end[k0] - 1})"), key
        assert float(share.rstrip("%")) == pytest.approx(100 * value, rel=2e-3, abs=0.006)
    caption = "() => document.querySelector('[data-rg=alt-cells-caption]').textContent"
    assert page.evaluate(caption) == "Strongest blocks of the selection"
    (q0, k0), _ = strongest[0]  # zoom into the strongest block (block indices)
    rb, cb = list(edges).index(q0), list(edges).index(k0)
    page.evaluate("([r]) => window.reportgen.long.zoom(r)", [[rb, rb + 1, cb, cb + 1]])
    settle(page)
    assert page.evaluate(caption) == "Strongest cells of the zoomed region"
    cells = page.evaluate(ALT_ROWS_JS)
    assert 0 < len(cells) <= 10 and all(q.endswith(")") and "–" not in q for q, _, _ in cells)
    page.evaluate("() => window.reportgen.long.back()")
    settle(page)


def test_the_map_and_token_strip_stay_put_as_the_caption_grows(page: Any, page_url: str) -> None:
    """Selecting every head and zooming in makes the caption two lines at this width; the map
    and the token strip below it do not move (a move would repaint thousands of tokens)."""
    where = """() => ['[data-rg=caption]', '[data-rg=heat-canvas]', '[data-rg=token-strip]']
      .map((s) => document.querySelector(s).getBoundingClientRect())
      .map((r) => [r.height, r.top + window.scrollY])"""
    tab = page.context.browser.new_page(viewport={"width": 900, "height": 1100})
    try:
        tab.goto(page_url)
        tab.evaluate("() => window.reportgen.ready.then(() => true)")
        before = tab.evaluate(where)
        mark = f"{GRID_CELLS}_marks"
        tab.mouse.move(*cell_center(tab, mark, layer=1, head=1))
        tab.mouse.down()  # a brush over the whole grid
        tab.mouse.move(*cell_center(tab, mark, layer=2, head=3), steps=4)
        tab.mouse.up()
        settle(tab)
        tab.evaluate("() => window.reportgen.long.zoom([0, 2, 0, 2])")
        settle(tab)
        after = tab.evaluate(where)
        assert len(heads(tab)) > 1 and "this region holds" in caption(tab)
    finally:
        tab.close()
    line = before[0][0]
    assert after[0][0] > 1.5 * line, (before, after)  # the caption did grow to two lines
    assert after[1:] == before[1:]


def test_the_pngs_map_has_its_axes(page: Any) -> None:
    """The map is drawn in layers (cells; labels, brackets and colour bar); the PNG's map has
    both: its label column, blank on the cells' layer, is drawn."""
    inked = """() => {
      const img = window.reportgen.long.image();
      const g = img.getContext('2d');
      const ratio = img.width / parseFloat(img.style.width || img.width);
      const box = document.querySelector('[data-rg=heat-canvas] canvas');
      const cells = box.getContext('2d');
      const w = Math.round(140 * (box.width / parseFloat(box.style.width)));
      const h = box.height;
      const count = (data) => data.filter((v, i) => i % 4 === 3 && v > 0).length;
      return [count(g.getImageData(0, 0, w, h).data), count(cells.getImageData(0, 0, w, h).data)];
    }"""
    in_png, on_cells_layer = page.evaluate(inked)
    assert on_cells_layer == 0 and in_png > 100
