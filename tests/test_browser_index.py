"""The index of a few hundred inputs in Chromium: sorting, filtering and paging the table, and
clicking a head of the dataset grid, each checked against the run's numbers computed here; a
12 × 12 grid fitting its card at 390 and 715 px; the single file with a bounded set of pages
inside <iframe sandbox="allow-scripts">."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import cell_center, launch
from synthetic import write_run

from reportgen import site
from reportgen.records import Run, RunWriter
from reportgen.settings import Settings

pytestmark = pytest.mark.browser

COUNT = 240
WORDS = ["dog", "cat", "ball", "horse"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("index-run")
    items = [
        {
            "id": f"n{i}",
            "segments": [
                {"name": "ENV", "text": f"<CHI> saw a {WORDS[i % 4]} and a {WORDS[i % 3]}"},
                {"name": "LAN", "text": "<CHI> look at the"},
            ],
            "target": WORDS[i % 4],
        }
        for i in range(COUNT)
    ]
    first = write_run(root / "first", items)
    # every fifth input predicted wrong, so the correct/incorrect filter has both kinds
    with RunWriter(root / "run", first.info) as writer:
        for i, result in enumerate(first.results()):
            writer.add(replace(result, predicted="cat") if i % 5 == 0 else result)
    return Run.open(root / "run")


@pytest.fixture(scope="module")
def www(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index-www")
    settings = Settings(pages=30, page_ids=("n3",), single_file=root / "single.html")
    site.render_site(run, root / "site", settings)
    host = f"<!doctype html><title>host</title>{site.iframe_html(root / 'single.html')}"
    (root / "host.html").write_text(host, "utf-8")
    return root


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def _tab(chromium: Any, width: int, height: int) -> Any:
    """A page in a fresh context, `width` × `height` px, recording its errors (`problems`)."""
    tab = chromium.new_context(viewport={"width": width, "height": height}).new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.problems = problems
    return tab


@pytest.fixture(scope="module")
def page(www: Path, chromium: Any) -> Iterator[Any]:
    tab = _tab(chromium, 1280, 1000)
    yield tab
    tab.context.close()
    assert tab.problems == []


def _open(page: Any, www: Path) -> None:
    page.goto((www / "site" / "index.html").as_uri())
    assert page.evaluate("() => window.reportgen.ready.then(v => !!v)")


def _order(page: Any) -> list[int]:
    return list(page.evaluate("() => window.reportgen.index.order()"))


def _rows_shown(page: Any) -> list[int]:
    return list(
        page.evaluate(
            "() => [...document.querySelectorAll('[data-rg=table] tbody tr')]"
            ".map(r => +r.dataset.row)"
        )
    )


def test_sorting_by_columns_and_paging(page: Any, www: Path, run: Run) -> None:
    _open(page, www)
    assert _rows_shown(page) == list(range(50)) and _order(page) == list(range(COUNT))
    entries = list(run.entries)
    values = [e.value for e in entries]
    page.click("th[data-sort=value] button")
    want = sorted(range(COUNT), key=lambda i: (values[i], i))
    assert _order(page) == want and _rows_shown(page) == want[:50]
    assert page.get_attribute("th[data-sort=value]", "aria-sort") == "ascending"
    page.click("th[data-sort=value] button")
    want = sorted(range(COUNT), key=lambda i: (-values[i], i))
    assert _order(page) == want
    deltas = [e.ablation.delta_top for e in entries]  # type: ignore[union-attr]
    page.click("th[data-sort=delta_top] button")
    assert _order(page) == sorted(range(COUNT), key=lambda i: (deltas[i], i))
    page.click("th[data-sort=target] button")
    assert _order(page) == sorted(range(COUNT), key=lambda i: (entries[i].target, i))
    page.click("[data-rg=page-next]")
    assert _rows_shown(page) == _order(page)[50:100]
    assert page.inner_text("[data-rg=page-status]") == f"rows 51–100 of {COUNT} · page 2 of 5"


def test_filters_by_text_target_correctness_top_head_effect_and_pages(
    page: Any, www: Path, run: Run
) -> None:
    _open(page, www)
    entries = list(run.entries)
    flat = run.head_scores(run.info.metric).reshape(COUNT, -1)
    tops = flat.argmax(axis=1)
    page.fill("[data-rg=filter-text]", "HORSE and")
    assert _order(page) == [i for i, e in enumerate(entries) if "horse and" in e.example.text]
    page.fill("[data-rg=filter-text]", "")
    page.select_option("[data-rg=filter-target]", "cat")
    assert _order(page) == [i for i, e in enumerate(entries) if e.target == "cat"]
    page.select_option("[data-rg=filter-target]", "")
    page.select_option("[data-rg=filter-correct]", "incorrect")
    wrong = [i for i, e in enumerate(entries) if e.predicted != e.target]
    assert wrong and _order(page) == wrong
    page.select_option("[data-rg=filter-correct]", "correct")
    assert _order(page) == [i for i in range(COUNT) if i not in wrong]
    page.select_option("[data-rg=filter-correct]", "")
    head = int(np.bincount(tops).argmax())
    page.select_option("[data-rg=filter-top]", str(head))
    assert _order(page) == [i for i in range(COUNT) if tops[i] == head]
    page.select_option("[data-rg=filter-top]", "")
    deltas = np.array([e.ablation.delta_top for e in entries])  # type: ignore[union-attr]
    cut = float(np.median(deltas))
    page.fill("[data-rg=filter-effect-min]", f"{cut:.4f}")
    assert _order(page) == [i for i in range(COUNT) if deltas[i] >= float(f"{cut:.4f}")]
    page.fill("[data-rg=filter-effect-min]", "")
    page.check("[data-rg=filter-pages]")
    paged = _order(page)
    magnitude = np.abs(deltas)
    biggest = sorted((i for i in range(COUNT) if i != 3), key=lambda i: (-magnitude[i], i))[:30]
    assert paged == sorted([3, *biggest])
    links = page.eval_on_selector_all("[data-rg=table] tbody tr a", "as => as.length")
    assert links == len(paged)
    assert "no input matches" not in page.inner_text("[data-rg=page-status]")


def test_clicking_a_head_lists_the_inputs_where_it_is_strongest(
    page: Any, www: Path, run: Run
) -> None:
    _open(page, www)
    flat = run.head_scores(run.info.metric).reshape(COUNT, -1)
    tops = flat.argmax(axis=1)
    heads = run.info.num_heads
    head = int(np.bincount(tops, minlength=flat.shape[1]).argmax())
    layer, h = head // heads + 1, head % heads + 1
    x, y = cell_center(page, "grid_cells_marks", layer=layer, head=h)
    page.mouse.move(x, y, steps=3)
    page.mouse.click(x, y)
    page.evaluate("() => window.reportgen.settled().then(() => true)")
    # the page ranks by the shares it carries (uint16, score × scale): the same rounding here
    share = np.rint(flat[:, head].astype(np.float64) * site.pages.RANK_SCALE)
    strongest = sorted((i for i in range(COUNT) if tops[i] == head), key=lambda i: (-share[i], i))
    assert page.evaluate("() => window.reportgen.index.headInputs()") == strongest
    listed = page.eval_on_selector_all(
        "[data-rg=head-inputs-list] li", "ls => ls.map(l => +l.dataset.row)"
    )
    assert listed == strongest[:20]
    caption = page.inner_text("[data-rg=head-inputs-caption]")
    assert caption.startswith(f"{len(strongest)} of {COUNT} inputs")
    hrefs = dict(
        page.eval_on_selector_all(
            "[data-rg=head-inputs-list] li",
            "ls => ls.map(l => [+l.dataset.row, l.querySelector('a') && l.querySelector('a')"
            ".getAttribute('href')])",
        )
    )
    names = site.SiteContext.gather(run, Settings()).names
    pages = set(Path(p).stem for p in (www / "site" / "examples").glob("*.html"))
    for i, href in hrefs.items():
        assert href == (f"examples/{names[i]}.html" if names[i] in pages else None)
    # the table is ranked by the head; the button shows exactly those inputs
    everyone = sorted(range(COUNT), key=lambda i: (-share[i], i))
    assert _order(page) == everyone
    page.click("[data-rg=head-inputs-filter]")
    assert _order(page) == strongest
    assert page.inner_text("[data-rg=caption]").startswith(f"Ranked by L{layer} H{h}")


def test_the_keyboard_moves_extends_and_clears_the_grid_selection(
    page: Any, www: Path, run: Run
) -> None:
    """The dataset grid by keyboard, as a click works it: Tab reaches the grid, Enter selects
    the head under the cursor (L1 H1 while nothing is selected), arrow keys move it, Shift +
    arrow keys extend a block, Escape clears; the table ranks by the selection and lists the
    inputs where it is strongest, and a live region says what is selected."""
    _open(page, www)
    assert page.evaluate("() => window.reportgen.selection()") == []
    for _ in range(60):  # Tab through the page until the grid has the focus
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.rg === 'chart'"):
            break
    else:
        pytest.fail("Tab never reaches the grid")
    flat = run.head_scores(run.info.metric).reshape(COUNT, -1)
    share = np.rint(flat.astype(np.float64) * site.pages.RANK_SCALE)  # as the page ranks
    tops, heads = flat.argmax(axis=1), run.info.num_heads

    def press(key: str) -> list[list[int]]:
        page.keyboard.press(key)
        page.evaluate("() => window.reportgen.settled().then(() => true)")
        return list(page.evaluate("() => window.reportgen.selection()"))

    def check(chosen: list[list[int]], label: str) -> None:
        flat_heads = [(layer - 1) * heads + (h - 1) for layer, h in chosen]
        total = share[:, flat_heads].sum(axis=1)
        assert _order(page) == sorted(range(COUNT), key=lambda i: (-total[i], i))
        strongest = sorted(
            (i for i in range(COUNT) if tops[i] in flat_heads), key=lambda i: (-total[i], i)
        )
        assert page.evaluate("() => window.reportgen.index.headInputs()") == strongest
        assert page.inner_text("[data-rg=caption]").startswith(f"Ranked by {label}")
        assert page.inner_text("[data-rg=announce]") == f"{label} selected"

    assert press("Enter") == [[1, 1]]
    check([[1, 1]], "L1 H1")
    assert press("ArrowUp") == [[1, 1]], "the cursor stays inside the grid"
    press("ArrowDown")
    assert press("ArrowRight") == [[2, 2]]
    check([[2, 2]], "L2 H2")
    assert press("Shift+ArrowDown") == [[2, 2], [3, 2]]
    check([[2, 2], [3, 2]], "2 heads: L2 H2, L3 H2")
    assert page.text_content("[data-rg=head-inputs-title]").startswith("Inputs where one of")
    assert press("Escape") == []
    assert _order(page) == list(range(COUNT))
    assert page.inner_text("[data-rg=caption]") == "In input order."
    assert page.locator("[data-rg=head-inputs]").is_hidden()
    assert page.inner_text("[data-rg=announce]") == "Nothing selected"


def test_the_single_file_holds_bounded_pages_in_a_sandboxed_iframe(
    page: Any, www: Path, run: Run
) -> None:
    page.goto((www / "host.html").as_uri())
    frame = page.frames[1]
    frame.wait_for_url("about:srcdoc")
    assert frame.evaluate("() => window.reportgen.ready.then(v => !!v)")
    assert frame.evaluate("() => window.reportgen.index.order().length") == COUNT
    note = " ".join(frame.inner_text("[data-rg=pages-note]").split())
    assert note.startswith("This file holds the pages of 31 of 240 inputs")
    frame.check("[data-rg=filter-pages]")
    first = frame.evaluate("() => window.reportgen.index.order()[0]")
    frame.click(f"[data-rg=table] tbody tr[data-row='{first}'] a")
    assert frame.evaluate("() => window.reportgen.ready.then(v => !!v)")
    assert frame.evaluate("() => document.title").startswith(f"{run.ids[first]} · ")


GRID_SHOWN_JS = """
() => {
  const out = [];
  function walk(mark) {
    if (!mark) return;
    if (mark.name === "grid_cells_marks") {
      for (const item of mark.items) {
        out.push([item.datum.layer, item.datum.head, item.datum.shown]);
      }
    }
    if (mark.marktype === "group") {
      for (const group of mark.items) for (const child of group.items || []) walk(child);
    }
  }
  walk(window.reportgen.view.scenegraph().root);
  return out;
}
"""


def test_the_grid_colours_by_the_mean_its_lower_bound_or_the_top_3_share(
    page: Any, www: Path, run: Run
) -> None:
    """The grid's radio buttons switch what each cell's colour shows: the mean share, the
    lower bound of its 95% bootstrap interval, or the share of inputs with it in their top 3,
    each equal to the numbers computed here from the run."""
    from reportgen.data.stats import bootstrap_mean

    _open(page, www)
    grids = run.head_scores(run.info.metric)
    flat = grids.reshape(COUNT, -1)
    ranks = np.argsort(-flat, axis=1, kind="stable")[:, :3]
    top = np.bincount(ranks.reshape(-1), minlength=flat.shape[1]) / COUNT
    wanted = {
        "mean share": grids.mean(axis=0).reshape(-1),
        "its 95% lower bound": bootstrap_mean(
            grids, int(run.info.parameters["seed"] or 0)
        ).low.reshape(-1),
        "share of inputs with it in their top 3": top,
    }
    heads = run.info.num_heads
    for label, values in wanted.items():
        page.get_by_label(label, exact=True).check()
        page.evaluate("() => window.reportgen.view.runAsync().then(() => true)")
        shown = page.evaluate(GRID_SHOWN_JS)
        assert len(shown) == flat.shape[1]
        for layer, head, value in shown:
            assert value == pytest.approx(values[(layer - 1) * heads + head - 1], rel=1e-3), label


@pytest.fixture(scope="module")
def wide_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index of a run of a 12 × 12 model (the demo model's shape): a 264 px grid with its
    labels and legend, wider than a phone's card."""
    from synthetic import run_info

    root = tmp_path_factory.mktemp("index-wide-grid")
    items = [
        {
            "id": f"w{i}",
            "segments": [
                {"name": "ENV", "text": f"<CHI> saw a {WORDS[i % 4]}"},
                {"name": "LAN", "text": "<CHI> look at the"},
            ],
        }
        for i in range(8)
    ]
    run = write_run(root / "run", items, run_info(num_layers=12, num_heads=12))
    site.render_site(run, root / "site", Settings(pages=1))
    return root / "site" / "index.html"


