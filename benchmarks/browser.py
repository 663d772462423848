"""Benchmark 3: built pages in headless Chromium from file://.

Pages come from a random 12-layer × 12-head GPT-2 (made locally, 512 positions) and one input
per length T, computed with `pipeline.compute` and rendered with `pipeline.render`. Per page:
its bytes, first render (navigation start to `window.reportgen.ready`), a click on a head,
brushes over varied rectangles, and a brush over all heads. Each interaction is timed twice,
both inside the page with `performance.now()`:

- mouse: real Playwright mouse events, from the pointer event (seen first, in the capture
  phase) until the heatmap's dataset has changed and the view has drawn (the next task);
- view API: the selection store set through `window.reportgen.view`, until `runAsync()` resolves.

Also: the size of the single-file demo report.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.common import Options, Table, median, verdict

LENGTHS = (16, 64, 128, 256, 512)
TARGET_T = 512
TARGETS_MS = {"click": 20.0, "brush": 50.0, "full brush": 100.0, "first render": 1500.0}
PAGE_LIMIT = 4 * 2**20
SINGLE_FILE_LIMIT = int(1.5 * 2**20)
HEADS = 12
PEAKY = 0.3
"""Weight scale of the pages' random model: heads attend sharply and differently (mean top
attention weight ~0.45, against ~0.04 at GPT-2's usual 0.02), as trained heads do, so a
selection of many heads covers many distinct cells."""
VIEWPORT = {"width": 1400, "height": 1000}
TIMEOUT_MS = 20_000

PROBE_JS = """
(() => {
  // Before the page's scripts: note when reportgen.ready resolves, and when pointer events
  // arrive (capture phase, so before Vega's own handlers).
  const probe = (window.__rgProbe = { readyAt: null, t0: null, done: null });
  const rg = {};
  let ready = null;
  Object.defineProperty(rg, "ready", {
    configurable: true,
    enumerable: true,
    get() { return ready; },
    set(promise) {
      ready = promise;
      if (promise && promise.then) {
        promise.then(() => { if (probe.readyAt === null) probe.readyAt = performance.now(); });
      }
    },
  });
  window.reportgen = rg;
  for (const type of ["pointerdown", "pointermove"]) {
    window.addEventListener(type, () => { probe.t0 = performance.now(); }, true);
  }
})();
"""

WATCH_JS = """
(heat) => {
  // The first change of the heatmap's dataset after probe.done is reset ends the timing, in
  // the next task (after Vega has drawn the canvas).
  const probe = window.__rgProbe;
  window.reportgen.view.addDataListener(heat, () => {
    if (probe.done !== null) return;
    const channel = new MessageChannel();
    channel.port1.onmessage = () => { if (probe.done === null) probe.done = performance.now(); };
    channel.port2.postMessage(null);
  });
  window.reportgen.view.container().scrollIntoView({ block: "center" });
}
"""

SETTLE_JS = """
() => window.reportgen.view.runAsync().then(() => new Promise((r) => setTimeout(r, 20)))
"""

STORE_JS = """
async ([store, tuples]) => {
  const view = window.reportgen.view;
  const t0 = performance.now();
  view.data(store, tuples);
  await view.runAsync();
  return performance.now() - t0;
}
"""


def _pages(opts: Options, lengths: tuple[int, ...]) -> dict[int, Path]:
    """Build one site with a page per length; returns {T: page file}."""
    from reportgen.pipeline import compute, render
    from reportgen.settings import Settings

    width = 24 if opts.quick else 48
    folder = opts.work / f"gpt2-pages-{width}"
    model = fixtures.gpt2(folder, HEADS, HEADS, width, max(lengths), init=PEAKY)
    items = [fixtures.causal_input(t, seed=t, ident=f"t{t}") for t in lengths]
    settings = Settings(
        model=str(model), device="cpu", batch_size=1, metric="flow:ENV->LAN", ablate_k=0
    )
    opts.log(f"browser: computing pages at T = {', '.join(map(str, lengths))}")
    run = compute(items, opts.work / "pages-run", settings, command="python -m benchmarks")
    site = render(run, opts.work / "pages-site", settings).site
    files = sorted((site / "examples").glob("*.html"))
    return {t: next(f for f in files if f.stem.endswith(f"-t{t}")) for t in lengths}


def _single_file_bytes(opts: Options) -> tuple[str, int]:
    """(model label, bytes) of the single-file report of the demo inputs."""
    from reportgen.pipeline import build
    from reportgen.settings import Settings

    label, model = fixtures.demo_subject(opts.work, opts.quick)
    out = opts.work / "demo-single.html"
    settings = Settings(model=str(model), device="cpu", metric="flow:ENV->LAN", single_file=out)
    opts.log("browser: building the single-file demo report")
    build(fixtures.DEMO_INPUTS, opts.work / "demo-site", settings, command="python -m benchmarks")
    return label, out.stat().st_size


def _heat_dataset(page: Any) -> str:
    """The Vega dataset drawn by the heatmap mark, read from the page's (compiled) spec."""
    from reportgen.charts import HEAT_CELLS

    spec = page.evaluate("JSON.parse(document.getElementById('rg-data').textContent).spec")

    def find(node: dict[str, Any]) -> str | None:
        for mark in node.get("marks", []):
            if mark.get("name") == f"{HEAT_CELLS}_marks":
                return str(mark["from"]["data"])
            inner = find(mark)
            if inner:
                return inner
        return None

    name = find(spec)
    assert name is not None, f"no {HEAT_CELLS}_marks mark in the page's spec"
    return name


