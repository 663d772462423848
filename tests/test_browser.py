"""The built site in real Chromium: offline, linked selections, downloads, sandboxed single file.

One browser and one built site per module; every page is watched for console errors, page
errors, dialogs (an XSS would open one) and requests leaving the site.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import assert_heat, cell_center, expected_heat, heat_cells, launch, serve

from reportgen import site
from reportgen.records import Run
from reportgen.settings import Settings

pytestmark = pytest.mark.browser

HOSTILE = "<script>alert(1)</script>"
PAGES = [
    "index.html",
    "about.html",
    "examples/0001-reference.html",
    "examples/0002-dog.html",
    "examples/0003-hostile-quote-script.html",
]


@pytest.fixture(scope="module")
def run(gpt2_run: Path) -> Run:
    return Run.open(gpt2_run)


@pytest.fixture(scope="module")
def www(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the site (`report/`), the single file and a page embedding it."""
    root = tmp_path_factory.mktemp("www")
    site.render_site(run, root / "report", Settings(single_file=root / "single.html"))
    host = f"<!doctype html><title>host</title>{site.iframe_html(root / 'single.html')}"
    (root / "host.html").write_text(host, "utf-8")
    return root


@pytest.fixture(scope="module")
def server(www: Path) -> Iterator[str]:
    """The site's parent served over HTTP, so the site lives under a sub-path."""
    with serve(www) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    page: Any
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.wait()

    def wait(self, frame: Any = None) -> bool:
        """Wait for the page's chart (window.reportgen.ready); True if it has a view."""
        return bool((frame or self.page).evaluate("() => window.reportgen.ready.then(v => !!v)"))

    def settle(self) -> None:
        """Wait until the view has run and the page's text (caption, index order) caught up:
        the page writes that text in a task after the one that drew the chart."""
        self.page.evaluate("() => window.reportgen.settled().then(() => true)")


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    w = Watched(page)
    page.on(
        "console",
        lambda m: w.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: w.problems.append(f"page error: {e}"))

    def dialog(d: Any) -> None:
        w.problems.append(f"dialog: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)
    page.on("request", lambda r: w.requests.append(r.url))
    yield w
    context.close()
    assert w.problems == []


@pytest.fixture(params=["file", "http"])
def base(request: pytest.FixtureRequest, www: Path) -> str:
    """The site's root URL, from file:// or from the local server (under /report/)."""
    if request.param == "file":
        return (www / "report").as_uri() + "/"
    return request.getfixturevalue("server") + "/report/"


def only_site_requests(requests: list[str], root: str) -> None:
    outside = [u for u in requests if not u.startswith((root, "data:", "blob:"))]
    assert outside == []


def selection(w: Watched) -> list[list[int]]:
    return list(w.page.evaluate("() => window.reportgen.selection()"))


def click_cell(w: Watched, mark: str, **match: int) -> None:
    x, y = cell_center(w.page, mark, **match)
    w.page.mouse.move(x, y, steps=3)
    w.page.mouse.down()
    w.page.mouse.up()
    w.settle()


def test_pages_load_offline_without_errors(watched: Watched, base: str) -> None:
    for name in PAGES:
        watched.open(base + name)
        has_chart = watched.page.evaluate("() => !!window.reportgen.view")
        assert has_chart == (name != "about.html")
        if has_chart:
            assert watched.page.locator("[data-rg=chart] canvas").count() == 1
    only_site_requests(watched.requests, base)
    assert any(u.endswith("assets/vega.js") for u in watched.requests)


def test_the_top_head_is_shown_first_and_a_click_shows_another(
    watched: Watched, base: str, run: Run
) -> None:
    watched.open(base + PAGES[2])
    grid = run.result(0).head_scores(run.info.metric)
    top = np.unravel_index(int(np.argmax(grid)), grid.shape)
    assert selection(watched) == [[int(top[0]) + 1, int(top[1]) + 1]]
    assert_heat(heat_cells(watched.page), expected_heat(run, 0, [(int(top[0]), int(top[1]))]))
    click_cell(watched, "grid_cells_marks", layer=2, head=3)
    assert selection(watched) == [[2, 3]]
    assert_heat(heat_cells(watched.page), expected_heat(run, 0, [(1, 2)]))
    assert watched.page.inner_text("[data-rg=caption]").startswith("L2 H3")
    only_site_requests(watched.requests, base)


def test_brushing_a_block_shows_the_normalised_sum(watched: Watched, base: str, run: Run) -> None:
    watched.open(base + PAGES[3])
    page = watched.page
    x1, y1 = cell_center(page, "grid_cells_marks", layer=1, head=1)
    x2, y2 = cell_center(page, "grid_cells_marks", layer=2, head=2)
    page.mouse.move(x1, y1, steps=3)
    page.mouse.down()
    page.mouse.move(x2, y2, steps=6)
    page.mouse.up()
    watched.settle()
    assert selection(watched) == [[1, 1], [1, 2], [2, 1], [2, 2]]
    got = heat_cells(page)
    assert_heat(got, expected_heat(run, 1, [(0, 0), (0, 1), (1, 0), (1, 1)]))
    assert page.inner_text("[data-rg=caption]").startswith("4 heads: L1 H1, L1 H2, L2 H1, L2 H2")
    # the drawn shares add up to what the four heads' stored cells carry of their saliency
    result = run.result(1)
    k = min(2 * len(result.tokens), 512)
    kept = np.abs(result.stats.top_values[:2, :2, :k].astype(np.float64)).sum()
    assert sum(got.values()) == pytest.approx(kept / result.stats.total[:2, :2].sum(), rel=2e-3)
    click_cell(watched, "grid_cells_marks", layer=3, head=4)  # a click replaces the brush
    assert selection(watched) == [[3, 4]]
    assert_heat(heat_cells(page), expected_heat(run, 1, [(2, 3)]))


def test_png_svg_and_json_buttons_download_the_view(watched: Watched, www: Path, run: Run) -> None:
    watched.open((www / "report" / PAGES[2]).as_uri())
    for kind, magic in (("png", b"\x89PNG"), ("svg", b"<svg")):
        with watched.page.expect_download() as info:
            watched.page.click(f"[data-rg={kind}]")
        download = info.value
        assert download.suggested_filename == f"0001-reference.{kind}"
        assert Path(download.path()).read_bytes().startswith(magic)
    # JSON: the input's head scores as the run has them, and the selection's drawn cells
    with watched.page.expect_download() as info:
        watched.page.click("[data-rg=json]")
    assert info.value.suggested_filename == "0001-reference.json"
    data = json.loads(Path(info.value.path()).read_text("utf-8"))
    assert data["input"] == "0001-reference" and len(data["selection"]) == 1
    assert {(c["query"], c["key"]): c["share"] for c in data["cells"]} == heat_cells(watched.page)
    grid = run.result(0).head_scores(run.info.metric)
    assert len(data["heads"]) == grid.size
    for row in data["heads"]:
        assert row["score"] == pytest.approx(grid[row["layer"] - 1, row["head"] - 1], rel=1e-3)


def test_the_index_ranks_inputs_by_the_selected_head(watched: Watched, www: Path, run: Run) -> None:
    watched.open((www / "report" / "index.html").as_uri())
    page = watched.page
    order = (
        "() => [...document.querySelectorAll('[data-rg=table] tbody tr')].map(r => +r.dataset.row)"
    )
    assert page.evaluate(order) == [0, 1, 2]
    scores = run.head_scores(run.info.metric)
    for layer, head in ((3, 2), (1, 4)):
        x, y = cell_center(page, "grid_cells_marks", layer=layer, head=head)
        page.mouse.move(x, y, steps=3)
        page.mouse.click(x, y)
        watched.settle()
        want = sorted(range(len(scores)), key=lambda i: (-scores[i, layer - 1, head - 1], i))
        assert page.evaluate(order) == want
        assert page.inner_text("[data-rg=caption]").startswith(f"Ranked by L{layer} H{head}")


def test_the_single_file_works_in_a_sandboxed_iframe(watched: Watched, www: Path, run: Run) -> None:
    watched.page.goto((www / "host.html").as_uri())
    frame = watched.page.frames[1]
    frame.wait_for_url("about:srcdoc")  # Playwright may not have seen the frame commit yet
    assert watched.wait(frame)  # the index grid
    # The host sizes the frame to the report's own height (the report posts it; not 900 px).
    watched.page.wait_for_function(
        "() => { const f = document.querySelector('iframe');"
        " return Math.abs(f.getBoundingClientRect().height - 900) > 2; }"
    )
    for _ in range(300):  # the report may grow as it draws; the frame follows each change
        tall = frame.evaluate("() => document.documentElement.scrollHeight")
        shown = watched.page.evaluate("() => document.querySelector('iframe').offsetHeight")
        if abs(shown - min(tall, 20000)) <= 2:
            break
        watched.page.wait_for_timeout(100)
    assert abs(shown - min(tall, 20000)) <= 2 and tall > 1000, (shown, tall)
    frame.click("a[href='#example-2']")
    assert watched.wait(frame)
    assert frame.evaluate("() => document.title").startswith("dog · ")
    rows = frame.evaluate("() => window.reportgen.data('heat').map(d => [d.i, d.j, d.share])")
    got = {(i, j): share for i, j, share in rows}
    grid = run.result(1).head_scores(run.info.metric)
    top = np.unravel_index(int(np.argmax(grid)), grid.shape)
    assert_heat(got, expected_heat(run, 1, [(int(top[0]), int(top[1]))]))
    frame.click("text=About")
    assert not watched.wait(frame)
    assert frame.locator("text=weights SHA-256").is_visible()
    only_site_requests(watched.requests, (www / "host.html").as_uri())


def test_the_hostile_token_stays_text(watched: Watched, www: Path, run: Run) -> None:
    watched.open((www / "report" / PAGES[4]).as_uri())
    page = watched.page
    count = "() => document.querySelectorAll('img, script, iframe, object, embed').length"
    before = page.evaluate(count)
    assert before == 3
    assert HOSTILE in page.inner_text("h1") + page.inner_text(".rg-input")
    position = run.result(2).tokens.index(HOSTILE)
    cells = heat_cells(page)
    i, j = next(cell for cell in sorted(cells) if position in cell)
    x, y = cell_center(page, "heat_cells_marks", i=i, j=j)
    page.mouse.move(x, y, steps=3)
    tooltip = page.locator("[data-rg=tooltip]")
    tooltip.wait_for(state="visible")
    text = tooltip.inner_text()
    assert HOSTILE in text
    assert tooltip.locator("img, script").count() == 0
    # the page writes the cell's tooltip from its datum: tokens, positions, share
    for name in ("query", "key", "query position", "key position", "share of selection"):
        assert name in text
    assert f"{cells[(i, j)]:.4f}" in text
    assert "ck" not in text.split()
    page.mouse.move(1, 1, steps=2)  # off the chart: the tooltip goes
    tooltip.wait_for(state="hidden")
    assert page.evaluate(count) == before


def test_a_chart_vega_cannot_draw_says_so(browser: Any, www: Path, tmp_path: Path) -> None:
    """A spec Vega refuses gives a message in the chart's place, and `ready` resolves to null
    (nothing waiting on the page hangs)."""
    import json
    import re
    import shutil

    root = tmp_path / "report"
    shutil.copytree(www / "report", root)
    page_file = root / PAGES[2]
    html = page_file.read_text("utf-8")
    spec = {"signals": [{"name": "x", "update": "no_such_function()"}]}
    broken = json.dumps({"kind": "example", "spec": spec})
    html = re.sub(
        r'(<script type="application/json" id="rg-data">).*?(</script>)',
        lambda m: m.group(1) + broken + m.group(2),
        html,
        count=1,
        flags=re.S,
    )
    page_file.write_text(html, "utf-8")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(page_file.as_uri())
        assert page.evaluate("() => window.reportgen.ready.then(v => v === null)")
        assert "could not be drawn" in page.inner_text("[data-rg=chart]")
    finally:
        context.close()


def test_ready_taken_before_the_first_page_resolves(watched: Watched, www: Path) -> None:
    """`ready` read as soon as the page's script has run, before the single file has unpacked
    Vega and shown its first page, resolves with that page's view (CI once waited 600 s on it)."""
    watched.page.add_init_script(
        "document.addEventListener('DOMContentLoaded', () => {"
        " window.__rg_first = window.reportgen.ready; });"
    )
    watched.page.goto((www / "single.html").as_uri(), wait_until="domcontentloaded")
    first = watched.page.evaluate(
        "() => Promise.race([window.__rg_first.then(v => (v ? 'view' : 'null')),"
        " new Promise(r => setTimeout(() => r('still waiting after 20 s'), 20000))])"
    )
    assert first == "view"
    assert watched.page.evaluate("() => window.__rg_first !== window.reportgen.ready")
