"""Views: Vega-Lite specs built with Altair from records. Pure functions: records in, spec
dicts out.

Specs are built with Altair around *named* data placeholders (`alt.Data(name=...)`); the rows go
into `spec["datasets"]` afterwards, because Altair walking every row is slow. Every view and
selection has an explicit name (`names.py`), so a spec is stable and diffable. The heatmap
filters the packed per-head rows by the grid's selection *before* flattening them.

Selections on the linked grid:
- `pick`: point selection of (layer, head) on pointer-down; shift adds heads. The page opens
  with the top head picked.
- `brush`: interval selection (drag a box) of a block of heads; a plain click clears it.
The heatmap shows the union of both, each cell the share of the selection's total saliency.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import altair as alt
import numpy as np

from reportgen.charts.geometry import (
    _GRID_PAD_INNER,
    _GRID_PAD_OUTER,
    _label_size,
    _named_spans,
    _zoom_lines,
    bracket_rows,
    grid_step,
    heat_side,
    label_stride,
)
from reportgen.charts.names import (
    BRACKET_LABELS_DATA,
    BRACKETS_DATA,
    BRUSH,
    CELLS_DATA,
    CONNECTOR_DATA,
    GRID,
    GRID_CELLS,
    HEADS_DATA,
    HEAT,
    HEAT_CELLS,
    HEAT_EMPTY,
    NOTHING,
    PAIR_FLOW,
    PAIR_FLOW_DATA,
    PAIR_FLOW_LINES,
    PATCHING,
    PATCHING_CELLS,
    PATCHING_DATA,
    PICK,
    RELEVANCE,
    RELEVANCE_CELLS,
    RELEVANCE_DATA,
    RELEVANCE_OUTLINE,
    SELECTIONS,
    SIGNED,
    TOKENS,
    size,
    store,
)
from reportgen.charts.packing import (
    Packed,
    flatten_budget,
    heads_rows,
    metric_name,
    one_head,
    pack_cells,
    sig,
    sig_array,
    top_head,
)
from reportgen.data.metrics import parse_metric
from reportgen.data.results import PairFlow, Patching, Result

VIRIDIS_LOW = "#440154"
"""viridis(0): the heatmap's background, so a cell without data reads as zero saliency."""
OUTLINE = "#ffd60a"
"""The selection outline (yellow, as in the reference figure)."""
FONT = "Inter, 'Segoe UI', system-ui, -apple-system, Roboto, 'Helvetica Neue', Arial, sans-serif"
QUERY_TITLE = "query token (attends from)"
KEY_TITLE = "key token (attended to)"
LEGEND_TITLE = "share of selection"
"""What the linked heatmap's colours are: each cell's part of the selected heads' total."""
FIGURE_LEGEND_TITLE = "share of head"
"""What the static figure's colours are: each cell's part of its one head's total."""
EMPTY_TEXT = "Nothing selected: click a head in the grid"
DIVERGING = "redblue"
"""Signed values: blue below zero, red above, white at zero (the midpoint)."""
_AXIS_GAP = 22
"""Pixels between the heatmap and its token labels, where the segment brackets are drawn."""