class _Session:
    """One page in Chromium, with timed interactions on its linked grid."""

    def __init__(self, page: Any, url: str) -> None:
        self.page, self.url = page, url

    def load(self) -> float:
        """Navigate; ms from navigation start until reportgen.ready resolved."""
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.__rgProbe.readyAt !== null", timeout=TIMEOUT_MS)
        return float(self.page.evaluate("window.__rgProbe.readyAt"))

    def watch(self) -> None:
        self.page.evaluate(WATCH_JS, _heat_dataset(self.page))
        self.settle()

    def settle(self) -> None:
        self.page.evaluate(SETTLE_JS)

    def _cell(self, layer: int, head: int) -> tuple[float, float]:
        from reportgen.charts import GRID_CELLS
        from tests.browser import cell_center

        point = cell_center(self.page, f"{GRID_CELLS}_marks", layer=layer, head=head)
        return float(point[0]), float(point[1])

    def _hover(self, layer: int, head: int) -> None:
        # Leave first: a tooltip left over from the last cell may cover the next one.
        self.page.mouse.move(0, 0)
        self.settle()
        self.page.mouse.move(*self._cell(layer, head))
        self.settle()

    def _timed(self, action: Any, what: str) -> float:
        self.page.evaluate("window.__rgProbe.done = null")
        action()
        try:
            self.page.wait_for_function("() => window.__rgProbe.done !== null", timeout=TIMEOUT_MS)
        except Exception as err:
            raise RuntimeError(f"{self.url}: the heatmap did not change after {what}") from err
        return float(self.page.evaluate("window.__rgProbe.done - window.__rgProbe.t0"))

    def click(self, layer: int, head: int) -> float:
        """A real click on a head (Vega picks on pointer-down): ms until the heatmap changed."""
        self._hover(layer, head)
        took = self._timed(self.page.mouse.down, f"a click on L{layer} H{head}")
        self.page.mouse.up()
        self.settle()
        return took

    def brush(self, start: tuple[int, int], end: tuple[int, int]) -> float:
        """A real drag from cell `start` to cell `end` (layer, head), after a double-click that
        clears the last selection: ms from the pointer move until the heatmap changed."""
        self._hover(*start)
        self.page.mouse.dblclick(*self._cell(*start))
        self.settle()
        self.page.mouse.down()
        self.settle()
        target = self._cell(*end)
        took = self._timed(lambda: self.page.mouse.move(*target), f"a brush {start}-{end}")
        self.page.mouse.up()
        self.settle()
        return took

    def store(self, name: str, tuples: list[dict[str, Any]]) -> float:
        """Replace a selection store through the view API; ms until runAsync resolved."""
        return float(self.page.evaluate(STORE_JS, [name, tuples]))

    def stores(self) -> dict[str, list[dict[str, Any]]]:
        return {
            name: self.page.evaluate(f"window.reportgen.view.data('{name}')")
            for name in ("pick_store", "brush_store")
        }


@contextmanager
def _chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


