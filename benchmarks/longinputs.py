"""Benchmark 9: long inputs' pages in headless Chromium from file:// (issue 17).

One page per length T (512, 2048, 8192) of a 12 × 12-head model, each opening on the zoomable
overview (`reportgen.js` mountLong). The records are synthetic (`tests/synthetic.long_result`:
random block sums and top-k cells of the engine's shapes, default top-k), because what a page
costs depends on its shapes, and computing T = 8192 for 144 heads takes longer than the whole
benchmark; `tests/test_browser_long.py` checks the values on a computed run. Per page: its
bytes (and gzipped), first render, a click on a head, brushes over the grid, a brush over all
heads (each from the pointer event to the first task after the token map is drawn), and a
click on a block that zooms in (from pointer-up to the same point).
"""

from __future__ import annotations

import gzip
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.browser import (
    HEADS,
    PAGE_LIMIT,
    PROBE_JS,
    TARGETS_MS,
    TIMEOUT_MS,
    VIEWPORT,
    _chromium,
    _rectangles,
    _Session,
)
from benchmarks.common import Options, Table, median, verdict

LENGTHS = (512, 2048, 8192)
QUICK_LENGTHS = (256,)

WATCH_JS = """
() => {
  // Each draw of the token map ends a timing, in the next task (after the canvas is drawn).
  const probe = window.__rgProbe;
  window.reportgen.long.onDraw = () => {
    if (probe.done !== null) return;
    const channel = new MessageChannel();
    channel.port1.onmessage = () => { if (probe.done === null) probe.done = performance.now(); };
    channel.port2.postMessage(null);
  };
  window.addEventListener("pointerup", () => { probe.t0 = performance.now(); }, true);
  document.querySelector("[data-rg=chart]").scrollIntoView({ block: "start" });
}
"""


REFERENCE_T = 128
"""A short input (today's Vega heatmap, no overview) measured alongside, as a yardstick of the
machine's load: the same clicks and brushes on benchmark 3's kind of page."""


def _pages(opts: Options, lengths: tuple[int, ...]) -> dict[int | str, Path]:
    """One site with a page per length, from synthetic long records, and the short reference
    page (key REFERENCE_T); {T: page file}; with `opts.long_run`, that run's long inputs' pages
    too (key "T (computed)")."""
    from reportgen.data.blocks import is_long
    from reportgen.data.results import default_top_k
    from reportgen.records import Run, RunWriter
    from reportgen.settings import Settings
    from reportgen.site import render_site
    from tests.synthetic import long_result, make_result, run_info

    out = opts.work / "long-run"
    with RunWriter(out, run_info(num_layers=HEADS, num_heads=HEADS)) as writer:
        short = make_result(HEADS, HEADS, REFERENCE_T, top_k=default_top_k(REFERENCE_T))
        writer.add(replace(short, example=replace(short.example, id=f"t{REFERENCE_T}")))
        for tokens in lengths:
            opts.log(f"long inputs: a synthetic record at T = {tokens}")
            writer.add(long_result(HEADS, HEADS, tokens, seed=tokens))
    site = opts.work / "long-site"
    render_site(Run.open(out), site, Settings())
    files = sorted((site / "examples").glob("*.html"))
    wanted = (REFERENCE_T, *lengths)
    pages: dict[int | str, Path] = {
        t: next(f for f in files if f.stem.endswith(f"-t{t}")) for t in wanted
    }
    if opts.long_run is not None:  # a computed run's long inputs, beside the synthetic ones
        computed = Run.open(opts.long_run)
        real = opts.work / "long-site-computed"
        render_site(computed, real, Settings())
        for i, entry in enumerate(computed.entries):
            if is_long(len(entry.tokens)):
                [page] = (real / "examples").glob(f"{i + 1:04d}-*.html")
                pages[f"{len(entry.tokens)} (computed)"] = page
    return pages


class _LongSession(_Session):
    def watch(self) -> None:
        self.page.evaluate(WATCH_JS)
        self.settle()

    def zoom_click(self, rng: random.Random) -> float:
        """A real click on a random block of the overview: ms from pointer-up until the
        zoomed map is drawn; then Escape goes back."""
        box = self.page.evaluate("window.reportgen.long.layout()")
        x = box["left"] + rng.uniform(0.05, 0.95) * box["side"]
        y = box["top"] + rng.uniform(0.05, 0.95) * box["side"]
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        took = self._timed(self.page.mouse.up, "a click on a block")
        state = self.page.evaluate("window.reportgen.long.state().mode")
        assert state == "zoom", f"{self.url}: a click on a block did not zoom in"
        self.page.keyboard.press("Escape")
        self.settle()
        return took


