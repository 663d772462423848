"""Comparison views: head scores of several models (checkpoints) side by side, as one linked
Vega-Lite spec. Pure functions: score arrays in, numbers and spec dicts out.

Each model contributes its runs' head scores, [inputs, layers, heads]. `trends` reduces them
to one row per (checkpoint, unit): the mean over inputs and a band of one standard deviation
either side (clipped to [0, 1], the range of a share). A *unit* is a head, or a whole layer
when the models' layer × head shapes differ (`layer_scores`: each layer's share is the sum of
its heads' shares).

Views (names in this module) and their links:
- `trend_heat`: unit × checkpoint heatmap of the mean score, units ordered by the last
  checkpoint's score; a click picks a unit (`pick`, shift adds), a vertical drag brushes a
  run of units (`brush`, on their `unit` labels); both outlined everywhere.
- `trend_lines`: the picked and brushed units' mean over checkpoints, with the spread band.
- `trend_grids`: each checkpoint's layer × head grid (small multiples); a click opens that
  model's own report.
- `trend_diff`: the grid of `to − from` between two checkpoints chosen in two menus (params
  `diff_from`, `diff_to`; last − first when the page opens), computed in the page from the
  rows (a unit missing in either checkpoint is not drawn).
- `trend_value`: the mean target probability (or cosine) per checkpoint.
- `trend_gain`: the mean grounding information gain per checkpoint (nats, with a band of one
  standard deviation over the inputs), when it was computed (`reportgen.data.grounding`).
- `trend_ablation`: per checkpoint, the mean change of the effect measure with that
  checkpoint's own top-k heads ablated, against k random heads (when the runs ablated).
- `trend_tokens`: for one input, a token × token heatmap per checkpoint of the picked and
  brushed heads (each cell: the mean over those heads of the cell's share of the head's own
  saliency on that input), from each head's `TOKEN_CELLS` strongest cells; each panel says
  what share of the heads' saliency its cells carry. Head level only, inputs of at most
  `TOKEN_MAX` tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np

from reportgen.charts.names import BRUSH, PICK, store

TREND_HEAT = "trend_heat"
TREND_LINES = "trend_lines"
TREND_BAND = "trend_band"
TREND_GRIDS = "trend_grids"
TREND_DIFF = "trend_diff"
TREND_VALUE = "trend_value"
TREND_GAIN = "trend_gain"
TREND_GAIN_BAND = "trend_gain_band"
TREND_ABLATION = "trend_ablation"
TREND_TOKENS = "trend_tokens"
TOKENS_PARAM = "compare_tokens"
LABELS_PARAM = "compare_labels"
CELLS_DATA = "cells"
TOKEN_CELLS = 16
"""Cells kept per head and checkpoint for the comparison's token heatmaps (its strongest)."""
TOKEN_MAX = 64
"""Longest input drawn as token heatmaps on the comparison page (each model's own pages draw
any length)."""
DIFF_FROM = "diff_from"
DIFF_TO = "diff_to"
PICKED = "#ff2d55"
"""The outline of picked units (visible on every viridis colour, unlike the grid's yellow)."""
UNITS_DATA = "units"
CHECKPOINTS_DATA = "checkpoints"
SCORE_DIGITS = 6
"""Decimals kept of each score in the page data (the share's float32 has about 7)."""


@dataclass(frozen=True)
class Trends:
    """Per checkpoint c and unit (layer l, head h): mean score over inputs, and the band.

    Arrays are float64 [checkpoints, layers, heads]; NaN where a checkpoint has no such unit
    (a model with fewer layers, at the layer level)."""

    labels: tuple[str, ...]
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    values: tuple[float | None, ...]
    """Mean target probability (or cosine) per checkpoint; None without inputs."""
    layer_level: bool
    gains: tuple[tuple[float, float] | None, ...] = ()
    """Per checkpoint, the information gain's mean and standard deviation over the inputs
    (nats); empty when it was not computed."""
    ablations: tuple[tuple[float, float] | None, ...] = ()
    """Per checkpoint, the mean change of the effect measure with its top-k heads ablated and
    with k random heads (mean over the draws), over the inputs; empty when no run ablated."""