def _rectangles(rng: random.Random, count: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """`count` random (start, end) cells in different layers and heads, in every direction (a
    drag within one row or column has no width or height, and selects nothing)."""
    out: list[tuple[tuple[int, int], tuple[int, int]]] = []
    while len(out) < count:
        a = (rng.randint(1, HEADS), rng.randint(1, HEADS))
        b = (rng.randint(1, HEADS), rng.randint(1, HEADS))
        if a[0] != b[0] and a[1] != b[1]:
            out.append((a, b))
    return out


def _span(a: int, b: int) -> list[int]:
    return list(range(min(a, b), max(a, b) + 1))


def _measure(session: _Session, reps: int, rng: random.Random) -> dict[str, float]:
    """Median ms of each interaction on a loaded page, mouse and view API."""
    times: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    session.watch()
    picked = None
    for _ in range(reps):
        head = picked
        while head == picked:
            head = (rng.randint(1, HEADS), rng.randint(1, HEADS))
        assert head is not None
        note("click mouse", session.click(*head))
        picked = head
    pick = session.stores()["pick_store"][0]
    for _ in range(reps):
        values = [rng.randint(1, HEADS), rng.randint(1, HEADS)]
        note("click api", session.store("pick_store", [{**pick, "values": values}]))
    for start, end in _rectangles(rng, reps):
        note("brush mouse", session.brush(start, end))
    brush = session.stores()["brush_store"][0]
    order = [f["field"] for f in brush["fields"]]
    for start, end in _rectangles(rng, reps):
        spans = {"layer": _span(start[0], end[0]), "head": _span(start[1], end[1])}
        tuple_ = {**brush, "values": [spans[f] for f in order]}
        note("brush api", session.store("brush_store", [tuple_]))
    everything = {"layer": list(range(1, HEADS + 1)), "head": list(range(1, HEADS + 1))}
    for k in range(reps):
        corners = [(1, 1), (HEADS, HEADS)]
        if k % 2:
            corners.reverse()
        note("full mouse", session.brush(corners[0], corners[1]))
        session.store("brush_store", [])
        note(
            "full api",
            session.store("brush_store", [{**brush, "values": [everything[f] for f in order]}]),
        )
    return {key: median(values) for key, values in times.items()}


def run(opts: Options) -> list[Table]:
    lengths = (16,) if opts.quick else LENGTHS
    reps = 2 if opts.quick else max(opts.reps, 10)
    pages = _pages(opts, lengths)
    label, single_bytes = _single_file_bytes(opts)
    table = Table(
        f"3. Browser: example pages of a {HEADS} × {HEADS}-head model in headless Chromium "
        "(file://), ms",
        [
            "T",
            "page (KiB)",
            "gzipped (KiB)",
            "first render",
            "click: mouse",
            "click: view API",
            "brush median: mouse",
            "brush median: view API",
            "full brush: mouse",
            "full brush: view API",
        ],
    )
    rng = random.Random(0)
    found: dict[int, dict[str, float]] = {}
    with _chromium() as chromium:
        page = chromium.new_page(viewport=VIEWPORT)
        page.add_init_script(PROBE_JS)
        for tokens, path in pages.items():
            opts.log(f"browser: T = {tokens}")
            session = _Session(page, path.as_uri())
            loads = [session.load() for _ in range(reps)]
            found[tokens] = {"first render": median(loads), **_measure(session, reps, rng)}
            data = path.read_bytes()
            got = found[tokens]
            table.add(
                tokens,
                f"{len(data) / 1024:.0f}",
                f"{len(gzip.compress(data)) / 1024:.0f}",
                *(
                    f"{got[key]:.0f}" if key == "first render" else f"{got[key]:.1f}"
                    for key in (
                        "first render",
                        "click mouse",
                        "click api",
                        "brush mouse",
                        "brush api",
                        "full mouse",
                        "full api",
                    )
                ),
            )
            found[tokens]["bytes"] = len(data)
    table.notes += [
        f"Medians over {reps} repetitions. Brushes are drags between random cells (a "
        "double-click clears the last selection first); the full brush spans all "
        f"{HEADS * HEADS} heads, alternating corners.",
        "Page: the example's HTML (its data inline); the Vega bundle (~0.56 MiB) is a shared "
        "asset of the site, loaded from disk.",
    ]
    return [table, _targets(opts, found, label, single_bytes)]


def _targets(
    opts: Options, found: dict[int, dict[str, float]], label: str, single_bytes: int
) -> Table:
    """The browser targets at T = 512 (the largest length run, in quick mode), each interaction
    judged both ways: through the view API and with the mouse."""
    tokens = max(found)
    got = found[tokens]
    table = Table(f"3b. Browser targets (T = {tokens})", ["measure", "measured", "target", "met"])

    def row(name: str, value: float, limit: float) -> None:
        met = verdict(value, limit, at_most=True, quick=opts.quick)
        table.add(name, f"{value:.1f} ms", f"≤ {limit:.0f} ms", met)

    row("first render", got["first render"], TARGETS_MS["first render"])
    for name, key, target in (
        ("click on a head", "click", "click"),
        ("brush median", "brush", "brush"),
        ("brush over all heads", "full", "full brush"),
    ):
        row(f"{name}: view API", got[f"{key} api"], TARGETS_MS[target])
        row(f"{name}: mouse", got[f"{key} mouse"], TARGETS_MS[target])
    mib = 2**20
    table.add(
        "page bytes",
        f"{got['bytes'] / mib:.2f} MiB ({got['bytes']:,} bytes)",
        f"≤ {PAGE_LIMIT / mib:.0f} MiB",
        verdict(got["bytes"], PAGE_LIMIT, True, opts.quick),
    )
    table.add(
        f"single-file demo report ({label}, {fixtures.DEMO_INPUTS.name})",
        f"{single_bytes / mib:.2f} MiB ({single_bytes:,} bytes)",
        f"≤ {SINGLE_FILE_LIMIT / mib:.1f} MiB",
        verdict(single_bytes, SINGLE_FILE_LIMIT, True, opts.quick),
    )
    table.notes.append(
        "Mouse timings include Vega's event handling and drawing, up to the first task after "
        "the heatmap's data changed (the page writes its caption in a task of its own after "
        "that; `window.reportgen.settled()` waits for it); view-API timings end when "
        "`runAsync()` resolves (rendered)."
    )
    if tokens != TARGET_T:
        table.notes.append(f"Quick mode: T = {tokens} instead of {TARGET_T}; nothing judged.")
    return table