CHART_FIT_JS = """() => {
  const el = document.querySelector("[data-rg=chart]");
  const view = window.reportgen.view;
  const box = view.container().querySelector("canvas").getBoundingClientRect();
  const left = box.left + view.padding().left + view.origin()[0];
  const legends = [];
  (function walk(mark, ox) {
    if (!mark || mark.marktype !== "group") return;
    for (const g of mark.items) {
      if (mark.role === "legend") legends.push([left + ox + g.bounds.x1, left + ox + g.bounds.x2]);
      for (const child of g.items || []) walk(child, ox + (g.x || 0));
    }
  })(view.scenegraph().root, 0);
  return {scroll: el.scrollWidth, client: el.clientWidth, legends};
}"""


@pytest.mark.parametrize("width", [390, 715])
def test_the_index_grid_fits_its_card_at_390_and_715_px(
    chromium: Any, wide_grid: Path, width: int
) -> None:
    """On a phone and in MLflow's 715 px artifact pane the dataset grid of a 12 × 12 model
    fits its card (it shrinks, its legend goes under it): the chart does not scroll sideways,
    its legend is on screen, and a click on a (smaller) cell still picks that head."""
    tab = _tab(chromium, width, 900)
    try:
        tab.goto(wide_grid.as_uri())
        assert tab.evaluate("() => window.reportgen.ready.then(v => !!v)")
        fit = tab.evaluate(CHART_FIT_JS)
        assert fit["scroll"] <= fit["client"], f"the grid is {fit['scroll']} px in {fit}"
        assert fit["legends"]
        for x1, x2 in fit["legends"]:
            assert x1 >= 0 and x2 <= width, f"a legend at {x1:.0f}-{x2:.0f} px"
        tab.locator("[data-rg=chart] canvas").scroll_into_view_if_needed()
        x, y = cell_center(tab, "grid_cells_marks", layer=7, head=12)
        tab.mouse.move(x, y, steps=3)
        tab.mouse.click(x, y)
        tab.evaluate("() => window.reportgen.settled().then(() => true)")
        assert tab.evaluate("() => window.reportgen.selection()") == [[7, 12]]
        assert tab.inner_text("[data-rg=caption]").startswith("Ranked by L7 H12")
    finally:
        tab.context.close()
    assert tab.problems == []
