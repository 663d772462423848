"""Every screen and every hand, in real Chromium: axe-core finds no violations (light and
dark, 1400 and 390 px wide), no page scrolls sideways at 390 px, the grid stacks above the
heatmap on narrow screens and the stacked chart fits its card (390 px, MLflow's 715 px pane),
side by side a longer input's chart fits its card too (1000 and 1400 px), the theme follows
prefers-color-scheme and its button (charts included), the keyboard moves and extends the
selection, a cleared selection says so, a signed method's heatmap shows signs with a toggle to
magnitudes, and a sandboxed iframe shows the exported image instead of a
download that cannot happen.

axe-core comes from npm for the tests only (`tests/tools`, installed by `.ci/run` with
`npm ci --prefix tests/tools`); it never ships in the wheel or the site."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import assert_heat, cell_center, expected_heat, heat_cells, launch

from reportgen import site
from reportgen.records import Run
from reportgen.settings import Settings

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "tools" / "node_modules" / "axe-core" / "axe.min.js"
PAGES = ["index.html", "about.html", "examples/0001-reference.html"]
EXAMPLE = PAGES[2]
AXE_RUN = """() => axe.run(document, {resultTypes: ["violations"], preload: false}).then(
  (r) => r.violations.map((v) => v.id + " (" + v.impact + "): " +
    v.nodes.slice(0, 3).map((n) => n.target.join(" ") + " " + n.failureSummary).join(" | ")))"""
GROUPS_JS = """(names) => {
  const found = {};
  function walk(mark, ox, oy) {
    if (!mark || mark.marktype !== "group") return;
    for (const g of mark.items) {
      const x = ox + (g.x || 0), y = oy + (g.y || 0);
      if (names.includes(mark.name)) found[mark.name] = {x, y, w: g.width, h: g.height};
      for (const child of g.items || []) walk(child, x, y);
    }
  }
  walk(window.reportgen.view.scenegraph().root, 0, 0);
  return found;
}"""


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: run `npm ci --prefix tests/tools` (as .ci/run does)")
    return AXE.read_text("utf-8")


@pytest.fixture(scope="module")
def www(gpt2_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2's site, its single file, and a page showing that file in a sandbox."""
    root = tmp_path_factory.mktemp("access")
    site.render_site(Run.open(gpt2_run), root / "report", Settings(single_file=root / "one.html"))
    host = f"<!doctype html><title>host</title>{site.iframe_html(root / 'one.html')}"
    (root / "host.html").write_text(host, "utf-8")
    return root


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


class Page:
    """A page in a fresh context that records console errors and warnings."""

    def __init__(self, chromium: Any, width: int, scheme: str = "light") -> None:
        self.context = chromium.new_context(
            viewport={"width": width, "height": 900}, color_scheme=scheme, accept_downloads=True
        )
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"{m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

    def open(self, url: str) -> Any:
        self.page.goto(url)
        self.page.evaluate("() => window.reportgen.ready.then(() => true)")
        return self.page

    def settle(self) -> None:
        self.page.evaluate("() => window.reportgen.settled().then(() => true)")

    def selection(self) -> list[list[int]]:
        return list(self.page.evaluate("() => window.reportgen.selection()"))


@pytest.fixture
def pages(chromium: Any) -> Iterator[Any]:
    opened: list[Page] = []

    def make(width: int = 1400, scheme: str = "light") -> Page:
        opened.append(Page(chromium, width, scheme))
        return opened[-1]

    yield make
    for p in opened:
        p.context.close()
    assert [problem for p in opened for problem in p.problems] == []