def _grid_view(
    layers: int,
    heads: int,
    selected: Any,
    title: str | None = None,
    legend: bool = False,
    extra: Sequence[Any] = (),
    colour: str = "score",
    tooltip: Sequence[Any] | None = None,
    calculate: dict[str, str] | None = None,
) -> alt.LayerChart:
    """The layer × head grid (layer 1 at the top): cells coloured by the field `colour`, then a
    yellow outline with a dark halo (visible on any colour) around the heads where `selected`
    holds. `calculate` adds fields (name: Vega expression) before the encoding reads them."""
    step = grid_step(layers, heads)
    band: dict[str, Any] = {"paddingInner": _GRID_PAD_INNER, "paddingOuter": _GRID_PAD_OUTER}
    source = alt.Chart(alt.Data(name=HEADS_DATA))
    if calculate:
        source = source.transform_calculate(**calculate)
    base = source.encode(
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
                f"{colour}:Q",
                title="share",
                scale=alt.Scale(scheme="viridis", domainMin=0),
                legend=alt.Legend(format=".0%", gradientLength=max(80, step * layers))
                if legend
                else None,
            ),
            tooltip=list(tooltip)
            if tooltip is not None
            else [
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
    signed: bool = False,
    legend_title: str = LEGEND_TITLE,
) -> alt.LayerChart:
    """The T × T heatmap of the selected heads, from the packed per-head rows.

    Filter (selection) → joinaggregate (the selection's total and size) → cut each row to its
    strongest ⌈budget / heads⌉ cells → flatten → each cell's share of the total → aggregate
    (sum over heads). Filtering and cutting first keep an update at no more than k cells per
    head and `budget` in all.

    Per-cell work is what a click at T = 512 pays for (issue 6), so a cell carries only its
    position and share: no ARIA description (the canvas renderer never reads it), and the
    tooltip is the datum itself, which the page formats when a cell is hovered (`reportgen.js`
    looks the tokens up then). Long token axes list every n-th label rather than all T.

    With a selection, an empty one is stated in the view (a line of text, a neutral background,
    no legend) instead of an all-zero map with a legend over an empty domain. `signed` (a signed
    method's page): the packed rows carry signed values `s` too, and the `signed` param chooses
    them (a diverging scale around zero) or the magnitudes (viridis from zero)."""
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
    empty = NOTHING if selected is not None else "false"
    cells = alt.Chart(alt.Data(name=CELLS_DATA))
    if selected is not None:
        # Nothing selected: every head's strongest cell passes with a share of 0, transparent,
        # so the colour scale keeps a finite domain (an empty one makes Vega warn and the
        # legend read "0NaN").
        either = selected.to_dict() if hasattr(selected, "to_dict") else selected
        keep = {"or": [*either["or"], f"{empty} && datum.kept > 0"]}
        cells = cells.transform_filter(cast(Any, keep))  # a predicate composition, as a dict
    cells = cells.transform_joinaggregate(seltot="sum(tot)", nsel="count()")
    arrays = {"ck": "c", "vk": "v", **({"sk": "s"} if signed else {})}
    if budget is not None:
        cut = f"{empty} ? 1 : ceil({budget} / datum.nsel)"
        cells = cells.transform_calculate(n=cut).transform_calculate(
            **{key: f"slice(datum.{field}, 0, datum.n)" for key, field in arrays.items()}
        )
    else:
        cells = cells.transform_calculate(**{k: f"datum.{f}" for k, f in arrays.items()})
    value = f"({SIGNED} ? datum.sk : datum.vk)" if signed else "datum.vk"
    if selected is not None:
        value = f"({empty} ? 0 : {value})"
    if signed:
        scale = alt.Scale(
            scheme=alt.ExprRef(expr=f"{SIGNED} ? '{DIVERGING}' : 'viridis'"),
            domainMid=alt.ExprRef(expr=f"{SIGNED} ? 0 : null"),
            domainMin=alt.ExprRef(expr=f"{SIGNED} ? null : 0"),
            reverse=alt.ExprRef(expr=SIGNED),
        )
    else:
        scale = alt.Scale(scheme="viridis", domainMin=0)
    shown = alt.ExprRef(expr=f"{empty} ? 0 : 1")
    cells = (
        cells.transform_flatten(list(arrays))
        .transform_calculate(part=f"datum.seltot > 0 ? {value} / datum.seltot : 0")
        .transform_aggregate(share="sum(part)", groupby=["ck"])
        .transform_calculate(i=f"floor(datum.ck / {tokens})", j=f"datum.ck % {tokens}")
        .mark_rect(
            aria=False,
            tooltip=alt.ExprRef(expr="datum"),
            opacity=alt.ExprRef(expr=f"{empty} ? 0 : 1"),
        )
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
                title=legend_title,
                scale=scale,
                legend=alt.Legend(
                    title=legend_title,
                    orient="right",
                    gradientLength=min(side, 240),
                    format=".2~g",
                    offset=12,
                    gradientOpacity=shown,
                    labelOpacity=shown,
                    titleOpacity=shown,
                ),
            ),
        )
        .properties(name=HEAT_CELLS)
    )
    layers: list[Any] = [cells]
    width, height = size(HEAT, "width"), size(HEAT, "height")  # shrunk on a narrow screen
    placed = {"px": f"datum.fx * {width} + datum.dx", "py": f"datum.fy * {height} + datum.dy"}
    if has_spans:
        layers.append(
            alt.Chart(alt.Data(name=BRACKETS_DATA))
            .transform_calculate(**placed)
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
            .transform_calculate(**placed)
            .mark_text(fontSize=9, fontWeight=600, color="#444", baseline="middle", clip=False)
            .encode(
                x=alt.X("px:Q", scale=None, axis=None),
                y=alt.Y("py:Q", scale=None, axis=None),
                text="label:N",
                angle=alt.Angle("angle:Q", scale=None),
            )
            .properties(name="heat_bracket_labels")
        )
    if selected is not None:
        layers.append(
            alt.Chart(alt.Data(values=[{"text": EMPTY_TEXT}]))
            .transform_filter(empty)
            .mark_text(
                fontSize=13,
                fontWeight=600,
                color=EMPTY_INK,
                x=alt.ExprRef(expr=f"{width} / 2"),
                y=alt.ExprRef(expr=f"{height} / 2"),
                # two lines where a narrow screen shrinks the heatmap below the line's width
                lineBreak=alt.ExprRef(expr=f"{width} >= 320 ? '' : ': '"),
            )
            .encode(text="text:N")
            .properties(name=HEAT_EMPTY)
        )
    zero = f"{SIGNED} ? 'white' : '{VIRIDIS_LOW}'" if signed else f"'{VIRIDIS_LOW}'"
    fill: Any = VIRIDIS_LOW
    if selected is not None:
        fill = alt.ExprRef(expr=f"{empty} ? '{EMPTY_FILL}' : {zero}")
    return alt.LayerChart(
        layer=layers,
        name=HEAT,
        width=side,
        height=side,
        view=alt.ViewBackground(fill=fill, stroke=None),
    )


