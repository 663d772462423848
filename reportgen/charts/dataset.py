"""The index page's dataset grid: each head's mean share over the inputs, with its spread.

One layer × head grid whose colour a radio button switches between three views of the same
heads: the mean share (with its bootstrap interval and standard deviation in the tooltip), the
lower bound of that interval (a head that is strong on a few inputs only drops there), and the
share of inputs that have the head among their three strongest. A click picks a head (the
page lists the inputs where it is strongest and ranks the table by it)."""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np

from reportgen.charts.names import GRID_CELLS, GRID_COLOUR, HEADS_DATA, PICK
from reportgen.charts.packing import sig
from reportgen.charts.views import _grid_view, _param_dict, _top_level, _view_dict

TOP_N = 3
"""A head counts as one of an input's strongest when it is among its TOP_N highest shares."""
COLOURS = {
    "score": "mean share",
    "low": "its 95% lower bound",
    "top": f"share of inputs with it in their top {TOP_N}",
}
"""The grid's colour views: field → what the radio button says."""


def dataset_grid_spec(
    mean: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    sd: np.ndarray,
    top: np.ndarray,
) -> dict[str, Any]:
    """The dataset grid (arrays [layers, heads]): `mean` share, its bootstrap interval
    `low`–`high`, its standard deviation `sd` over the inputs, and `top`, the share of inputs
    with the head among their TOP_N strongest. A `pick` point selection; the colour view is the
    param GRID_COLOUR (`score`, `low` or `top`), bound to radio buttons."""
    layers, heads = np.asarray(mean).shape
    pick = alt.selection_point(
        name=PICK, fields=["layer", "head"], on="click", clear="dblclick", empty=False
    )
    colour = alt.param(
        name=GRID_COLOUR,
        value="score",
        bind=alt.binding_radio(
            options=list(COLOURS), labels=list(COLOURS.values()), name="colour: "
        ),
    )
    tooltip = [
        alt.Tooltip("layer:O", title="layer"),
        alt.Tooltip("head:O", title="head"),
        alt.Tooltip("score:Q", title="mean share", format=".2%"),
        alt.Tooltip("low:Q", title="95% interval from", format=".2%"),
        alt.Tooltip("high:Q", title="95% interval to", format=".2%"),
        alt.Tooltip("sd:Q", title="standard deviation", format=".2%"),
        alt.Tooltip("top:Q", title=f"inputs with it in their top {TOP_N}", format=".1%"),
    ]
    chart = _grid_view(
        layers,
        heads,
        pick,
        legend=True,
        colour="shown",
        tooltip=tooltip,
        calculate={
            "shown": f"{GRID_COLOUR} === 'top' ? datum.top : "
            f"{GRID_COLOUR} === 'low' ? datum.low : datum.score"
        },
    )
    params = [{**_param_dict(pick), "views": [GRID_CELLS]}, _param_dict(colour)]
    spec = _top_level(_view_dict(chart), params)
    spec["datasets"] = {HEADS_DATA: dataset_rows(mean, low, high, sd, top)}
    return spec


def dataset_rows(
    mean: np.ndarray, low: np.ndarray, high: np.ndarray, sd: np.ndarray, top: np.ndarray
) -> list[dict[str, Any]]:
    """The grid's rows {layer, head, score, low, high, sd, top}, 1-based layer and head."""
    layers, heads = np.asarray(mean).shape
    return [
        {
            "layer": layer + 1,
            "head": head + 1,
            "score": sig(mean[layer, head]),
            "low": sig(low[layer, head]),
            "high": sig(high[layer, head]),
            "sd": sig(sd[layer, head]),
            "top": sig(top[layer, head]),
        }
        for layer in range(layers)
        for head in range(heads)
    ]
