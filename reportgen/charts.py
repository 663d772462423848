"""Charts: Vega-Lite specs built from records. Pure functions: records in, spec dicts out.

Specs are built with Altair around *named* data placeholders (`alt.Data(name=...)`); the rows go
into `spec["datasets"]` afterwards, because Altair walking every row is slow. Every view and
selection has an explicit name, so a spec is stable and diffable. The per-input heatmap data is
one packed row per head holding that head's top-k cells (`pack_cells`); the heatmap filters
those rows by the grid's selection *before* flattening them, so a click touches k cells, not T².

Selections on the linked grid (names are part of the page's JS surface and of the tests):
- `pick`: point selection of (layer, head) on pointer-down; shift adds heads. The page opens
  with the top head picked.
- `brush`: interval selection (drag a box) of a block of heads; a plain click clears it.
The heatmap shows the union of both, each cell the share of the selection's total saliency.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np

from reportgen.saliency import Result, TokenSpan

VIRIDIS_LOW = "#440154"
"""viridis(0): the heatmap's background, so a cell without data reads as zero saliency."""
OUTLINE = "#ffd60a"
"""The selection outline (yellow, as in the reference figure)."""
FONT = "Inter, 'Segoe UI', system-ui, -apple-system, Roboto, 'Helvetica Neue', Arial, sans-serif"
SIGNIFICANT = 4
"""Significant digits kept for the scores in page data (small, deterministic pages)."""

GRID = "grid"
GRID_CELLS = "grid_cells"
HEAT = "heat"
HEAT_CELLS = "heat_cells"
PICK = "pick"
BRUSH = "brush"
TOKENS = "tokens"
HEADS_DATA = "heads"
CELLS_DATA = "cells"
BRACKETS_DATA = "brackets"
BRACKET_LABELS_DATA = "bracket_labels"
CONNECTOR_DATA = "connector"

QUERY_TITLE = "query token (attends from)"
KEY_TITLE = "key token (attended to)"
LEGEND_TITLE = "saliency"

FLATTEN_BUDGET = 4096
"""Fewest cells a heatmap update flattens before it cuts the selected heads' rows short."""
MAX_DEFAULT_CELLS = 512
"""Most cells kept per head by default (`default_top_k`). A click redraws one head's cells, and
Vega's work and the canvas's grow with them: at T = 512 (1.25 px cells), 1,024 cells per head
put a click at ~20 ms, 512 at ~13 ms, keeping ~63% of a head's saliency instead of ~73% (the
benchmark's random 12 × 12 model; trained heads are sharper). `--top-k` sets it."""
_GRID_PAD_INNER, _GRID_PAD_OUTER = 0.08, 0.04
_AXIS_GAP = 22
"""Pixels between the heatmap and its token labels, where the segment brackets are drawn."""


# --- data ----------------------------------------------------------------------------------


def sig(x: float, digits: int = SIGNIFICANT) -> float:
    """`x` rounded to `digits` significant digits (as the JSON pages store it)."""
    return float(f"{float(x):.{digits}g}")


def metric_name(result: Result, metric: str | None) -> str:
    """The head-score metric to show: `metric` if given, else the run's non-default one.

    A Result does not record the run's metric; callers with a run pass `run.info.metric`. Without
    it, a `flow:` metric is preferred (it is only computed when asked for), else `total`."""
    if metric is not None:
        if metric not in result.head_scores:
            raise KeyError(
                f"input '{result.example.id}' has no head scores for metric '{metric}' "
                f"(it has: {', '.join(result.head_scores)})"
            )
        return metric
    flows = [name for name in result.head_scores if name.startswith("flow:")]
    return flows[0] if flows else "total"


def top_head(grid: np.ndarray) -> tuple[int, int]:
    """The (layer, head) with the largest score, 0-based; the first one on ties."""
    layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(layer), int(head)