def symmetric_signed_domain(vega: dict[str, Any]) -> dict[str, Any]:
    """A signed page's compiled spec with the heatmap's colour domain symmetric around zero
    while signed values show ([-m, m], m the largest |share| drawn), so a faint positive cell
    is not painted as dark as the strongest negative one. Vega-Lite cannot say this (a domain
    from data is the data's extent), so the compiled scale reads the drawn cells' extent from a
    signal. Changes `vega` in place and returns it."""
    scale = next(s for s in vega["scales"] if s["name"] == f"{HEAT}_color")
    source = scale["domain"]
    if not (isinstance(source, dict) and source.get("field") == "share"):
        raise ValueError(f"unexpected heatmap colour domain {source!r}")
    extent = f"{HEAT}_share_extent"
    vega["signals"].append(
        {"name": extent, "update": f"extent(pluck(data('{source['data']}'), 'share'))"}
    )
    m = f"max(abs({extent}[0] || 0), abs({extent}[1] || 0), 1e-12)"
    scale["domain"] = {"signal": f"{SIGNED} ? [-{m}, {m}] : [0, {m}]"}
    return vega


EMPTY_FILL = "#ececf1"
"""The heatmap's background when nothing is selected (no colour reads as a value)."""
EMPTY_INK = "#2b2b30"
"""The "nothing selected" line's colour (the page's dark theme swaps both)."""


def _empty_expr() -> str:
    """True while the grid's selections hold no head (after a double-click cleared them)."""
    return " && ".join(f"length(data('{store(name)}')) == 0" for name in SELECTIONS)


RELEVANCE_TITLE = "key token"


def _selected_layers(selected: Any, name: str) -> alt.Chart:
    """The layers holding a head of the grid's selection: the grid's rows, filtered by the
    selection and grouped by layer (so a chart by layer follows the grid's pick and brush)."""
    return (
        alt.Chart(alt.Data(name=HEADS_DATA))
        .transform_filter(selected)
        .transform_aggregate(heads="count()", groupby=["layer"])
        .properties(name=name)
    )