@pytest.fixture(scope="module")
def compare_site(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`reportgen compare` of two tiny models (GPT-2 and Llama, one tokenizer) on the demo
    inputs, with the grounding information gain (ENV swapped between inputs)."""
    from conftest import DEMO_INPUTS

    from reportgen import compare

    root = tmp_path_factory.mktemp("compare-access")
    inputs = [{"target": "ball", **item} for item in DEMO_INPUTS]  # the gain needs targets
    report = compare(
        inputs,
        root / "site",
        models=[str(tiny_models["gpt2"]), str(tiny_models["llama"])],
        labels=["gpt2", "llama"],
        # no ablation: the comparison page does not show it
        settings=Settings(metric="flow:ENV->LAN", device="cpu", ablate_k=0),
        counterfactual="swap:ENV",
    )
    return report.site


LONGER_INPUT = {
    "id": "longer",
    "segments": [
        {
            "name": "ENV",
            "text": "<CHI> painted a picture of a big red horse <MOT> saw a big dog "
            "<CHI> played with a red ball",
        },
        {"name": "LAN", "text": "<CHI> my favorite animal is the"},
    ],
    "target": "horse",
}
"""26 tokens: a heatmap at its largest (640 px), as a 715 px pane cannot show beside its labels."""


@pytest.fixture(scope="module")
def methods_site(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Pages of `LONGER_INPUT` with the charts by layer under the heatmap: the tiny GPT-2's
    rollout (relevance by layer) and attn-grad with Wang et al.'s per-layer flow."""
    from reportgen.pipeline import compute, render

    root = tmp_path_factory.mktemp("methods-access")
    out: dict[str, Path] = {}
    for name, changes in (("rollout", {"method": "rollout"}), ("wang", {"aggregate": "wang"})):
        settings = Settings(
            model=str(tiny_models["gpt2"]),
            metric="flow:ENV->LAN",
            device="cpu",
            ablate_k=0,
            **changes,
        )
        run = compute([LONGER_INPUT], root / name, settings)
        render(run, root / f"{name}-site", settings)
        [out[name]] = (root / f"{name}-site" / "examples").glob("*.html")
    return out


def _long_page(long_site: Path) -> Path:
    [page] = (long_site / "examples").glob("0001-*.html")
    return page


@pytest.mark.parametrize(("width", "scheme"), [(1400, "light"), (390, "light"), (1400, "dark")])
def test_axe_finds_no_violations(
    pages: Any,
    www: Path,
    long_site: Path,
    compare_site: Path,
    methods_site: dict[str, Path],
    axe_source: str,
    width: int,
    scheme: str,
) -> None:
    """Index, about and an input's page (its text alternative open too); a long input's page
    (the block overview, then with tokens found and one picked in its strip); the comparison
    page; the pages of a rollout and of Wang et al.'s per-layer flow (their charts by layer's
    text alternatives open too)."""
    p = pages(width, scheme)
    long_page = _long_page(long_site)
    files = [www / "report" / name for name in PAGES] + [long_page, compare_site / "index.html"]
    by_layer = [methods_site["rollout"], methods_site["wang"]]
    for file in files + by_layer:
        name = file.relative_to(file.parents[1]).as_posix()
        page = p.open(file.as_uri())
        if file == long_page:
            page.locator("[data-rg=token-strip] .rg-tok").first.wait_for()
        page.evaluate(axe_source)  # through the debugging protocol: the page's CSP allows it
        assert page.evaluate(AXE_RUN) == [], name
        if file == long_page:
            page.fill("[data-rg=token-search]", page.locator(".rg-tok").nth(7).inner_text())
            page.locator(".rg-tok").nth(9).click()
            assert page.locator(".rg-tok-hit").count() and page.locator(".rg-tok-query").count()
            assert page.evaluate(AXE_RUN) == [], name + " (tokens found and picked)"
        if name == EXAMPLE:
            page.click("[data-rg=alt] summary")
            assert page.evaluate(AXE_RUN) == [], name + " (text alternative open)"
        if file in by_layer:
            alternatives = page.locator("details.rg-alt summary")
            assert alternatives.count() == 2, name  # the grid and heatmap's, the layer chart's
            for k in range(alternatives.count()):
                alternatives.nth(k).click()
            assert page.evaluate(AXE_RUN) == [], name + " (text alternatives open)"


def test_no_page_scrolls_sideways_at_390_px_and_the_grid_stacks(
    pages: Any, www: Path, long_site: Path, compare_site: Path, signed_site: tuple[Path, Run]
) -> None:
    p = pages(390)
    files = [www / "report" / name for name in PAGES]
    # a synthetic run's page has every ablation table (layer by layer, with the knockout)
    [synthetic] = sorted((signed_site[0] / "examples").glob("*.html"))
    for file in [*files, _long_page(long_site), compare_site / "index.html", synthetic]:
        page = p.open(file.as_uri())
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"{file.name} is {width} px wide"
    page = p.open((www / "report" / EXAMPLE).as_uri())
    groups = page.evaluate(GROUPS_JS, ["grid_group", "heat_group"])
    grid, heat = groups["grid_group"], groups["heat_group"]
    assert heat["y"] >= grid["y"] + grid["h"], "below 800 px the heatmap goes under the grid"
    # the stacked chart still works: a click selects
    x, y = cell_center(page, "grid_cells_marks", layer=2, head=3)
    page.mouse.click(x, y)
    p.settle()
    assert p.selection() == [[2, 3]]


LEGENDS_JS = """() => {
  const view = window.reportgen.view;
  const box = view.container().querySelector("canvas").getBoundingClientRect();
  const left = box.left + view.padding().left + view.origin()[0];
  const found = [];
  (function walk(mark, ox) {
    if (!mark || mark.marktype !== "group") return;
    for (const g of mark.items) {
      if (mark.role === "legend") found.push([left + ox + g.bounds.x1, left + ox + g.bounds.x2]);
      for (const child of g.items || []) walk(child, ox + (g.x || 0));
    }
  })(view.scenegraph().root, 0);
  return found;
}"""
CHART_WIDTHS_JS = """() => {
  const el = document.querySelector("[data-rg=chart]");
  return [el.scrollWidth, el.clientWidth];
}"""


@pytest.mark.parametrize("width", [390, 715])
def test_the_stacked_chart_fits_its_card_at_390_and_715_px(
    pages: Any, www: Path, methods_site: dict[str, Path], width: int
) -> None:
    """On a phone and in MLflow's 715 px artifact pane, the stacked grid, heatmap and charts by
    layer shrink to the card's width: nothing scrolls sideways inside it, every legend is on
    screen, and a click on a (smaller) grid cell still selects that head."""
    p = pages(width)
    for file in (www / "report" / EXAMPLE, methods_site["rollout"], methods_site["wang"]):
        page = p.open(file.as_uri())
        scroll, client = page.evaluate(CHART_WIDTHS_JS)
        assert scroll <= client, f"{file.name} at {width} px: the chart is {scroll} px in {client}"
        legends = page.evaluate(LEGENDS_JS)
        assert legends, file.name
        for x1, x2 in legends:
            assert x1 >= 0 and x2 <= width, f"{file.name}: a legend at {x1:.0f}-{x2:.0f} px"
        groups = page.evaluate(GROUPS_JS, ["grid_group", "heat_group"])
        assert groups["heat_group"]["y"] >= groups["grid_group"]["y"] + groups["grid_group"]["h"]
    x, y = cell_center(page, "grid_cells_marks", layer=2, head=3)
    page.mouse.click(x, y)
    p.settle()
    assert p.selection() == [[2, 3]]


def test_the_grid_and_heatmap_sit_side_by_side_at_1400_px(pages: Any, www: Path) -> None:
    page = pages(1400).open((www / "report" / EXAMPLE).as_uri())
    groups = page.evaluate(GROUPS_JS, ["grid_group", "heat_group"])
    grid, heat = groups["grid_group"], groups["heat_group"]
    assert heat["x"] >= grid["x"] + grid["w"] and heat["y"] < grid["y"] + grid["h"]


@pytest.fixture(scope="module")
def longer_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The demo model's run of `LONGER_INPUT` alone (attn-grad, no ablation): its 12 × 12 grid
    (264 px) beside the 640 px heatmap, wider than a 1400 px window's card."""
    from reportgen.pipeline import compute

    settings = Settings(metric="flow:ENV->LAN", device="cpu", ablate_k=0)
    return compute([LONGER_INPUT], tmp_path_factory.mktemp("longer") / "run", settings)


@pytest.mark.parametrize("width", [1000, 1400])
def test_side_by_side_a_longer_input_fits_its_card_at_1000_and_1400_px(
    pages: Any, longer_run: Run, methods_site: dict[str, Path], tmp_path: Path, width: int
) -> None:
    """Beside the grid, a 26-token input's heatmap (640 px as built) shrinks to what the card
    leaves it, as do the charts by layer under them: nothing scrolls inside the card (the
    heatmap's row labels stay in view), the two still sit side by side, and a click on a
    grid head draws that head's cells."""
    site.render_site(longer_run, tmp_path / "site", Settings())
    [plain] = (tmp_path / "site" / "examples").glob("*.html")
    p = pages(width)
    for file in (plain, methods_site["rollout"], methods_site["wang"]):
        page = p.open(file.as_uri())
        scroll, client = page.evaluate(CHART_WIDTHS_JS)
        assert scroll <= client, f"{file.name} at {width} px: the chart is {scroll} px in {client}"
        groups = page.evaluate(GROUPS_JS, ["grid_group", "heat_group"])
        grid, heat = groups["grid_group"], groups["heat_group"]
        assert heat["x"] >= grid["x"] + grid["w"] and heat["y"] < grid["y"] + grid["h"]
    page = p.open(plain.as_uri())
    x, y = cell_center(page, "grid_cells_marks", layer=2, head=3)
    page.mouse.click(x, y)
    p.settle()
    assert p.selection() == [[2, 3]]
    assert_heat(heat_cells(page), expected_heat(longer_run, 0, [(1, 2)]))


DARK_STATE = """() => ({
  theme: document.documentElement.getAttribute("data-theme"),
  body: getComputedStyle(document.body).backgroundColor,
  chart: window.reportgen.view.background(),
  button: document.querySelector("[data-rg=theme]").textContent,
})"""


def test_dark_mode_follows_the_system_and_the_button(pages: Any, www: Path, run: Run) -> None:
    p = pages(1400, "dark")
    page = p.open((www / "report" / EXAMPLE).as_uri())
    state = page.evaluate(DARK_STATE)
    assert state["body"] == "rgb(22, 22, 28)" and state["chart"] == "#1f1f27"
    assert state["button"] == "Light"
    x, y = cell_center(page, "grid_cells_marks", layer=3, head=2)
    page.mouse.click(x, y)
    p.settle()
    page.click("[data-rg=theme]")
    page.evaluate("() => window.reportgen.ready.then(() => true)")
    p.settle()
    state = page.evaluate(DARK_STATE)
    assert state["theme"] == "light" and state["body"] == "rgb(246, 246, 249)"
    assert state["chart"] == "white" and state["button"] == "Dark"
    assert p.selection() == [[3, 2]], "the selection survives the new theme"
    assert_heat(heat_cells(page), expected_heat(run, 0, [(2, 1)]))


@pytest.fixture(scope="module")
def run(gpt2_run: Path) -> Run:
    return Run.open(gpt2_run)


def test_the_keyboard_moves_extends_and_clears_the_selection(
    pages: Any, www: Path, run: Run
) -> None:
    p = pages()
    page = p.open((www / "report" / EXAMPLE).as_uri())
    start = p.selection()[0]
    for _ in range(40):  # Tab through the page until the chart has the focus
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.rg === 'chart'"):
            break
    else:
        pytest.fail("Tab never reaches the chart")
    layers, heads = run.info.num_layers, run.info.num_heads
    page.keyboard.press("ArrowRight" if start[1] < heads else "ArrowLeft")
    p.settle()
    moved = [start[0], start[1] + 1 if start[1] < heads else start[1] - 1]
    assert p.selection() == [moved]
    assert page.inner_text("[data-rg=caption]").startswith(f"L{moved[0]} H{moved[1]}")
    assert_heat(heat_cells(page), expected_heat(run, 0, [(moved[0] - 1, moved[1] - 1)]))
    down = "ArrowDown" if moved[0] < layers else "ArrowUp"
    page.keyboard.press(f"Shift+{down}")
    p.settle()
    other = moved[0] + 1 if moved[0] < layers else moved[0] - 1
    assert p.selection() == sorted([moved, [other, moved[1]]])
    page.keyboard.press("Escape")
    p.settle()
    assert p.selection() == []
    page.keyboard.press("Enter")
    p.settle()
    assert p.selection() == [[other, moved[1]]], "Enter selects the head under the cursor"


def test_a_cleared_selection_says_nothing_is_selected(pages: Any, www: Path) -> None:
    p = pages()
    page = p.open((www / "report" / EXAMPLE).as_uri())
    x, y = cell_center(page, "grid_cells_marks", layer=1, head=1)
    page.mouse.dblclick(x, y)
    p.settle()
    assert p.selection() == []
    assert heat_cells(page) == {}
    items = page.evaluate(
        """() => { const out = []; (function walk(m) {
          if (!m) return;
          if (m.name === "heat_empty_marks") for (const i of m.items) out.push(i.text);
          if (m.marktype !== "group") return;
          for (const g of m.items) for (const c of g.items || []) walk(c);
        })(window.reportgen.view.scenegraph().root); return out; }"""
    )
    assert items == ["Nothing selected: click a head in the grid"]
    svg = page.evaluate("() => window.reportgen.view.toSVG()")
    assert "NaN" not in svg and "share of selection" in svg
    assert page.locator("[data-rg=alt-cells] tbody").text_content() == "Nothing selected."
    # p.problems is checked by the fixture: no "Infinite extent" warning


def test_the_text_alternative_lists_the_strongest_cells(pages: Any, www: Path) -> None:
    p = pages()
    page = p.open((www / "report" / EXAMPLE).as_uri())
    page.click("[data-rg=alt] summary")
    rows = page.locator("[data-rg=alt-cells] tbody tr")
    cells = heat_cells(page)
    strongest = sorted(cells.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert rows.count() == len(strongest)
    first = rows.nth(0).inner_text()
    assert f"{100 * strongest[0][1]:.2f}%" in first
    assert f"({strongest[0][0][0]})" in first and f"({strongest[0][0][1]})" in first


def test_a_sandboxed_iframe_shows_the_image_to_save(pages: Any, www: Path) -> None:
    p = pages()
    page = p.page
    page.goto((www / "host.html").as_uri())
    frame = page.frames[1]
    frame.wait_for_url("about:srcdoc")
    frame.evaluate("() => window.reportgen.ready.then(() => true)")
    frame.click("a[href='#example-1']")
    frame.evaluate("() => window.reportgen.ready.then(() => true)")
    for kind, prefix in (("png", "data:image/png"), ("svg", "data:image/svg+xml")):
        frame.click(f"#rg-page-example-1 [data-rg={kind}]")
        image = frame.locator("#rg-page-example-1 [data-rg=export] img")
        image.wait_for(state="visible")
        assert image.get_attribute("src").startswith(prefix)
        box = image.bounding_box()
        assert box is not None and box["width"] > 100
        note = frame.locator("#rg-page-example-1 [data-rg=export] .rg-note").inner_text()
        assert "right-click" in note
    frame.click("#rg-page-example-1 [data-rg=json]")  # data: a text box to copy from
    area = frame.locator("#rg-page-example-1 [data-rg=export] textarea")
    area.wait_for(state="visible")
    data = json.loads(area.input_value())
    assert data["heads"] and data["selection"] and data["cells"]
    assert (
        "copy the data"
        in frame.locator("#rg-page-example-1 [data-rg=export] .rg-note").inner_text()
    )


# --- a signed method ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """A synthetic attattr run whose scores take both signs, rendered."""
    from conftest import DEMO_INPUTS
    from synthetic import examples_from_items, result_for, run_info, stats_from_dense

    from reportgen.records import RunWriter

    root = tmp_path_factory.mktemp("signed")
    with RunWriter(root / "run", run_info(method="attattr")) as writer:
        for seed, example in enumerate(examples_from_items(DEMO_INPUTS[:1])):
            plain = result_for(example, seed)
            t = len(plain.tokens)
            rng = np.random.default_rng(seed)
            layers, heads = plain.stats.total.shape
            scores = (rng.random((layers, heads, t, t)) - 0.5).astype(np.float32)
            scores *= np.tril(np.ones((t, t), np.float32))
            stats = stats_from_dense(scores, list(plain.spans), t - 1, plain.stats.k)
            writer.add(dataclasses.replace(plain, stats=stats))
    run = Run.open(root / "run")
    site.render_site(run, root / "site", Settings())
    return root / "site", run


def test_a_signed_method_shows_signs_with_a_toggle_to_magnitudes(
    pages: Any, signed_site: tuple[Path, Run]
) -> None:
    folder, run = signed_site
    p = pages()
    [page_file] = sorted((folder / "examples").glob("*.html"))
    page = p.open(page_file.as_uri())
    selected = [(h[0] - 1, h[1] - 1) for h in p.selection()]
    want = expected_heat(run, 0, selected)  # magnitudes
    signed = heat_cells(page)
    assert min(signed.values()) < 0 < max(signed.values())
    assert {c: abs(v) for c, v in signed.items() if v != 0} == pytest.approx(
        {c: v for c, v in want.items() if c in signed and signed[c] != 0}, rel=2e-3, abs=1e-6
    )
    domain = page.evaluate("() => window.reportgen.view.scale('heat_color').domain()")
    strongest = max(abs(v) for v in signed.values())
    assert domain == pytest.approx([-strongest, 0, strongest], rel=1e-6), "symmetric at 0"
    assert page.locator("[data-rg=values-signed]").is_visible()
    assert page.locator("[data-rg=values-magnitude]").is_hidden()
    page.click("[data-rg=signed]")
    p.settle()
    assert_heat(heat_cells(page), want)
    domain = page.evaluate("() => window.reportgen.view.scale('heat_color').domain()")
    assert domain == pytest.approx([0, max(want.values())], rel=2e-3)
    assert page.locator("[data-rg=values-magnitude]").is_visible()
    assert page.inner_text("[data-rg=signed]") == "Show signed values"


# --- words the model read as its unknown token -----------------------------------------------


@pytest.fixture(scope="module")
def unknown_site(unknown_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unknown") / "site"
    site.render_site(Run.open(unknown_run), out, Settings())
    return out


TOOLTIP_ROWS = """() => Array.from(document.querySelectorAll("[data-rg=tooltip] tr")).map(
  (tr) => [tr.cells[0].textContent, tr.cells[1].textContent])"""


def test_words_read_as_unknown_are_shown_as_what_the_token_replaced(
    pages: Any, unknown_site: Path, unknown_run: Path, axe_source: str
) -> None:
    """The text card shows [UNK] with the word struck through; a heatmap cell's tooltip and
    the text alternative's rows name the word beside the model's token; a hostile word stays
    text (no dialog, no element made of it); and axe finds nothing wrong with the marks."""
    from conftest import UNKNOWN_HOSTILE

    run = Run.open(unknown_run)
    p = pages()
    dialogs: list[str] = []
    p.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for index, name, want in (
        (0, "0001-young", ["young", "zebra"]),
        (1, "0002-hostile", [UNKNOWN_HOSTILE]),
    ):
        entry = run.entries[index]
        words = {u.position: u.text for u in entry.unknown}
        assert list(words.values()) == want

        def label(position: int) -> str:
            token = entry.tokens[position]
            if position not in words:
                return token
            return f"{token} for “{words[position]}” (not in the vocabulary)"

        page = p.open((unknown_site / "examples" / f"{name}.html").as_uri())
        card = page.locator(".rg-input")
        assert card.locator(".rg-unk-word").all_text_contents() == want
        assert card.locator(".rg-unk-token").all_text_contents() == ["[UNK]"] * len(want)
        assert card.locator("script, img").count() == 0
        cells = heat_cells(page)
        touching = sorted(c for c in cells if c[0] in words or c[1] in words)
        assert touching, "the heatmap draws a cell of an unknown token"
        i, j = touching[0]
        page.mouse.move(*cell_center(page, "heat_cells_marks", i=i, j=j))
        page.locator("[data-rg=tooltip]").wait_for(state="visible")
        rows = dict(page.evaluate(TOOLTIP_ROWS))
        assert (rows["query"], rows["key"]) == (label(i), label(j))
        assert rows["query position"] == str(i) and rows["key position"] == str(j)
        page.click("[data-rg=alt] summary")
        shown = page.evaluate(
            """() => Array.from(document.querySelectorAll("[data-rg=alt-cells] tbody tr"))
              .map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent])"""
        )
        strongest = sorted(cells.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[: len(shown)]
        assert shown == [[f"{label(a)} ({a})", f"{label(b)} ({b})"] for (a, b), _ in strongest]
        if index == 0:
            page.evaluate(axe_source)
            assert page.evaluate(AXE_RUN) == [], name
    assert dialogs == []
