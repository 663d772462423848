"""Playwright helpers for the browser tests: Debian Chromium, a local static server, and the
page geometry needed to click real cells of a Vega view."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reportgen.records import Run

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Center of the scene item of mark `name` whose datum matches `match`, in page coordinates,
# found by walking the Vega scenegraph (group offsets + the view's origin + the canvas box).
CELL_CENTER_JS = """
([name, match]) => {
  const view = window.reportgen.view;
  const canvas = view.container().querySelector("canvas");
  const box = canvas.getBoundingClientRect();
  const origin = view.origin();
  const pad = view.padding();
  let found = null;
  const hit = (datum) => datum && Object.keys(match).every((k) => datum[k] === match[k]);
  function walk(mark, ox, oy) {
    if (found || !mark) return;
    if (mark.name === name) {
      for (const item of mark.items) {
        if (hit(item.datum)) {
          found = {
            x: box.left + pad.left + origin[0] + ox + item.x + item.width / 2,
            y: box.top + pad.top + origin[1] + oy + item.y + item.height / 2,
          };
          return;
        }
      }
    }
    if (mark.marktype === "group") {
      for (const group of mark.items) {
        for (const child of group.items || []) {
          walk(child, ox + (group.x || 0), oy + (group.y || 0));
        }
      }
    }
  }
  walk(view.scenegraph().root, 0, 0);
  return found;
}
"""

HEAT_JS = """
() => window.reportgen.data("heat").map((d) => [d.i, d.j, d.share])
"""


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless (never `playwright install`)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """`python -m http.server` on 127.0.0.1 and a free port, serving `directory`; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = re.search(r"port (\d+)", line)
        assert port, f"http.server did not start: {line!r}"
        yield f"http://127.0.0.1:{port.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def cell_center(page: Any, mark: str, **match: Any) -> tuple[float, float]:
    """Page coordinates of the center of a mark's item, e.g. cell_center(page,
    "grid_cells_marks", layer=2, head=3)."""
    point = page.evaluate(CELL_CENTER_JS, [mark, match])
    assert point is not None, f"no item of mark {mark} matches {match}"
    return point["x"], point["y"]


def heat_cells(page: Any) -> dict[tuple[int, int], float]:
    """The heatmap cells the page draws: {(query, key): share}."""
    return {(i, j): share for i, j, share in page.evaluate(HEAT_JS)}


def expected_heat(
    run: Run, index: int, heads: list[tuple[int, int]]
) -> dict[tuple[int, int], float]:
    """The heatmap the page should draw for 0-based heads, computed here from the run's record
    alone: each head's first k stored cells (k = 2T up to 512, or what the run stored if
    fewer), their |values| summed per cell, over the heads' exact totals of all cells."""
    result = run.result(index)
    stats = result.stats
    t = len(result.tokens)
    k = min(2 * t, 512, stats.top_cells.shape[-1])
    total = sum(float(stats.total[layer, head]) for layer, head in heads)
    cells: dict[tuple[int, int], float] = {}
    for layer, head in heads:
        stored = zip(stats.top_cells[layer, head, :k], stats.top_values[layer, head, :k])
        for c, v in stored:
            if c >= 0 and v != 0:
                key = (int(c // t), int(c % t))
                cells[key] = cells.get(key, 0.0) + abs(float(v)) / total
    return cells


def assert_heat(got: dict[tuple[int, int], float], want: dict[tuple[int, int], float]) -> None:
    assert set(got) == set(want)
    for cell, share in want.items():
        assert got[cell] == pytest.approx(share, rel=2e-3, abs=1e-6), cell