def _relevance_view(layers: int, tokens: int, selected: Any, width: int) -> alt.LayerChart:
    """Rollout relevance, layer × key token (layer 1 at the top): each cell the token's share
    of its layer's relevance for the prediction; the layers of the grid's selection outlined.
    A click on a layer selects its heads in the grid (`layer_marks` of `page_names`)."""
    step = max(8, min(18, grid_step(layers, 1)))
    label = f"{TOKENS}[datum.value]"
    axis: dict[str, Any] = {
        "labelExpr": label,
        "labelAngle": -90,
        "labelAlign": "right",
        "labelBaseline": "middle",
        "labelFontSize": _label_size(tokens),
        "labelOverlap": "greedy",
        "domain": False,
        "tickSize": 3,
    }
    stride = label_stride(tokens)
    if stride > 1:
        axis["values"] = list(range(0, tokens, stride))
    x = alt.X("j:O", title=RELEVANCE_TITLE, scale={"domain": list(range(tokens))}, axis=axis)
    y = alt.Y(
        "layer:O",
        title="layer",
        scale={"domain": list(range(1, layers + 1))},
        axis=alt.Axis(ticks=False, domain=False),
    )
    cells = (
        alt.Chart(alt.Data(name=RELEVANCE_DATA))
        .transform_calculate(token=f"{TOKENS}[datum.j]")
        .mark_rect(cursor="pointer")  # a click selects the layer's heads (reportgen.js)
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "share:Q",
                title="share of layer",
                scale=alt.Scale(scheme="viridis", domainMin=0),
                legend=alt.Legend(format=".0%", orient="right", offset=12),
            ),
            tooltip=[
                alt.Tooltip("layer:O", title="layer"),
                alt.Tooltip("token:N", title="key token"),
                alt.Tooltip("v:Q", title="relevance", format=".4g"),
                alt.Tooltip("share:Q", title="share of layer", format=".2%"),
            ],
        )
        .properties(name=RELEVANCE_CELLS)
    )
    outline = (
        _selected_layers(selected, RELEVANCE_OUTLINE)
        .mark_rect(fill=None, stroke=OUTLINE, strokeWidth=2.5)
        .encode(y=y, x=alt.value(0), x2=alt.value("width"))
    )
    return alt.LayerChart(layer=[cells, outline], name=RELEVANCE, width=width, height=step * layers)


def _pair_flow_view(layers: int, selected: Any, width: int) -> alt.LayerChart:
    """Wang et al.'s per-layer flow curves (one line per group of token pairs); rules at the
    layers of the grid's selection."""
    x = alt.X(
        "layer:O",
        title="layer",
        scale={"domain": list(range(1, layers + 1))},
        axis=alt.Axis(labelAngle=0),
    )
    lines = (
        alt.Chart(alt.Data(name=PAIR_FLOW_DATA))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("value:Q", title="S: mean |Σₕ A ⊙ ∂L/∂A| per pair"),
            color=alt.Color("curve:N", title="token pairs", sort=None),
            tooltip=[
                alt.Tooltip("layer:O", title="layer"),
                alt.Tooltip("curve:N", title="pairs"),
                alt.Tooltip("value:Q", title="S", format=".4g"),
            ],
        )
        .properties(name=PAIR_FLOW_LINES)
    )
    rules = (
        _selected_layers(selected, "pair_flow_selected")
        .mark_rule(color=OUTLINE, strokeWidth=2)
        .encode(x=x)
    )
    return alt.LayerChart(layer=[rules, lines], name=PAIR_FLOW, width=width, height=160)


def _patching_view(layers: int, heads: int, selected: Any) -> alt.LayerChart:
    """Attribution patching's estimate per head, as a grid like the saliency grid (diverging:
    blue lowers log p(target) when the head is zeroed, red raises it); the grid's selection
    outlined, the heads checked by real patching ringed in black."""
    step = grid_step(layers, heads)
    band: dict[str, Any] = {"paddingInner": _GRID_PAD_INNER, "paddingOuter": _GRID_PAD_OUTER}
    base = alt.Chart(alt.Data(name=PATCHING_DATA)).encode(
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
        base.mark_rect()
        .encode(
            color=alt.Color(
                "estimate:Q",
                title="est. Δ log p",
                scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True),
                legend=alt.Legend(format=".2~g", orient="right"),
            ),
            tooltip=[
                alt.Tooltip("layer:O", title="layer"),
                alt.Tooltip("head:O", title="head"),
                alt.Tooltip("estimate:Q", title="estimated Δ log p", format=".4g"),
                alt.Tooltip("real:Q", title="patched Δ log p", format=".4g"),
            ],
        )
        .properties(name=PATCHING_CELLS)
    )
    checked = (
        base.transform_filter("isValid(datum.real)")
        .mark_rect(fill=None, stroke="#1d1d1f", strokeWidth=1.5, strokeDash=[3, 2])
        .properties(name="patching_checked")
    )
    outline = (
        base.transform_filter(selected)
        .mark_rect(fill=None, stroke=OUTLINE, strokeWidth=2.5)
        .properties(name="patching_outline")
    )
    return alt.LayerChart(
        layer=[cells, checked, outline],
        name=PATCHING,
        width=step * heads,
        height=step * layers,
        title=alt.TitleParams(
            "attribution patching: estimated Δ log p(target), head zeroed",
            anchor="start",
            fontSize=12,
        ),
    )


