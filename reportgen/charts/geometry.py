"""Geometry: pixel sizes of grids and heatmaps, label thinning, segment brackets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from reportgen.charts.packing import sig
from reportgen.data.results import TokenSpan

_GRID_PAD_INNER, _GRID_PAD_OUTER = 0.08, 0.04


def grid_step(layers: int, heads: int) -> int:
    """Pixel size of a grid cell: 22 px, smaller for big models (at least 10 px)."""
    return int(max(10, min(22, 320 // max(layers, heads, 1))))


def heat_side(tokens: int) -> int:
    """Pixel side of the square heatmap: 26 px per token, between 340 and 640 px."""
    return int(max(340, min(640, 26 * tokens)))


def _label_size(tokens: int) -> int:
    return 11 if tokens <= 40 else 9 if tokens <= 96 else 8


def label_stride(tokens: int) -> int:
    """Every how many positions a token axis puts a label: 1 while a band is as tall as a label;
    at T = 512 (1.25 px bands, 8 px labels) every 7th, which is about all that fits anyway.
    Fewer label and tick items keep a redraw of the heatmap short."""
    band = heat_side(tokens) / max(tokens, 1)
    return max(1, math.ceil(_label_size(tokens) / band))


def _named_spans(spans: Sequence[TokenSpan]) -> list[TokenSpan]:
    return [s for s in spans if s.name and s.end > s.start]


def bracket_rows(
    spans: Sequence[TokenSpan], tokens: int, row_axis: str = "left"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The geometry of the segment brackets drawn between the heatmap and its token labels.

    Returns (line points {key, order, fx, dx, fy, dy}, labels {label, fx, dx, fy, dy, angle}):
    a point is at fx · width + dx, fy · height + dy pixels of the heatmap, so the brackets
    follow the heatmap when a narrow screen shrinks it. The labels are data, so a segment name
    is never part of a Vega expression."""
    points: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    out = 1 if row_axis == "right" else -1
    edge = 1 if row_axis == "right" else 0

    def point(key: str, order: int, fx: float, dx: float, fy: float, dy: float) -> None:
        points.append({"key": key, "order": order, "fx": fx, "dx": dx, "fy": fy, "dy": dy})

    for n, span in enumerate(_named_spans(spans)):
        a, b, mid = (sig(p / tokens) for p in (span.start, span.end, (span.start + span.end) / 2))
        label = span.name if span.name.startswith("<") else f"<{span.name}>"
        # columns: a bracket under the plot, its ends pointing at it
        for order, (fx, dx, dy) in enumerate([(a, 1, 2), (a, 1, 6), (b, -1, 6), (b, -1, 2)]):
            point(f"x{n}", order, fx, dx, 1, dy)
        labels.append({"label": label, "fx": mid, "dx": 0, "fy": 1, "dy": 15, "angle": 0})
        # rows: a bracket beside the plot, on the side of the row labels
        for order, (dx, fy, dy) in enumerate([(2, a, 1), (6, a, 1), (6, b, -1), (2, b, -1)]):
            point(f"y{n}", order, edge, out * dx, fy, dy)
        labels.append(
            {
                "label": label,
                "fx": edge,
                "dx": out * 15,
                "fy": mid,
                "dy": 0,
                "angle": 90 * out,
            }
        )
    return points, labels


def _band(index: int, count: int, width: float) -> tuple[float, float]:
    """Pixel extent of band `index` in a grid scale (d3's band layout with the grid padding)."""
    step = width / max(1, count - _GRID_PAD_INNER + 2 * _GRID_PAD_OUTER)
    start = _GRID_PAD_OUTER * step + index * step
    return start, start + step * (1 - _GRID_PAD_INNER)


def _zoom_lines(
    layer: int,
    head: int,
    layers: int,
    step: int,
    grid_width: int,
    connector_width: int,
    side: int,
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """The two lines from the outlined cell's right corners to the heatmap's left corners, cut
    where the grid panel ends (grid part, connector part; each in its own view's pixels)."""
    x0 = _band(head, grid_width // step, grid_width)[1]
    top, bottom = _band(layer, layers, layers * step)
    end_x = grid_width + connector_width
    in_grid, in_connector = [], []
    for y0, y1 in ((top, 0.0), (bottom, float(side))):
        y_edge = y0 + (y1 - y0) * (grid_width - x0) / (end_x - x0)
        in_grid.append({"x": x0, "y": y0, "x2": grid_width, "y2": sig(y_edge)})
        in_connector.append({"x": 0, "y": sig(y_edge), "x2": connector_width, "y2": y1})
    return in_grid, in_connector