def top_heads(grid: np.ndarray, n: int) -> list[tuple[int, int, float]]:
    """The `n` strongest heads as (layer, head, score), 0-based, strongest first (stable)."""
    flat = np.asarray(grid, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")[:n]
    heads = grid.shape[1]
    return [(int(k // heads), int(k % heads), float(flat[k])) for k in order]


def heads_rows(grid: np.ndarray) -> list[dict[str, Any]]:
    """The grid as rows {layer, head, score}, 1-based layer and head."""
    layers, heads = grid.shape
    return [
        {"layer": layer + 1, "head": head + 1, "score": sig(grid[layer, head])}
        for layer in range(layers)
        for head in range(heads)
    ]


def sig_array(values: np.ndarray, digits: int = SIGNIFICANT, flat: bool = True) -> Any:
    """`sig` over an array, vectorised: each value is the double nearest its rounded decimal,
    so JSON writes it short (0.1235, not 0.12350000000000001). A flat list of floats, or nested
    lists (`flat=False`) shaped like `values`."""
    x = np.asarray(values, dtype=np.float64)
    nonzero = x != 0
    magnitude = np.floor(np.log10(np.abs(np.where(nonzero, x, 1.0))))
    power = np.clip(digits - 1 - magnitude, -300, 300)
    up = power >= 0
    with np.errstate(over="ignore", invalid="ignore"):
        factor = 10.0 ** np.abs(power)
        rounded = np.where(up, np.round(x * factor) / factor, np.round(x / factor) * factor)
    out = np.where(nonzero, rounded, 0.0)
    return out.ravel().tolist() if flat else out.tolist()


@dataclass(frozen=True)
class Packed:
    """Each head's top-k token cells, one row per head, and how much saliency they carry."""

    rows: list[dict[str, Any]]
    """{layer, head, tot, kept, c: [...], v: [...]}: 1-based layer and head; cells c = i·T + j
    (query i, key j, 0-based), strongest first; |score| values v and the head's total `tot`,
    scaled so the largest head total is 1; `kept` = sum(v)."""
    tokens: int
    k: int
    cells: int
    """T × T, the cells each head has."""
    kept_share: float
    """Share of all heads' saliency carried by the kept cells."""
    min_kept_share: float
    """The smallest such share of a single head (heads without saliency excluded)."""


def pack_cells(scores: np.ndarray, top_k: int | None = None) -> Packed:
    """Pack |scores| [L, H, T, T] into one row per head with its top-k cells (default k =
    `default_top_k(T)`).

    Values are absolute (attattr scores are signed) and rounded; zero cells are never kept.
    Cells are listed strongest first (ties by position), so the heatmap can cut a row short
    when many heads are selected, and the output is deterministic."""
    layers, heads, t, _ = scores.shape
    n = t * t
    k = max(1, min(n, default_top_k(t) if top_k is None else top_k))
    totals = np.abs(np.asarray(scores)).sum(axis=(2, 3), dtype=np.float64).ravel()
    scale = 1.0 / totals.max() if totals.size and totals.max() > 0 else 1.0
    cells, values = [], []
    for layer in range(layers):  # one layer at a time bounds the memory used
        mag = np.abs(np.asarray(scores[layer], dtype=np.float32)).reshape(heads, n)
        idx = (
            np.argpartition(-mag, k - 1, axis=1)[:, :k]
            if k < n
            else np.broadcast_to(np.arange(n), (heads, n))
        )
        top = np.take_along_axis(mag, idx, axis=1)
        order = np.lexsort((idx, -top), axis=-1)  # strongest first, ties by position
        cells.append(np.take_along_axis(idx, order, 1))
        values.append(np.take_along_axis(top, order, 1))
    cell = np.concatenate(cells)
    value = np.concatenate(values).astype(np.float64)
    counts = (value > 0).sum(axis=1)  # zero cells sort last and are dropped
    kept = value.sum(axis=1)
    shown = sig_array(value * scale, flat=False)
    tots, keeps = sig_array(totals * scale), sig_array(kept * scale)
    cell_lists = cell.tolist()
    rows = [
        {
            "layer": row // heads + 1,
            "head": row % heads + 1,
            "tot": tots[row],
            "kept": keeps[row],
            "c": cell_lists[row][: counts[row]],
            "v": shown[row][: counts[row]],
        }
        for row in range(layers * heads)
    ]
    kept_total = float(kept.sum())
    positive = totals > 0
    shares = kept[positive] / totals[positive]
    grand = float(totals.sum())
    return Packed(
        rows=rows,
        tokens=t,
        k=k,
        cells=n,
        kept_share=kept_total / grand if grand > 0 else 1.0,
        min_kept_share=float(shares.min()) if shares.size else 1.0,
    )


def default_top_k(tokens: int) -> int:
    """Cells kept per head unless asked otherwise: 2T (a head's strongest links, about two per
    query), at most MAX_DEFAULT_CELLS."""
    return min(2 * tokens, MAX_DEFAULT_CELLS)


def flatten_budget(packed_k: int) -> int:
    """Cells flattened per update: all k cells of up to 4 heads (at least FLATTEN_BUDGET); a
    bigger selection keeps each head's strongest budget/n cells, so a brush over every head
    stays interactive. The page's caption says how much saliency the drawn cells carry."""
    return max(FLATTEN_BUDGET, 4 * packed_k)


def selection_share(result: Result, heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """The heatmap the page shows for a set of 0-based heads, computed from all cells: |scores|
    summed over the heads, divided by their total (float64 [T, T], rows are queries)."""
    mag = np.abs(np.asarray(result.scores, dtype=np.float64))
    summed = sum(mag[layer, head] for layer, head in heads)
    total = float(np.sum(summed))
    return np.asarray(summed) / total if total > 0 else np.zeros_like(mag[0, 0])


# --- geometry ------------------------------------------------------------------------------


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
    spans: Sequence[TokenSpan], tokens: int, side: int, row_axis: str = "left"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pixel geometry of the segment brackets drawn between the heatmap and its token labels.

    Returns (line points {key, order, px, py}, labels {label, px, py, angle}); the labels are
    data, so a segment name is never part of a Vega expression."""
    band = side / tokens
    points: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    out = 1 if row_axis == "right" else -1
    edge = side if row_axis == "right" else 0
    for n, span in enumerate(_named_spans(spans)):
        a, b = span.start * band + 1, span.end * band - 1
        label = span.name if span.name.startswith("<") else f"<{span.name}>"
        # columns: a bracket under the plot, its ends pointing at it
        for order, (px, py) in enumerate(
            [(a, side + 2.0), (a, side + 6.0), (b, side + 6.0), (b, side + 2.0)]
        ):
            points.append({"key": f"x{n}", "order": order, "px": sig(px), "py": sig(py)})
        labels.append({"label": label, "px": sig((a + b) / 2), "py": side + 15, "angle": 0})
        # rows: a bracket beside the plot, on the side of the row labels
        for order, (px, py) in enumerate(
            [
                (edge + out * 2, a),
                (edge + out * 6, a),
                (edge + out * 6, b),
                (edge + out * 2, b),
            ]
        ):
            points.append({"key": f"y{n}", "order": order, "px": sig(px), "py": sig(py)})
        labels.append(
            {"label": label, "px": edge + out * 15, "py": sig((a + b) / 2), "angle": 90 * out}
        )
    return points, labels


# --- views ---------------------------------------------------------------------------------


def _grid_view(
    layers: int,
    heads: int,
    selected: Any,
    title: str | None = None,
    legend: bool = False,
    extra: Sequence[Any] = (),
) -> alt.LayerChart:
    """The layer × head grid (layer 1 at the top): cells, then a yellow outline with a dark
    halo (visible on any colour) around the heads where `selected` holds."""
    step = grid_step(layers, heads)
    band: dict[str, Any] = {"paddingInner": _GRID_PAD_INNER, "paddingOuter": _GRID_PAD_OUTER}
    base = alt.Chart(alt.Data(name=HEADS_DATA)).encode(
        x=alt.X(
            "head:O",
            title="head",
            scale={"domain": list(range(1, heads + 1)), **band},
            axis=alt.Axis(labelAngle=0, ticks=False, domain=False, orient="bottom"),
        ),
        y=alt.Y(
            "layer:O",
            title="layer",
            scale={"domain": list(range(1, layers + 1)), **band},
            axis=alt.Axis(ticks=False, domain=False),
        ),
    )
    cells = (
        base.mark_rect(cursor="pointer")
        .encode(
            color=alt.Color(
                "score:Q",
                title="share",
                scale=alt.Scale(scheme="viridis", domainMin=0),
                legend=alt.Legend(format=".0%", gradientLength=max(80, step * layers))
                if legend
                else None,
            ),
            tooltip=[
                alt.Tooltip("layer:O", title="layer"),
                alt.Tooltip("head:O", title="head"),
                alt.Tooltip("score:Q", title="score", format=".2%"),
            ],
        )
        .properties(name=GRID_CELLS)
    )
    halo = (
        base.transform_filter(selected)
        .mark_rect(fill=None, stroke="#1d1d1f", strokeWidth=4.5, strokeOpacity=0.85)
        .properties(name="grid_halo")
    )
    outline = (
        base.transform_filter(selected)
        .mark_rect(fill=None, stroke=OUTLINE, strokeWidth=2.5)
        .properties(name="grid_outline")
    )
    chart = alt.LayerChart(
        layer=[cells, halo, outline, *extra],
        name=GRID,
        width=step * heads,
        height=step * layers,
    )
    if title:
        chart = chart.properties(title=alt.TitleParams(title, anchor="start", fontSize=12))
    return chart


def _heat_view(
    tokens: int,
    keys_as_rows: bool,
    selected: Any | None,
    has_spans: bool,
    budget: int | None,
    row_axis: str = "left",
) -> alt.LayerChart:
    """The T × T heatmap of the selected heads, from the packed per-head rows.

    Filter (selection) → joinaggregate (the selection's total and size) → cut each row to its
    strongest ⌈budget / heads⌉ cells → flatten → each cell's share of the total → aggregate
    (sum over heads). Filtering and cutting first keep an update at no more than k cells per
    head and `budget` in all.

    Per-cell work is what a click at T = 512 pays for (issue 6), so a cell carries only its
    position and share: no ARIA description (the canvas renderer never reads it), and the
    tooltip is the datum itself, which the page formats when a cell is hovered (`reportgen.js`
    looks the tokens up then). Long token axes list every n-th label rather than all T."""
    side = heat_side(tokens)
    rows, cols = ("j", "i") if keys_as_rows else ("i", "j")
    titles = {"i": QUERY_TITLE, "j": KEY_TITLE}
    domain = list(range(tokens))
    label = f"{TOKENS}[datum.value]"
    gap = _AXIS_GAP if has_spans else 4
    axis_style: dict[str, Any] = {
        "labelExpr": label,
        "labelFontSize": _label_size(tokens),
        "labelLimit": 120,
        "labelOverlap": "greedy",
        "labelPadding": 3,
        "tickSize": 3,
        "domain": False,
        "offset": gap,
        "titlePadding": 8,
    }
    stride = label_stride(tokens)
    if stride > 1:
        axis_style["values"] = list(range(0, tokens, stride))
    band: dict[str, Any] = {"domain": domain, "paddingInner": 0, "paddingOuter": 0}
    cells = alt.Chart(alt.Data(name=CELLS_DATA))
    if selected is not None:
        cells = cells.transform_filter(selected)
    cells = cells.transform_joinaggregate(seltot="sum(tot)", nsel="count()")
    if budget is not None:
        cells = cells.transform_calculate(n=f"ceil({budget} / datum.nsel)").transform_calculate(
            ck="slice(datum.c, 0, datum.n)", vk="slice(datum.v, 0, datum.n)"
        )
    else:
        cells = cells.transform_calculate(ck="datum.c", vk="datum.v")
    cells = (
        cells.transform_flatten(["ck", "vk"])
        .transform_calculate(part="datum.seltot > 0 ? datum.vk / datum.seltot : 0")
        .transform_aggregate(share="sum(part)", groupby=["ck"])
        .transform_calculate(i=f"floor(datum.ck / {tokens})", j=f"datum.ck % {tokens}")
        .mark_rect(aria=False, tooltip=alt.ExprRef(expr="datum"))
        .encode(
            x=alt.X(
                f"{cols}:O",
                title=titles[cols],
                scale=band,
                axis={
                    "labelAngle": -90,
                    "labelAlign": "right",
                    "labelBaseline": "middle",
                    **axis_style,
                },
            ),
            y=alt.Y(
                f"{rows}:O",
                title=titles[rows],
                scale=band,
                axis={"orient": row_axis, **axis_style},
            ),
            color=alt.Color(
                "share:Q",
                title=LEGEND_TITLE,
                scale=alt.Scale(scheme="viridis", domainMin=0),
                legend=alt.Legend(
                    title=LEGEND_TITLE,
                    orient="right",
                    gradientLength=min(side, 240),
                    format=".2~g",
                    offset=12,
                ),
            ),
        )
        .properties(name=HEAT_CELLS)
    )
    layers: list[Any] = [cells]
    if has_spans:
        layers.append(
            alt.Chart(alt.Data(name=BRACKETS_DATA))
            .mark_line(color="#555", strokeWidth=1.2, clip=False)
            .encode(
                x=alt.X("px:Q", scale=None, axis=None),
                y=alt.Y("py:Q", scale=None, axis=None),
                detail="key:N",
                order="order:Q",
            )
            .properties(name="heat_brackets")
        )
        layers.append(
            alt.Chart(alt.Data(name=BRACKET_LABELS_DATA))
            .mark_text(fontSize=9, fontWeight=600, color="#444", baseline="middle", clip=False)
            .encode(
                x=alt.X("px:Q", scale=None, axis=None),
                y=alt.Y("py:Q", scale=None, axis=None),
                text="label:N",
                angle=alt.Angle("angle:Q", scale=None),
            )
            .properties(name="heat_bracket_labels")
        )
    return alt.LayerChart(
        layer=layers,
        name=HEAT,
        width=side,
        height=side,
        view=alt.ViewBackground(fill=VIRIDIS_LOW, stroke=None),
    )


CONFIG: dict[str, Any] = {
    "font": FONT,
    "view": {"stroke": None},
    "axis": {
        "labelColor": "#3d3d3d",
        "titleColor": "#1f1f1f",
        "titleFontWeight": 600,
        "titleFontSize": 12,
        "labelFontSize": 11,
        "tickColor": "#888",
        "domainColor": "#888",
    },
    "legend": {
        "titleFontSize": 12,
        "titleFontWeight": 600,
        "labelFontSize": 11,
        "titleColor": "#1f1f1f",
    },
}
"""The shared look: font, axes and legends, no view border."""


def _view_dict(chart: Any) -> dict[str, Any]:
    """One view as a dict, without the top-level keys Altair adds (schema URL, theme config)."""
    spec = dict(chart.to_dict())
    for key in ("$schema", "config", "datasets"):
        spec.pop(key, None)
    return spec


def _top_level(body: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    """A top-level spec around `body` (a view or a concat), with our config and params.

    Concatenation happens here, on dicts: Altair's own concat renames named layers (`heat_cells`
    becomes `heat_cells_1`) to attach params, which would break the names pages rely on."""
    spec: dict[str, Any] = {"config": CONFIG, "padding": 8, "background": "white", **body}
    if params:
        spec["params"] = [*spec.get("params", []), *params]
    return spec


# --- compiled Vega ---------------------------------------------------------------------------

_HOLE = "__reportgen_hole__"
"""Placeholder key/prefix for the values a compiled skeleton leaves out (see `to_vega`)."""


def to_vega(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The Vega spec of a Vega-Lite `spec`, exactly as vl-convert compiles it.

    Pages carry Vega, not Vega-Lite, so the browser needs no Vega-Lite compiler (a third of the
    bundle) and draws without compiling first. Compiling takes ~15 ms, so it happens once per
    shape: the datasets and param values are swapped for placeholders, that skeleton is compiled
    (cached), and the values are put back into the compiled spec. That holds only where
    Vega-Lite copies each value through as it is; where it does more (an interval's initial
    extent becomes expressions, a date object a timestamp), or where the spec's own text holds
    the placeholder prefix, the placeholders do not come back once each as plain values, and the
    spec is compiled whole instead. The result shares the datasets' rows with `spec`."""
    values: dict[str, Any] = {}

    def hole(value: Any) -> str:
        key = f"{_HOLE}{len(values)}"
        values[key] = value
        return key

    skeleton = dict(spec)
    if "datasets" in spec:
        skeleton["datasets"] = {
            name: [{_HOLE: hole(rows)}] for name, rows in spec["datasets"].items()
        }
    if "params" in spec:
        skeleton["params"] = [_param_skeleton(param, hole) for param in spec["params"]]
    compiled = _compiled(json.dumps(skeleton))
    expected = len(values) + len(spec.get("datasets", {}))  # a dataset's names the prefix twice
    if compiled.count(_HOLE) == expected and all(
        compiled.count(json.dumps(key)) == 1 for key in values
    ):
        filled = _fill(json.loads(compiled), values)
        if not values:
            return dict(filled)
    import vl_convert

    return dict(vl_convert.vegalite_to_vega(dict(spec)))


def _param_skeleton(param: Mapping[str, Any], hole: Any) -> dict[str, Any]:
    """A param with its value replaced by placeholders: a selection's initial value keeps its
    shape (Vega-Lite reads its fields) with placeholder leaves; any other value is one hole."""
    out = dict(param)
    if "value" not in param:
        return out
    if "select" in param and isinstance(param["value"], list):
        out["value"] = [
            {field: hole(v) for field, v in item.items()} if isinstance(item, dict) else item
            for item in param["value"]
        ]
    else:
        out["value"] = hole(param["value"])
    return out


def _fill(node: Any, values: dict[str, Any]) -> Any:
    """`node` with every placeholder replaced by its value (each used, and removed, once)."""
    if isinstance(node, str):
        return values.pop(node) if node in values else node
    if isinstance(node, list):
        if len(node) == 1 and isinstance(node[0], dict) and set(node[0]) == {_HOLE}:
            return values.pop(node[0][_HOLE])  # a dataset's rows
        return [_fill(item, values) for item in node]
    if isinstance(node, dict):
        return {key: _fill(item, values) for key, item in node.items()}
    return node


@functools.lru_cache(maxsize=64)
def _compiled(skeleton: str) -> str:
    import vl_convert

    return json.dumps(vl_convert.vegalite_to_vega(json.loads(skeleton)))


# --- specs ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _linked_skeleton(
    layers: int, heads: int, tokens: int, keys_as_rows: bool, spans: bool, budget: int
) -> str:
    """The linked spec for one shape, as JSON (built once per shape: Altair is the slow part)."""
    pick = alt.selection_point(
        name=PICK,
        fields=["layer", "head"],
        on="pointerdown",
        clear="dblclick",
        value=[{"layer": 1, "head": 1}],
        empty=False,
    )
    brush = alt.selection_interval(
        name=BRUSH,
        encodings=["x", "y"],
        empty=False,
        translate=False,
        zoom=False,
        clear="dblclick",
        mark=alt.BrushConfig(
            fill=OUTLINE, fillOpacity=0.12, stroke=OUTLINE, strokeWidth=1.5, cursor="crosshair"
        ),
    )
    selected = pick | brush
    grid = _view_dict(_grid_view(layers, heads, selected))
    heat = _view_dict(_heat_view(tokens, keys_as_rows, selected, spans, budget))
    body = {"hconcat": [grid, heat], "spacing": 48, "resolve": {"scale": {"color": "independent"}}}
    params = [
        {**_param_dict(pick), "views": [GRID_CELLS]},
        {**_param_dict(brush), "views": [GRID_CELLS]},
        {"name": TOKENS, "value": []},
    ]
    return json.dumps(_top_level(body, params))


def _param_dict(selection: alt.Parameter) -> dict[str, Any]:
    return dict(selection.param.to_dict())  # type: ignore[union-attr]  # always set by selection_*


def _set_param(spec: dict[str, Any], name: str, value: Any) -> None:
    for param in spec["params"]:
        if param["name"] == name:
            param["value"] = value
            return
    raise KeyError(name)


@dataclass(frozen=True)
class LinkedChart:
    """The per-input linked spec and facts the page states about its data."""

    spec: dict[str, Any]
    packed: Packed
    metric: str
    top: tuple[int, int]
    """The head selected when the page opens, 0-based."""
    budget: int
    """Cells flattened per update at most (see `flatten_budget`)."""


def linked_spec(
    result: Result,
    metric: str | None = None,
    keys_as_rows: bool = False,
    top_k: int | None = None,
) -> LinkedChart:
    """The per-input figure: the head grid (click a head, drag a block) linked to the heatmap."""
    metric = metric_name(result, metric)
    grid = np.asarray(result.head_scores[metric])
    layers, heads = grid.shape
    tokens = len(result.tokens)
    has_spans = bool(_named_spans(result.spans))
    packed = pack_cells(result.scores, top_k)
    budget = flatten_budget(packed.k)
    spec = json.loads(_linked_skeleton(layers, heads, tokens, keys_as_rows, has_spans, budget))
    top = top_head(grid)
    _set_param(spec, PICK, [{"layer": top[0] + 1, "head": top[1] + 1}])
    _set_param(spec, TOKENS, list(result.tokens))
    datasets: dict[str, Any] = {HEADS_DATA: heads_rows(grid), CELLS_DATA: packed.rows}
    if has_spans:
        points, labels = bracket_rows(result.spans, tokens, heat_side(tokens))
        datasets[BRACKETS_DATA], datasets[BRACKET_LABELS_DATA] = points, labels
    spec["datasets"] = datasets
    return LinkedChart(spec, packed, metric, top, budget)


def grid_spec(grid: np.ndarray, title: str | None = None) -> dict[str, Any]:
    """A head grid on its own (the index page's dataset average), with a `pick` selection."""
    layers, heads = np.asarray(grid).shape
    pick = alt.selection_point(
        name=PICK, fields=["layer", "head"], on="click", clear="dblclick", empty=False
    )
    chart = _grid_view(layers, heads, pick, title=title, legend=True)
    spec = _top_level(_view_dict(chart), [{**_param_dict(pick), "views": [GRID_CELLS]}])
    spec["datasets"] = {HEADS_DATA: heads_rows(np.asarray(grid))}
    return spec


def figure_spec(
    result: Result,
    head: tuple[int, int] | None,
    keys_as_rows: bool,
    *,
    metric: str | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """The static two-panel figure: the grid with `head` outlined, lines to that head's heatmap.

    `head` is 0-based (layer, head); None means the top head under `metric` (see `metric_name`).
    All cells are drawn unless `top_k` is given (up to 40,000 cells, then the strongest)."""
    metric = metric_name(result, metric)
    grid = np.asarray(result.head_scores[metric])
    layers, heads = grid.shape
    if head is None:
        head = top_head(grid)
    layer, h = head
    if not (0 <= layer < layers and 0 <= h < heads):
        raise ValueError(
            f"head {head} is outside the model's {layers} layers × {heads} heads (0-based)"
        )
    tokens = len(result.tokens)
    side, step = heat_side(tokens), grid_step(layers, heads)
    has_spans = bool(_named_spans(result.spans))
    selected = (alt.datum.layer == layer + 1) & (alt.datum.head == h + 1)
    heat = _heat_view(tokens, keys_as_rows, None, has_spans, None, row_axis="right")
    connector_width = 70
    grid_width = step * heads
    lines_grid, lines_connector = _zoom_lines(
        layer, h, layers, step, grid_width, connector_width, side
    )

    def rules(name: str, data: str) -> alt.Chart:
        return (
            alt.Chart(alt.Data(name=data))
            .mark_rule(color=OUTLINE, strokeWidth=1.5, clip=False)
            .encode(
                x=alt.X("x:Q", scale=None, axis=None),
                y=alt.Y("y:Q", scale=None, axis=None),
                x2="x2:Q",
                y2="y2:Q",
            )
            .properties(name=name)
        )

    grid_panel = _grid_view(layers, heads, selected, extra=[rules("grid_zoom", "zoom_grid")])
    connector = rules("connector", CONNECTOR_DATA).properties(
        width=connector_width, height=max(side, step * layers)
    )
    body = {
        "hconcat": [_view_dict(grid_panel), _view_dict(connector), _view_dict(heat)],
        "spacing": 0,
        "resolve": {"scale": {"color": "independent"}},
    }
    spec = _top_level(body, [{"name": TOKENS, "value": list(result.tokens)}])
    k = min(tokens * tokens, 40_000) if top_k is None else top_k
    packed = pack_cells(result.scores[layer : layer + 1, h : h + 1], k)
    row = dict(packed.rows[0], layer=layer + 1, head=h + 1)
    datasets: dict[str, Any] = {
        HEADS_DATA: heads_rows(grid),
        CELLS_DATA: [row],
        "zoom_grid": lines_grid,
        CONNECTOR_DATA: lines_connector,
    }
    if has_spans:
        points, labels = bracket_rows(result.spans, tokens, side, row_axis="right")
        datasets[BRACKETS_DATA], datasets[BRACKET_LABELS_DATA] = points, labels
    spec["datasets"] = datasets
    return spec


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