def patching_rows(patching: Patching) -> list[dict[str, Any]]:
    """Rows {layer, head (1-based), estimate, real (checked heads only)}."""
    estimate = np.asarray(patching.estimate, np.float64)
    layers, heads = estimate.shape
    pairs = zip(patching.heads.tolist(), patching.real.tolist(), strict=True)
    real = {(int(layer), int(head)): float(v) for (layer, head), v in pairs}
    rows = []
    for layer in range(layers):
        for head in range(heads):
            row: dict[str, Any] = {
                "layer": layer + 1,
                "head": head + 1,
                "estimate": sig(estimate[layer, head]),
            }
            if (layer, head) in real:
                row["real"] = sig(real[layer, head])
            rows.append(row)
    return rows


def _layer_shares(relevance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rollout relevance [L, T] as float64, and each value's share of its layer's sum."""
    values = np.asarray(relevance, np.float64)
    sums = values.sum(-1, keepdims=True)
    return values, np.divide(values, sums, out=np.zeros_like(values), where=sums > 0)


def relevance_rows(relevance: np.ndarray) -> list[dict[str, Any]]:
    """Rollout relevance [L, T] as rows {layer (1-based), j, v, share of the layer's sum}."""
    values, shares = _layer_shares(relevance)
    v, share = sig_array(values, flat=False), sig_array(shares, flat=False)
    return [
        {"layer": layer + 1, "j": j, "v": v[layer][j], "share": share[layer][j]}
        for layer in range(values.shape[0])
        for j in range(values.shape[1])
    ]


def relevance_strongest(relevance: np.ndarray, n: int) -> list[list[tuple[int, float]]]:
    """The rollout chart as text: each layer's `n` strongest key tokens as (position, share of
    the layer's relevance), strongest first (of equal shares, the earlier token)."""
    _, shares = _layer_shares(relevance)
    order = np.argsort(-shares, axis=-1, kind="stable")[:, :n]
    return [[(int(j), float(row[j])) for j in top] for row, top in zip(shares, order, strict=True)]


def _pair_flow_curves(pairs: PairFlow, metric: str) -> list[tuple[str, np.ndarray]]:
    """Wang et al.'s curves of this input, a flow metric's SRC → DST first."""
    parsed = parse_metric(metric)
    src, dst = (parsed.src, parsed.dst) if parsed.kind == "flow" else (None, None)
    return pairs.curves(src, dst)


def pair_flow_table(pairs: PairFlow, metric: str) -> tuple[list[str], list[list[float | None]]]:
    """The per-layer flow chart as text: the curves' labels (as its legend has them), then for
    each layer each curve's value (None where the layer has none of the curve's pairs)."""
    curves = _pair_flow_curves(pairs, metric)
    table = [
        [float(curve[layer]) if np.isfinite(curve[layer]) else None for _, curve in curves]
        for layer in range(pairs.sums.shape[0])
    ]
    return [label for label, _ in curves], table


def pair_flow_rows(pairs: PairFlow, metric: str) -> list[dict[str, Any]]:
    """Wang et al.'s curves as rows {layer (1-based), curve, value} (layers without pairs of a
    curve left out); a flow metric's SRC → DST comes first."""
    rows = []
    for label, curve in _pair_flow_curves(pairs, metric):
        for layer, value in enumerate(curve):
            if np.isfinite(value):
                rows.append({"layer": layer + 1, "curve": label, "value": sig(value)})
    return rows


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


@functools.lru_cache(maxsize=64)
def _linked_skeleton(
    layers: int,
    heads: int,
    tokens: int,
    keys_as_rows: bool,
    spans: bool,
    budget: int,
    relevance: bool = False,
    pair_flow: bool = False,
    patching: bool = False,
    heat: bool = True,
    signed: bool = False,
) -> str:
    """The linked spec for one shape, as JSON (built once per shape: Altair is the slow part).
    Without `heat` (a long input), the grid has no heatmap beside it: the page draws its
    zoomable overview itself (`reportgen.js`, from `packing.pack_overview`)."""
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
    body: dict[str, Any] = grid
    width = grid_step(layers, heads) * heads
    if heat:
        heat_view = _view_dict(
            _heat_view(tokens, keys_as_rows, selected, spans, budget, signed=signed)
        )
        body = {
            "hconcat": [grid, heat_view],
            "spacing": 48,
            "resolve": {"scale": {"color": "independent"}},
        }
        width += 48 + heat_side(tokens)
    below = []
    if patching:
        below.append(_view_dict(_patching_view(layers, heads, selected)))
    if relevance:
        below.append(_view_dict(_relevance_view(layers, tokens, selected, width)))
    if pair_flow:
        below.append(_view_dict(_pair_flow_view(layers, selected, width)))
    if below:  # views by layer under the grid and heatmap, following the grid's selection
        body = {
            "vconcat": [body, *below],
            "spacing": 36,
            "resolve": {"scale": {"color": "independent"}},
        }
    params = [
        {**_param_dict(pick), "views": [GRID_CELLS]},
        {**_param_dict(brush), "views": [GRID_CELLS]},
        {"name": TOKENS, "value": []},
        {"name": NOTHING, "expr": _empty_expr()},
        *([{"name": SIGNED, "value": True}] if signed and heat else []),
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
    heat: bool = True,
    signed: bool = False,
) -> LinkedChart:
    """The per-input figure: the head grid (click a head, drag a block) linked to the heatmap
    (or, without `heat`, to the page's own overview of a long input).

    `signed` (a signed method): the heatmap shows signed values on a diverging scale, with the
    `signed` param to switch to magnitudes."""
    metric = metric_name(result, metric)
    grid = np.asarray(result.head_scores(metric))
    layers, heads = grid.shape
    tokens = len(result.tokens)
    has_spans = bool(_named_spans(result.spans))
    packed = pack_cells(result.stats, tokens, top_k, signed=signed)
    budget = flatten_budget(packed.k)
    relevance, pairs = result.relevance, result.pairs
    spec = json.loads(
        _linked_skeleton(
            layers,
            heads,
            tokens,
            keys_as_rows,
            has_spans,
            budget,
            relevance is not None,
            pairs is not None,
            result.patching is not None,
            heat,
            signed and heat,
        )
    )
    top = top_head(grid)
    _set_param(spec, PICK, [{"layer": top[0] + 1, "head": top[1] + 1}])
    # a long input's page has its tokens in its own data (`pack_overview`): only the layer
    # chart below the grid reads them from the spec then
    shown = heat or relevance is not None
    _set_param(spec, TOKENS, list(result.tokens) if shown else [])
    datasets: dict[str, Any] = {HEADS_DATA: heads_rows(grid)}
    if heat:
        datasets[CELLS_DATA] = packed.rows
    if has_spans and heat:
        points, labels = bracket_rows(result.spans, tokens)
        datasets[BRACKETS_DATA], datasets[BRACKET_LABELS_DATA] = points, labels
    if relevance is not None:
        datasets[RELEVANCE_DATA] = relevance_rows(relevance)
    if pairs is not None:
        datasets[PAIR_FLOW_DATA] = pair_flow_rows(pairs, metric)
    if result.patching is not None:
        datasets[PATCHING_DATA] = patching_rows(result.patching)
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
    The head's stored cells are drawn (every cell of a run stored with --store dense, up to
    40,000), or its strongest `top_k`."""
    metric = metric_name(result, metric)
    grid = np.asarray(result.head_scores(metric))
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
    heat = _heat_view(
        tokens,
        keys_as_rows,
        None,
        has_spans,
        None,
        row_axis="right",
        legend_title=FIGURE_LEGEND_TITLE,
    )
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
    packed = pack_cells(one_head(result, layer, h, k), tokens, k)
    row = dict(packed.rows[0], layer=layer + 1, head=h + 1)
    datasets: dict[str, Any] = {
        HEADS_DATA: heads_rows(grid),
        CELLS_DATA: [row],
        "zoom_grid": lines_grid,
        CONNECTOR_DATA: lines_connector,
    }
    if has_spans:
        points, labels = bracket_rows(result.spans, tokens, row_axis="right")
        datasets[BRACKETS_DATA], datasets[BRACKET_LABELS_DATA] = points, labels
    spec["datasets"] = datasets
    return spec