def _measure(session: _Session, reps: int, rng: random.Random) -> dict[str, float]:
    times: dict[str, list[float]] = {}
    session.watch()
    picked = None
    for _ in range(reps):
        head = picked
        while head == picked:
            head = (rng.randint(1, HEADS), rng.randint(1, HEADS))
        assert head is not None
        times.setdefault("click", []).append(session.click(*head))
        picked = head
    for start, end in _rectangles(rng, reps):
        times.setdefault("brush", []).append(session.brush(start, end))
    for k in range(reps):
        corners = [(1, 1), (HEADS, HEADS)]
        if k % 2:
            corners.reverse()
        times.setdefault("full", []).append(session.brush(corners[0], corners[1]))
    if isinstance(session, _LongSession):
        for _ in range(reps):
            times.setdefault("zoom", []).append(session.zoom_click(rng))
    return {key: median(values) for key, values in times.items()}


def run(opts: Options) -> list[Table]:
    lengths = QUICK_LENGTHS if opts.quick else LENGTHS
    reps = 2 if opts.quick else max(opts.reps, 10)
    pages = _pages(opts, lengths)
    table = Table(
        f"9a. Long inputs in the browser: zoomable pages of a {HEADS} × {HEADS}-head model in "
        "headless Chromium (file://), ms",
        [
            "T",
            "page (KiB)",
            "gzipped (KiB)",
            "first render",
            "click on a head",
            "brush median",
            "full brush",
            "click on a block (zoom in)",
        ],
    )
    rng = random.Random(0)
    found: dict[int | str, dict[str, float]] = {}
    with _chromium() as chromium:
        page: Any = chromium.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        page.add_init_script(PROBE_JS)
        for tokens, path in pages.items():
            opts.log(f"long inputs: T = {tokens}")
            short = tokens == REFERENCE_T
            session = (_Session if short else _LongSession)(page, path.as_uri())
            loads = [session.load() for _ in range(reps)]
            got = {"first render": median(loads), **_measure(session, reps, rng)}
            data = path.read_bytes()
            got["bytes"], got["gzipped"] = len(data), len(gzip.compress(data))
            found[tokens] = got
            table.add(
                f"{tokens} (short, for reference)" if short else tokens,
                f"{got['bytes'] / 1024:.0f}",
                f"{got['gzipped'] / 1024:.0f}",
                f"{got['first render']:.0f}",
                *(f"{got[k]:.1f}" if k in got else "–" for k in ("click", "brush", "full", "zoom")),
            )
    table.notes += [
        f"Medians over {reps} repetitions, real mouse events; each timing ends in the first "
        "task after the page's token map is drawn (the caption follows in the same callback).",
        "Records are synthetic, of the engine's shapes (64 × 64 blocks, the default 512 cells "
        "a head); the Vega bundle is a shared asset of the site, not counted in the page.",
    ]
    if opts.long_run is not None:
        table.notes.append(
            f"Rows marked (computed): the long inputs of the run folder `{opts.long_run}`, "
            "computed by the engine (not synthetic), rendered with the default settings."
        )
    table.notes.append(
        f"The first row is a short input's page (T = {REFERENCE_T}, the Vega heatmap of "
        "benchmark 3) timed the same way in the same browser: a yardstick of the machine's "
        f"load (benchmark 3 measured its kind at {REFERENCE_T} unloaded)."
    )
    found.pop(REFERENCE_T)
    return [table, _targets(opts, found)]


def _targets(opts: Options, found: dict[int | str, dict[str, float]]) -> Table:
    """Every length judged against the browser targets and the page limit."""
    table = Table("9b. Long-input targets", ["T", "measure", "measured", "target", "met"])
    for tokens, got in found.items():
        for name, key, target in (
            ("first render", "first render", "first render"),
            ("click on a head", "click", "click"),
            ("brush median", "brush", "brush"),
            ("brush over all heads", "full", "full brush"),
            ("click on a block (zoom in)", "zoom", "click"),
        ):
            limit = TARGETS_MS[target]
            met = verdict(got[key], limit, at_most=True, quick=opts.quick)
            table.add(tokens, name, f"{got[key]:.1f} ms", f"≤ {limit:.0f} ms", met)
        mib = 2**20
        table.add(
            tokens,
            "page bytes",
            f"{got['bytes'] / mib:.2f} MiB (gzipped {got['gzipped'] / mib:.2f} MiB)",
            f"≤ {PAGE_LIMIT / mib:.0f} MiB",
            verdict(got["bytes"], PAGE_LIMIT, True, opts.quick),
        )
    if opts.quick:
        table.notes.append(f"Quick mode: T = {', '.join(map(str, found))}; nothing judged.")
    return table
