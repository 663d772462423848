"""The names a page's code needs: views, selections, datasets and the marks and stores Vega
makes of them. Every spec names its views and selections with these (so signal names are
stable), and each page hands them to its JavaScript in its data (`page_names`): nothing is
spelled twice, in Python and in JS."""

from __future__ import annotations

from typing import Any

GRID = "grid"
GRID_CELLS = "grid_cells"
HEAT = "heat"
HEAT_CELLS = "heat_cells"
HEAT_EMPTY = "heat_empty"
PICK = "pick"
GRID_COLOUR = "colour"
"""The index grid's colour view (`score`: mean share, `top`: share of inputs with it in their
top 3), a Vega signal bound to radio buttons."""
BRUSH = "brush"
TOKENS = "tokens"
SIGNED = "signed"
"""The param of a signed method's page: true shows signed values, false magnitudes."""
HEADS_DATA = "heads"
CELLS_DATA = "cells"
BRACKETS_DATA = "brackets"
BRACKET_LABELS_DATA = "bracket_labels"
CONNECTOR_DATA = "connector"
RELEVANCE = "relevance"
RELEVANCE_CELLS = "relevance_cells"
RELEVANCE_OUTLINE = "relevance_outline"
RELEVANCE_DATA = "relevance_rows"
PATCHING = "patching"
PATCHING_CELLS = "patching_cells"
PATCHING_DATA = "patching_rows"
PAIR_FLOW = "pair_flow"
PAIR_FLOW_LINES = "pair_flow_lines"
PAIR_FLOW_DATA = "pair_flow_rows"
NOTHING = "nothing_selected"
"""The linked page's param: true while the grid's selections hold no head."""
SELECTIONS = (PICK, BRUSH)
"""The grid's selections, in the order the page reads them."""
ROOT = "root"
"""Vega's name for the group mark of a whole view: the index's grid is a single view, not a
concat, so this group and Vega's own `width` and `height` signals are its size."""


def marks(view: str) -> str:
    """The Vega mark Vega-Lite compiles a named view into."""
    return f"{view}_marks"


def store(selection: str) -> str:
    """The Vega dataset holding a Vega-Lite selection's tuples."""
    return f"{selection}_store"


def group(view: str) -> str:
    """The Vega group mark Vega-Lite makes of a named view inside a concat."""
    return f"{view}_group"


def size(view: str, dimension: str) -> str:
    """The Vega signal Vega-Lite makes of a named view's `width` or `height` inside a concat."""
    return f"{view}_{dimension}"


def page_names() -> dict[str, Any]:
    """The names, as the page's JavaScript receives them (`data.names`). `layer_marks`: the
    marks of the charts by layer where a click on a layer selects that layer's heads. `fit`:
    the views that shrink to the chart's width on a narrow screen, as (group mark, width
    signal, height signal kept in proportion to the width or None)."""
    return {
        "heat_mark": marks(HEAT_CELLS),
        "selections": list(SELECTIONS),
        "stores": [store(s) for s in SELECTIONS],
        "tokens": TOKENS,
        "signed": SIGNED,
        "nothing": NOTHING,
        "grid_mark": marks(GRID_CELLS),
        "grid_unit": GRID_CELLS,
        "grid_group": group(GRID),
        "heat_group": group(HEAT),
        "root": ROOT,
        "cells": CELLS_DATA,
        "heads": HEADS_DATA,
        "grid_colour": GRID_COLOUR,
        "layer_marks": [marks(RELEVANCE_CELLS), marks(RELEVANCE_OUTLINE)],
        "fit": [
            [group(GRID), size(GRID, "width"), size(GRID, "height")],
            [group(HEAT), size(HEAT, "width"), size(HEAT, "height")],
            [group(RELEVANCE), size(RELEVANCE, "width"), None],
            [group(PAIR_FLOW), size(PAIR_FLOW, "width"), None],
        ],
    }


def index_names() -> dict[str, Any]:
    """The index page's names: `page_names`, but the view that fits a narrow screen is the
    whole chart (the dataset grid on its own), sized by Vega's `width` and `height`."""
    return {**page_names(), "fit": [[ROOT, "width", "height"]]}