def layer_scores(scores: np.ndarray) -> np.ndarray:
    """Head scores [inputs, layers, heads] as layer scores [inputs, layers, 1]: each layer's
    share is the sum of its heads' shares (float64)."""
    return np.asarray(scores, np.float64).sum(axis=2, keepdims=True)


def trends(
    labels: Sequence[str],
    scores: Sequence[np.ndarray],
    values: Sequence[Sequence[float]],
    layer_level: bool = False,
    gains: Sequence[Sequence[float]] = (),
    ablations: Sequence[Sequence[tuple[float, float]]] = (),
) -> Trends:
    """Mean and spread per checkpoint of each model's scores [inputs, layers, heads]; with
    `layer_level`, of their per-layer sums (models of different shapes). `gains` are each
    model's information gains per input, if computed; `ablations` each model's (Δ top-k,
    Δ random) per input, if it ablated."""
    grids = [layer_scores(s) if layer_level else np.asarray(s, np.float64) for s in scores]
    layers = max(g.shape[1] for g in grids)
    heads = max(g.shape[2] for g in grids)
    shape = (len(grids), layers, heads)
    mean, lo, hi = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for c, g in enumerate(grids):
        _, n_l, n_h = g.shape
        m, sd = g.mean(axis=0), g.std(axis=0)
        mean[c, :n_l, :n_h] = m
        lo[c, :n_l, :n_h] = np.clip(m - sd, 0.0, 1.0)
        hi[c, :n_l, :n_h] = np.clip(m + sd, 0.0, 1.0)
    means = tuple(float(np.mean(v)) if len(v) else None for v in values)
    spread = tuple(
        (float(np.mean(g)), float(np.std(g))) if len(g) else None
        for g in (np.asarray(g, np.float64) for g in gains)
    )
    effects = tuple(
        (float(a[:, 0].mean()), float(a[:, 1].mean())) if len(a) else None
        for a in (np.asarray(a, np.float64).reshape(-1, 2) for a in ablations)
    )
    if all(e is None for e in effects):
        effects = ()
    return Trends(tuple(labels), mean, lo, hi, means, layer_level, spread, effects)


def difference(trend: Trends, first: int, second: int) -> np.ndarray:
    """The mean grid of checkpoint `second` minus that of `first` (NaN where either lacks
    the unit)."""
    return np.asarray(trend.mean[second] - trend.mean[first])


def order(trend: Trends) -> list[tuple[int, int]]:
    """Units (0-based layer, head) by the last checkpoint's mean score, strongest first (ties
    in layer, head order); units the last checkpoint lacks come last."""
    last = trend.mean[-1]
    units = [(ly, h) for ly in range(last.shape[0]) for h in range(last.shape[1])]
    return sorted(units, key=lambda u: (np.isnan(last[u]), -np.nan_to_num(last[u]), u))


def unit_label(layer: int, head: int, layer_level: bool) -> str:
    """`L3 H2` (1-based), or `L3` at the layer level."""
    return f"L{layer + 1}" if layer_level else f"L{layer + 1} H{head + 1}"


def unit_rows(trend: Trends) -> list[dict[str, Any]]:
    """The page's rows: one per (checkpoint, unit) present, ranked by `order`."""
    rank = {u: r for r, u in enumerate(order(trend))}
    rows = []
    for c, label in enumerate(trend.labels):
        for (ly, h), r in sorted(rank.items(), key=lambda item: item[1]):
            m = trend.mean[c, ly, h]
            if np.isnan(m):
                continue
            rows.append(
                {
                    "c": c,
                    "checkpoint": label,
                    "layer": ly + 1,
                    "head": h + 1,
                    "unit": unit_label(ly, h, trend.layer_level),
                    "rank": r,
                    "mean": round(float(m), SCORE_DIGITS),
                    "lo": round(float(trend.lo[c, ly, h]), SCORE_DIGITS),
                    "hi": round(float(trend.hi[c, ly, h]), SCORE_DIGITS),
                }
            )
    return rows


def _checkpoint_axis(labels: Sequence[str], title: str = "checkpoint") -> alt.X:
    return alt.X("checkpoint:O", title=title, sort=list(labels), axis=alt.Axis(labelAngle=-30))


