"""Benchmark 10: the index of a large run in headless Chromium from file://.

The run is synthetic (no model): 12 layers × 12 heads, inputs of 10 tokens with two segments,
random exact reductions and top cells shaped as the engine writes them, and an ablation record
each; or, with `--index-run RUN`, a real run folder (e.g. the demo model on 10,000 generated
inputs: `python examples/childes/corpus.py --n 10000`, then `reportgen compute`).
`reportgen.site.render_site` renders it with `--pages 20`. Measured on the index page: its
bytes, open time (navigation start to `window.reportgen.ready`, which resolves once the grid is
drawn and the table's first rows are in), sorting by a number and a text column, filtering by
text and by top head, a real click on a head of the grid (until the table is ranked and the
head's inputs listed), and the tab's JavaScript heap (Chrome DevTools Protocol `JSHeapUsedSize`).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Options, Table, median, verdict

COUNT = 10_000
QUICK_COUNT = 300
LAYERS = HEADS = 12
TOKENS = 10
OPEN_MS = 2000.0
"""Issue 17: the index of 10,000 inputs opens in under 2 s."""
ACTION_MS = 100.0
"""Our bound for "stays responsive": a sort, a filter or a click redraws within 100 ms."""
VIEWPORT = {"width": 1400, "height": 1000}
TIMEOUT_MS = 60_000

TIMED_JS = """
([action, args]) => {
  const t0 = performance.now();
  const index = window.reportgen.index;
  index[action](...args);
  document.body.offsetHeight; // the table's layout, as a redraw needs it
  return performance.now() - t0;
}
"""

CLICK_JS = """
() => window.reportgen.settled().then(() => performance.now() - window.__rgProbe.t0)
"""


def _run(folder: Path, count: int) -> Any:
    """A synthetic run of `count` inputs, 12 × 12 heads (see the module)."""
    from reportgen.data.examples import Example, Segment
    from reportgen.data.results import HeadStats, Result, TokenSpan
    from reportgen.records import Run, RunWriter
    from tests.synthetic import run_info, synthetic_ablation

    rng = np.random.default_rng(0)
    words = ["dog", "cat", "ball", "horse", "car", "tree", "book", "cup"]
    half = TOKENS // 2
    spans = (TokenSpan("ENV", 0, half), TokenSpan("LAN", half, TOKENS))
    k = 2 * TOKENS
    info = run_info(num_layers=LAYERS, num_heads=HEADS, title=f"{count} synthetic inputs")
    with RunWriter(folder, info) as writer:
        for i in range(count):
            target = words[i % len(words)]
            env = f"<CHI> saw a {target} and a {words[(i * 7) % len(words)]}"
            tokens = ([*env.split(), "<CHI>", "look", "at", "the", "x"])[:TOKENS]
            flow = rng.gamma(0.5, size=(LAYERS, HEADS, 3, 3))
            flow[..., 2, :] = flow[..., :, 2] = 0
            cells = np.argsort(rng.random((LAYERS, HEADS, TOKENS * TOKENS)), axis=-1)[..., :k]
            values = np.sort(rng.random((LAYERS, HEADS, k)).astype(np.float32), axis=-1)[..., ::-1]
            stats = HeadStats(
                segments=("ENV", "LAN"),
                total=flow.sum((2, 3)),
                prediction=flow[..., 1, :].sum(-1),
                flow=flow,
                top_cells=cells.astype(np.int32),
                top_values=np.ascontiguousarray(values),
            )
            value = float(rng.uniform(0.05, 0.95))
            grid = flow[..., 1, 0].reshape(-1)
            top = tuple((int(h) // HEADS, int(h) % HEADS) for h in np.argsort(-grid)[:3])
            example = Example(
                f"in-{i}", (Segment("ENV", env), Segment("LAN", "<CHI> look at the")), target
            )
            predicted = target if i % 5 else words[(i + 1) % len(words)]
            writer.add(
                Result(
                    example=example,
                    tokens=tuple(tokens),
                    spans=spans,
                    target=target,
                    target_given=True,
                    predicted=predicted,
                    value=value,
                    loss=float(-np.log(value)),
                    prediction_position=TOKENS - 1,
                    stats=stats,
                    ablation=synthetic_ablation(top, float(np.log(value)), i),
                )
            )
    return Run.open(folder)


def run(opts: Options) -> list[Table]:
    import time

    from playwright.sync_api import sync_playwright

    from benchmarks.browser import PROBE_JS
    from reportgen.records import Run
    from reportgen.settings import Settings
    from reportgen.site import render_site
    from reportgen.site.writer import SiteSize, size_text
    from tests.browser import cell_center, launch

    began = time.perf_counter()
    if opts.index_run is not None:
        run_folder = Run.open(opts.index_run)
        count = len(run_folder)
        kind = f"run of {run_folder.info.model}"
        opts.log(f"index: the {kind}, {count} inputs")
    else:
        count = QUICK_COUNT if opts.quick else COUNT
        kind = "synthetic run"
        opts.log(f"index: writing a synthetic run of {count} inputs")
        run_folder = _run(opts.work / f"index-run-{count}", count)
    made = time.perf_counter() - began
    size = SiteSize()
    began = time.perf_counter()
    site = render_site(run_folder, opts.work / f"index-site-{count}", Settings(pages=20), size=size)
    rendered = time.perf_counter() - began
    index = site / "index.html"
    raw = index.read_bytes()
    reps = max(1, min(opts.reps, 5))
    opens: list[float] = []
    timings: dict[str, list[float]] = {}
    heap = 0.0
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for rep in range(reps):
                context = browser.new_context(viewport=VIEWPORT)
                context.add_init_script(PROBE_JS)
                page = context.new_page()
                page.goto(index.as_uri())
                page.wait_for_function(
                    "() => window.__rgProbe.readyAt !== null", timeout=TIMEOUT_MS
                )
                opens.append(float(page.evaluate("window.__rgProbe.readyAt")))
                actions = {
                    "sort by p(target)": ("sort", ["value", False]),
                    "sort by input id (text)": ("sort", ["id", False]),
                    "sort by Δ top-k, descending": ("sort", ["delta_top", True]),
                    "filter by text 'horse'": ("filter", [{"text": "horse"}]),
                    "filter by top head": ("filter", [{"top": 13}]),
                    "filter: incorrect, Δ top-k ≤ −0.5": (
                        "filter",
                        [{"correct": "incorrect", "max": -0.5}],
                    ),
                    "clear the filters": ("filter", [{}]),
                }
                for name, (action, args) in actions.items():
                    timings.setdefault(name, []).append(
                        float(page.evaluate(TIMED_JS, [action, args]))
                    )
                x, y = cell_center(page, "grid_cells_marks", layer=2, head=3)
                page.mouse.move(x, y, steps=2)
                page.mouse.click(x, y)
                timings.setdefault("click a head (rank + list)", []).append(
                    float(page.evaluate(CLICK_JS))
                )
                if rep == 0:
                    cdp = context.new_cdp_session(page)
                    cdp.send("HeapProfiler.collectGarbage")
                    cdp.send("Performance.enable")
                    metrics = cdp.send("Performance.getMetrics")["metrics"]
                    heap = next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize")
                context.close()
        finally:
            browser.close()
    table = Table(
        f"10. Index of {count:,} inputs in Chromium (file://, {kind}, "
        f"{run_folder.info.num_layers} × {run_folder.info.num_heads} heads, --pages 20)",
        ["measure", "median", "target", "verdict"],
    )
    table.add(
        "index.html", f"{size_text(len(raw))} ({size_text(len(gzip.compress(raw)))} gzipped)",
        "-", "-",
    )  # fmt: skip
    table.add("site (21 pages)", size_text(size.bytes), "-", "-")
    opened = median(opens)
    table.add(
        "open (navigation → grid and first rows drawn)",
        f"{opened:.0f} ms",
        f"< {OPEN_MS:.0f} ms",
        verdict(opened, OPEN_MS, True, opts.quick),
    )
    for name, values in timings.items():
        took = median(values)
        table.add(
            name,
            f"{took:.1f} ms",
            f"≤ {ACTION_MS:.0f} ms",
            verdict(took, ACTION_MS, True, opts.quick),
        )
    table.add("tab JS heap after load and the actions (CDP)", size_text(int(heap)), "-", "-")
    table.notes.append(
        f"{reps} page load(s), each action once per load; {kind} "
        f"{'opened' if opts.index_run is not None else 'written'} in {made:.1f} s, "
        f"rendered in {rendered:.1f} s"
    )
    table.notes.append(
        "sort and filter: `window.reportgen.index` called inside the page, timed with "
        "performance.now() until the new rows are laid out; click: a real mouse click, from "
        "the pointer event to `reportgen.settled()` (table ranked by the head, its inputs listed)"
    )
    return [table]
