"""Charts: records in, Vega specs out, in three steps.

packing   records into the rows the charts draw (top-k cells per head, rounded scores,
          a long input's block sums)
geometry  pixel sizes, label thinning, segment brackets
views     Vega-Lite views and specs, built with Altair (linked page, grid, figure)
vega      the specs compiled to Vega, once per shape
names     the names of views, selections and datasets that page code receives
"""

from reportgen.charts.dataset import TOP_N, dataset_grid_spec, dataset_rows
from reportgen.charts.geometry import bracket_rows, grid_step, heat_side, label_stride
from reportgen.charts.names import (
    BRACKET_LABELS_DATA,
    BRACKETS_DATA,
    BRUSH,
    GRID,
    GRID_CELLS,
    HEAT,
    HEAT_CELLS,
    PICK,
    index_names,
    page_names,
)
from reportgen.charts.packing import (
    FLATTEN_BUDGET,
    Overview,
    Packed,
    flatten_budget,
    heads_rows,
    metric_name,
    pack_cells,
    pack_overview,
    representative_tokens,
    selection_share,
    sig,
    sig_array,
    top_head,
    top_heads,
)
from reportgen.charts.vega import to_vega
from reportgen.charts.views import (
    KEY_TITLE,
    OUTLINE,
    QUERY_TITLE,
    VIRIDIS_LOW,
    LinkedChart,
    figure_spec,
    grid_spec,
    linked_spec,
    pair_flow_table,
    relevance_strongest,
    symmetric_signed_domain,
)
from reportgen.data.results import MAX_DEFAULT_CELLS, default_top_k

__all__ = [
    "BRACKETS_DATA",
    "BRACKET_LABELS_DATA",
    "BRUSH",
    "FLATTEN_BUDGET",
    "GRID",
    "GRID_CELLS",
    "HEAT",
    "HEAT_CELLS",
    "KEY_TITLE",
    "MAX_DEFAULT_CELLS",
    "OUTLINE",
    "PICK",
    "QUERY_TITLE",
    "TOP_N",
    "VIRIDIS_LOW",
    "LinkedChart",
    "Overview",
    "Packed",
    "bracket_rows",
    "dataset_grid_spec",
    "dataset_rows",
    "default_top_k",
    "figure_spec",
    "flatten_budget",
    "grid_spec",
    "grid_step",
    "heads_rows",
    "heat_side",
    "index_names",
    "label_stride",
    "linked_spec",
    "metric_name",
    "pack_cells",
    "pack_overview",
    "page_names",
    "pair_flow_table",
    "relevance_strongest",
    "representative_tokens",
    "selection_share",
    "sig",
    "sig_array",
    "symmetric_signed_domain",
    "to_vega",
    "top_head",
    "top_heads",
]