@dataclass(frozen=True)
class TokenView:
    """One input's token heatmaps on the comparison page: its id, tokens, each checkpoint's
    strongest cells (`token_rows`), and the orientation."""

    id: str
    tokens: tuple[str, ...]
    rows: list[dict[str, Any]]
    keys_as_rows: bool = False


def compare_spec(
    trend: Trends,
    value_label: str = "p(target)",
    links: Sequence[str] = (),
    effect_label: str = "log p(target)",
    k: int = 3,
    token_view: TokenView | None = None,
) -> dict[str, Any]:
    """The comparison page's linked spec (see the module); the top unit of the last
    checkpoint is picked when the page opens. `links` (one per checkpoint, relative URLs)
    make a click on a checkpoint's grid open that model's own report; `effect_label` and `k`
    title the ablation chart; `token_view` adds the token heatmaps of one input."""
    labels = list(trend.labels)
    ranked = order(trend)
    names = [unit_label(ly, h, trend.layer_level) for ly, h in ranked]
    units = len(names)
    kind = "Layer" if trend.layer_level else "Head"
    step = max(4, min(16, 480 // max(units, 1)))
    top = ranked[0]
    pick = alt.selection_point(
        name=PICK,
        fields=["layer", "head"],
        on="pointerdown",
        clear="dblclick",
        empty=False,
        value=[{"layer": top[0] + 1, "head": top[1] + 1}],
    )
    brush = alt.selection_interval(
        name=BRUSH,
        encodings=["y"],
        empty=False,
        translate=False,
        zoom=False,
        clear="dblclick",
        mark=alt.BrushConfig(fill=PICKED, fillOpacity=0.08, stroke=PICKED, strokeWidth=1),
    )
    chosen = pick | brush
    picked_stroke = alt.condition(chosen, alt.value(PICKED), alt.value(None))
    data = alt.Data(name=UNITS_DATA)
    share = alt.Scale(scheme="viridis", domainMin=0)
    tips = [
        alt.Tooltip("unit:N", title="head" if not trend.layer_level else "layer"),
        alt.Tooltip("checkpoint:N"),
        alt.Tooltip("mean:Q", title="mean share", format=".2%"),
        alt.Tooltip("lo:Q", title="mean − sd", format=".2%"),
        alt.Tooltip("hi:Q", title="mean + sd", format=".2%"),
    ]
    heat = (
        alt.Chart(data)
        .mark_rect(cursor="pointer", strokeWidth=2)
        .encode(
            x=_checkpoint_axis(labels),
            y=alt.Y("unit:O", title="layer" if trend.layer_level else "head", sort=names),
            color=alt.Color(
                "mean:Q", title="mean share", scale=share, legend=alt.Legend(format=".0%")
            ),
            stroke=picked_stroke,
            tooltip=tips,
        )
        .add_params(pick, brush)
        .properties(
            name=TREND_HEAT,
            height=alt.Step(step),
            width=alt.Step(28),
            title=f"{kind}s by checkpoint (click to pick, drag to brush)",
        )
    )
    picked = alt.Chart(data).transform_filter(chosen)
    x_trend = _checkpoint_axis(labels)
    band = (
        picked.mark_area(opacity=0.18)
        .encode(x=x_trend, y=alt.Y("lo:Q", title="mean share"), y2="hi:Q", color="unit:N")
        .properties(name=TREND_BAND)
    )
    lines = (
        picked.mark_line(point=True)
        .encode(
            x=x_trend,
            y=alt.Y("mean:Q", title="mean share", axis=alt.Axis(format=".0%")),
            color=alt.Color("unit:N", title="selected", sort=names),
            tooltip=tips,
        )
        .properties(name=TREND_LINES)
    )
    trend_chart = alt.layer(band, lines).properties(
        width=320, height=240, title=f"picked {kind.lower()}s: mean ± sd over inputs"
    )
    layers, heads = trend.mean.shape[1], trend.mean.shape[2]
    cell = max(8, min(18, 160 // max(layers, heads)))
    grid_base = alt.Chart(data)
    grid_links: dict[str, Any] = {}
    if links:
        # a JSON array of the links is a Vega expression literal, indexed by the checkpoint
        grid_base = grid_base.transform_calculate(href=f"{json.dumps(list(links))}[datum.c]")
        grid_links["href"] = alt.Href("href:N")
    grids = (
        grid_base.mark_rect(cursor="pointer", strokeWidth=2)
        .encode(
            **grid_links,
            x=alt.X("head:O", title="head" if not trend.layer_level else None),
            y=alt.Y("layer:O", title="layer"),
            color=alt.Color("mean:Q", scale=share, legend=None),
            stroke=picked_stroke,
            tooltip=tips,
        )
        .properties(name=TREND_GRIDS, width=cell * heads, height=cell * layers)
        .facet(
            facet=alt.Facet("checkpoint:O", sort=labels, title=None),
            columns=min(len(labels), max(1, 640 // max(cell * heads + 20, 1))),
        )
        .properties(title=f"{kind.lower()} scores per checkpoint")
    )
    options = list(range(len(labels)))
    first = alt.param(
        name=DIFF_FROM,
        value=0,
        bind=alt.binding_select(options=options, labels=labels, name="difference: from "),
    )
    second = alt.param(
        name=DIFF_TO,
        value=len(labels) - 1,
        bind=alt.binding_select(options=options, labels=labels, name=" to "),
    )
    diff = (
        alt.Chart(data)
        .transform_calculate(
            a=f"datum.c == {DIFF_FROM} ? datum.mean : 0",
            b=f"datum.c == {DIFF_TO} ? datum.mean : 0",
            has_a=f"datum.c == {DIFF_FROM} ? 1 : 0",
            has_b=f"datum.c == {DIFF_TO} ? 1 : 0",
        )
        .transform_aggregate(
            a="sum(a)",
            b="sum(b)",
            has_a="sum(has_a)",
            has_b="sum(has_b)",
            groupby=["layer", "head", "unit"],
        )
        .transform_filter("datum.has_a > 0 && datum.has_b > 0")
        .transform_calculate(diff="datum.b - datum.a")
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head" if not trend.layer_level else None),
            y=alt.Y("layer:O", title="layer"),
            color=alt.Color(
                "diff:Q",
                title="difference",
                scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True),
                legend=alt.Legend(format="+.0%"),
            ),
            tooltip=[
                alt.Tooltip("unit:N", title="head" if not trend.layer_level else "layer"),
                alt.Tooltip("diff:Q", title="difference", format="+.2%"),
            ],
        )
        .add_params(first, second)
        .properties(
            name=TREND_DIFF,
            width=18 * heads,
            height=18 * layers,
            title="difference between two checkpoints (menus below)",
        )
    )
    value = (
        alt.Chart(alt.Data(name=CHECKPOINTS_DATA))
        .mark_line(point=True)
        .encode(
            x=_checkpoint_axis(labels),
            y=alt.Y("value:Q", title=f"mean {value_label}"),
            tooltip=[alt.Tooltip("checkpoint:N"), alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(name=TREND_VALUE, width=320, height=160, title=f"mean {value_label}")
    )
    right = [trend_chart, value]
    if trend.gains:
        right.append(_gain_chart(labels))
    if trend.ablations:
        right.append(_ablation_chart(labels, effect_label, k))
    below: list[Any] = [grids]
    if token_view is not None:
        title = f"input '{token_view.id}': the picked heads' saliency by token, per checkpoint"
        below.append(
            _token_chart(labels, token_view.tokens, token_view.keys_as_rows, chosen, title)
        )
    below.append(diff)
    chart = alt.vconcat(
        alt.hconcat(heat, alt.vconcat(*right).resolve_scale(color="independent")),
        *below,
    ).resolve_scale(color="independent")
    spec = chart.to_dict()
    spec["datasets"] = {UNITS_DATA: unit_rows(trend), CHECKPOINTS_DATA: checkpoint_rows(trend)}
    if token_view is not None:
        spec["datasets"][CELLS_DATA] = token_view.rows
        spec["params"] = [
            *spec.get("params", []),
            {"name": TOKENS_PARAM, "value": list(token_view.tokens)},
            {"name": LABELS_PARAM, "value": labels},
        ]
    return spec


def checkpoint_rows(trend: Trends) -> list[dict[str, Any]]:
    """The page's per-checkpoint rows: the mean value and, if computed, the information gain
    (mean, and the band of one standard deviation)."""
    rows = []
    for c, label in enumerate(trend.labels):
        row: dict[str, Any] = {"c": c, "checkpoint": label}
        if trend.values[c] is not None:
            row["value"] = trend.values[c]
        gain = trend.gains[c] if trend.gains else None
        if gain is not None:
            m, sd = gain
            row["gain"] = round(m, SCORE_DIGITS)
            row["gain_lo"] = round(m - sd, SCORE_DIGITS)
            row["gain_hi"] = round(m + sd, SCORE_DIGITS)
        effect = trend.ablations[c] if trend.ablations else None
        if effect is not None:
            row["ablate_top"] = round(effect[0], SCORE_DIGITS)
            row["ablate_random"] = round(effect[1], SCORE_DIGITS)
        if len(row) > 2:
            rows.append(row)
    return rows


@dataclass(frozen=True)
class TokenCells:
    """One input's strongest cells in one checkpoint: `top_cells` int [L, H, k] (cells
    i * T + j, -1 past the non-zero ones), `top_values` [L, H, k] and each head's `total`
    [L, H] of |S| over every cell (`reportgen.data.results.HeadStats`)."""

    top_cells: np.ndarray
    top_values: np.ndarray
    total: np.ndarray


def token_rows(
    cells: Sequence[TokenCells], tokens: int, keep: int = TOKEN_CELLS
) -> list[dict[str, Any]]:
    """Rows `{c, l, h, q, k, v}` (layer and head 1-based, q the query and k the key
    position): for each checkpoint c and head, its `keep` strongest cells, v the cell's share
    |S| / total of the head's saliency on the input (heads without saliency have no rows)."""
    rows: list[dict[str, Any]] = []
    for c, got in enumerate(cells):
        layers, heads, _ = got.top_cells.shape
        for ly in range(layers):
            for h in range(heads):
                total = float(got.total[ly, h])
                if total <= 0:
                    continue
                for cell, value in zip(
                    got.top_cells[ly, h, :keep], got.top_values[ly, h, :keep], strict=True
                ):
                    if cell < 0:
                        break
                    q, k = divmod(int(cell), tokens)
                    share = round(abs(float(value)) / total, SCORE_DIGITS)
                    rows.append({"c": c, "l": ly + 1, "h": h + 1, "q": q, "k": k, "v": share})
    return rows


def _token_chart(
    labels: Sequence[str], tokens: Sequence[str], keys_as_rows: bool, chosen: Any, title: str
) -> alt.FacetChart:
    """Per checkpoint, the chosen heads' token heatmap for one input (see the module)."""
    n = len(tokens)
    cell = max(6, min(14, 220 // max(n, 1)))
    rows, cols = ("k", "q") if keys_as_rows else ("q", "k")
    names = {"q": "query", "k": "key"}
    axis: dict[str, Any] = {
        "labelExpr": f"{TOKENS_PARAM}[datum.value]",
        "labelFontSize": 9,
        "labelLimit": 80,
    }
    base = (
        alt.Chart(alt.Data(name=CELLS_DATA))
        .transform_calculate(layer="datum.l", head="datum.h", unit="'L' + datum.l + ' H' + datum.h")
        .transform_filter(chosen)
        .transform_joinaggregate(units="distinct(unit)", groupby=["c"])
    )
    heat = (
        base.transform_aggregate(v="sum(v)", units="max(units)", groupby=["c", "q", "k"])
        .transform_calculate(share="datum.v / datum.units")
        .mark_rect()
        .encode(
            x=alt.X(
                f"{cols}:O",
                title=names[cols],
                scale=alt.Scale(domain=list(range(n))),
                axis=alt.Axis(**axis, labelAngle=-60),
            ),
            y=alt.Y(
                f"{rows}:O",
                title=names[rows],
                scale=alt.Scale(domain=list(range(n))),
                axis=alt.Axis(**axis),
            ),
            color=alt.Color(
                "share:Q",
                title="mean share of each head",
                legend=alt.Legend(format=".0%"),
                scale=alt.Scale(scheme="viridis", domainMin=0),
            ),
            tooltip=[
                alt.Tooltip("q:O", title="query"),
                alt.Tooltip("k:O", title="key"),
                alt.Tooltip("share:Q", title="mean share of each head", format=".2%"),
            ],
        )
        .properties(name=TREND_TOKENS, width=cell * n, height=cell * n)
    )
    carried = (
        base.transform_aggregate(v="sum(v)", units="max(units)", groupby=["c"])
        .transform_calculate(
            text="'cells drawn: ' + format(datum.v / datum.units, '.0%') + ' of it'"
        )
        .mark_text(align="left", baseline="bottom", fontSize=10, dy=-4)
        .encode(x=alt.value(0), y=alt.value(0), text="text:N")
    )
    per_row = max(1, min(len(labels), 900 // (cell * n + 60)))
    return (
        alt.layer(heat, carried)
        .facet(
            facet=alt.Facet(
                "c:O",
                title=None,
                header=alt.Header(labelExpr=f"{LABELS_PARAM}[datum.value]", labelPadding=14),
            ),
            columns=per_row,
        )
        .properties(title=title)
    )


def _ablation_chart(labels: Sequence[str], effect_label: str, k: int) -> alt.Chart:
    """Per checkpoint, the mean change of the effect with its own top-k heads ablated, and
    with k random heads."""
    top, rand = f"own top {k} heads", f"{k} random heads"
    return (
        alt.Chart(alt.Data(name=CHECKPOINTS_DATA))
        .transform_filter("isValid(datum.ablate_top)")
        .transform_fold(["ablate_top", "ablate_random"], as_=["which", "delta"])
        .transform_calculate(heads=f"datum.which == 'ablate_top' ? '{top}' : '{rand}'")
        .mark_line(point=True)
        .encode(
            x=_checkpoint_axis(labels),
            y=alt.Y("delta:Q", title=f"mean Δ {effect_label}"),
            color=alt.Color(
                "heads:N", title="ablated", sort=[top, rand],
                scale=alt.Scale(domain=[top, rand], range=[PICKED, "#8a8a95"]),
            ),
            tooltip=[
                alt.Tooltip("checkpoint:N"),
                alt.Tooltip("heads:N", title="ablated"),
                alt.Tooltip("delta:Q", title=f"mean Δ {effect_label}", format="+.4f"),
            ],
        )
        .properties(
            name=TREND_ABLATION, width=320, height=160,
            title=f"ablation: each checkpoint's own top {k} heads against {k} random",
        )
    )  # fmt: skip


def _gain_chart(labels: Sequence[str]) -> alt.LayerChart | alt.FacetChart:
    """The mean information gain per checkpoint, with its band."""
    base = alt.Chart(alt.Data(name=CHECKPOINTS_DATA)).transform_filter("isValid(datum.gain)")
    x = _checkpoint_axis(labels)
    band = (
        base.mark_area(opacity=0.18)
        .encode(x=x, y=alt.Y("gain_lo:Q", title="information gain (nats)"), y2="gain_hi:Q")
        .properties(name=TREND_GAIN_BAND)
    )
    line = (
        base.mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("gain:Q", title="information gain (nats)"),
            tooltip=[
                alt.Tooltip("checkpoint:N"),
                alt.Tooltip("gain:Q", title="mean gain (nats)", format=".3f"),
                alt.Tooltip("gain_lo:Q", title="mean − sd", format=".3f"),
                alt.Tooltip("gain_hi:Q", title="mean + sd", format=".3f"),
            ],
        )
        .properties(name=TREND_GAIN)
    )
    return alt.layer(band, line).properties(
        width=320, height=160, title="grounding information gain: mean ± sd over inputs"
    )


def compare_names(gain: bool = False, ablation: bool = False) -> dict[str, Any]:
    """The names the comparison page's JavaScript receives (`data.names`); `gain`: the page
    draws the information gain; `ablation`: the ablation effects."""
    return {
        "heat_mark": "",
        "selections": [PICK, BRUSH],
        "stores": [store(PICK), store(BRUSH)],
        "units": UNITS_DATA,
        # the keyboard moves along the heatmap's rows (units by the last checkpoint's score)
        "heads": UNITS_DATA,
        "grid_unit": TREND_HEAT,
        "ranked": True,
        "views": [TREND_HEAT, TREND_LINES, TREND_GRIDS, TREND_DIFF, TREND_VALUE]
        + ([TREND_GAIN] if gain else [])
        + ([TREND_ABLATION] if ablation else []),
    }
