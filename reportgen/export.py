"""A run's numbers as tables, for analysis elsewhere: CSV, JSON or Parquet files in a folder.

Torch-free: it reads the run folder only. Eight tables, layers and heads 1-based (as the report
shows them), token positions 0-based (as in the run's `tokens`):

    head_scores          id, layer, head, score (the metric's share), total, prediction
    dataset_head_scores  layer, head, score (the mean share over the inputs: the index's grid)
    top_cells            id, layer, head, rank, query, key, query_token, key_token, value
    ablation             id, intervention, effect, top_heads, value, value_top,
                         value_random, delta_top, delta_random, draws
    layer_relevance      id, layer, position, token, relevance
    layer_flows          id, layer, flow, value, pairs
    layer_ablation       id, layer, intervention, effect, value, delta
    layer_tests          layer, intervention, effect, n, mean_delta, below, above, p, q

`total` and `prediction` are the exact sums of |S| over the head's cells and over the
prediction position's row; `value` in top_cells is S at the cell (signed for attattr).

The layer tables hold what a run records by layer, and are empty (a header, or `[]`) in a run
without it. layer_relevance: rollout and grad-rollout's relevance of each key position for the
prediction after each layer. layer_flows: `--aggregate wang`'s per-layer curves as the page plots
them (the metric's `SRC → DST` first, each segment → target, other pairs): `value` is the mean
over the curve's `pairs` token pairs, a layer without such pairs left out. layer_ablation
(`--ablate-layers`): the effect measure with every head of the layer ablated (`intervention` the
run's: zero, mean or resample) and, with a flow metric, with the flow's edges knocked out in
every head of the layer (`intervention` `knockout:SRC->DST`); `delta` is `value` minus the
intact model's (the ablation table's `value`). layer_tests: each of those per layer over the
inputs, against no change (the about page's table): `n` inputs, `mean_delta`, `below` and
`above` the inputs whose `delta` is < 0 and > 0, `p` the exact two-sided sign test, `q` its
Benjamini–Hochberg q-value over the layers (one family per intervention).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.data.metrics import Metric, parse_metric
from reportgen.data.results import Result, layer_deltas
from reportgen.data.stats import layer_tests
from reportgen.errors import SettingsError
from reportgen.fsutil import staged_update
from reportgen.records import Run

FORMATS = ("csv", "json", "parquet")
COLUMNS: dict[str, dict[str, str]] = {
    "head_scores": {
        "id": "str", "layer": "int", "head": "int", "score": "float", "total": "float",
        "prediction": "float",
    },
    "dataset_head_scores": {"layer": "int", "head": "int", "score": "float"},
    "top_cells": {
        "id": "str", "layer": "int", "head": "int", "rank": "int", "query": "int", "key": "int",
        "query_token": "str", "key_token": "str", "value": "float",
    },
    "ablation": {
        "id": "str", "intervention": "str", "effect": "str", "top_heads": "str",
        "value": "float", "value_top": "float", "value_random": "float", "delta_top": "float",
        "delta_random": "float", "draws": "int",
    },
    "layer_relevance": {
        "id": "str", "layer": "int", "position": "int", "token": "str", "relevance": "float",
    },
    "layer_flows": {"id": "str", "layer": "int", "flow": "str", "value": "float", "pairs": "int"},
    "layer_ablation": {
        "id": "str", "layer": "int", "intervention": "str", "effect": "str", "value": "float",
        "delta": "float",
    },
    "layer_tests": {
        "layer": "int", "intervention": "str", "effect": "str", "n": "int", "mean_delta": "float",
        "below": "int", "above": "int", "p": "float", "q": "float",
    },
}  # fmt: skip
"""Each table's columns and their types, in order (what every format writes)."""

Tables = dict[str, list[dict[str, Any]]]


def tables(run: Run, metric: str | Metric | None = None) -> Tables:
    """The tables of `run` under `metric` (None: the run's own), as lists of rows."""
    parsed = parse_metric(metric if metric is not None else run.info.metric)
    out: Tables = {name: [] for name in COLUMNS}
    scores = np.zeros((run.info.num_layers, run.info.num_heads), np.float64)
    for result in run.results():
        ident = result.example.id
        shares = result.head_scores(parsed)
        scores += shares
        stats = result.stats
        t = len(result.tokens)
        for (layer, head), share in np.ndenumerate(shares):
            out["head_scores"].append(
                {
                    "id": ident,
                    "layer": layer + 1,
                    "head": head + 1,
                    "score": float(share),
                    "total": float(stats.total[layer, head]),
                    "prediction": float(stats.prediction[layer, head]),
                }
            )
            for rank, (cell, value) in enumerate(
                zip(stats.top_cells[layer, head], stats.top_values[layer, head], strict=True)
            ):
                if cell < 0:
                    break  # past the head's non-zero cells
                query, key = divmod(int(cell), t)
                out["top_cells"].append(
                    {
                        "id": ident,
                        "layer": layer + 1,
                        "head": head + 1,
                        "rank": rank + 1,
                        "query": query,
                        "key": key,
                        "query_token": result.tokens[query],
                        "key_token": result.tokens[key],
                        "value": float(value),
                    }
                )
        ab = result.ablation
        if ab is not None:
            out["ablation"].append(
                {
                    "id": ident,
                    "intervention": ab.intervention,
                    "effect": ab.effect,
                    "top_heads": " ".join(f"{la + 1}.{h + 1}" for la, h in ab.heads),
                    "value": ab.value,
                    "value_top": ab.value_top,
                    "value_random": ab.value_random,
                    "delta_top": ab.delta_top,
                    "delta_random": ab.delta_random,
                    "draws": ab.draws,
                }
            )
        out["layer_relevance"] += _relevance_rows(result)
        out["layer_flows"] += _flow_rows(result, parsed)
        out["layer_ablation"] += _layer_ablation_rows(result)
    mean = scores / max(len(run), 1)
    out["dataset_head_scores"] = [
        {"layer": layer + 1, "head": head + 1, "score": float(value)}
        for (layer, head), value in np.ndenumerate(mean)
    ]
    out["layer_tests"] = _layer_test_rows(run)
    return out


def _relevance_rows(result: Result) -> list[dict[str, Any]]:
    if result.relevance is None:
        return []
    return [
        {
            "id": result.example.id,
            "layer": layer + 1,
            "position": position,
            "token": result.tokens[position],
            "relevance": float(value),
        }
        for (layer, position), value in np.ndenumerate(result.relevance)
    ]


def _flow_rows(result: Result, metric: Metric) -> list[dict[str, Any]]:
    flow = result.pairs
    if flow is None:
        return []
    src, dst = (metric.src, metric.dst) if metric.kind == "flow" else (None, None)
    rows = []
    for label, cells in flow.curve_cells(src, dst):
        curve = flow.mean(cells)
        counts = sum((flow.pairs[:, q, k] for q, k in cells), np.zeros(len(curve)))
        for layer, value in enumerate(curve):
            if np.isfinite(value):
                rows.append(
                    {
                        "id": result.example.id,
                        "layer": layer + 1,
                        "flow": label,
                        "value": float(value),
                        "pairs": int(counts[layer]),
                    }
                )
    return rows


def _layer_ablation_rows(result: Result) -> list[dict[str, Any]]:
    ab = result.ablation
    if ab is None:
        return []
    runs = [(ab.intervention, ab.layers)]
    if ab.knockout is not None:
        runs.append((f"knockout:{ab.knockout.src}->{ab.knockout.dst}", ab.knockout.layers))
    return [
        {
            "id": result.example.id,
            "layer": layer + 1,
            "intervention": intervention,
            "effect": ab.effect,
            "value": value,
            "delta": value - ab.value,
        }
        for intervention, values in runs
        for layer, value in enumerate(values)
    ]


def _layer_test_rows(run: Run) -> list[dict[str, Any]]:
    ablations = [e.ablation for e in run.entries if e.ablation is not None]
    rows = []
    for intervention, deltas in layer_deltas(ablations):
        found = layer_tests(deltas)
        for layer, mean, below, above, p, q in found.rows():
            rows.append(
                {
                    "layer": layer + 1,
                    "intervention": intervention,
                    "effect": ablations[0].effect,
                    "n": found.n,
                    "mean_delta": mean,
                    "below": below,
                    "above": above,
                    "p": p,
                    "q": q,
                }
            )
    return rows


def export(
    run: str | Path | Run,
    out: str | Path,
    format: str = "csv",
    metric: str | Metric | None = None,
    force: bool = False,
) -> list[Path]:
    """Write the tables of `run` into the folder `out`, one file per table
    (`head_scores.csv`, ...); returns the files. The folder is updated as a site is (files
    reportgen did not write are kept; see `reportgen.fsutil`)."""
    if format not in FORMATS:
        raise SettingsError(f"unknown --format '{format}' (use {', '.join(FORMATS)})")
    writer = _parquet_writer() if format == "parquet" else _WRITERS[format]
    opened = run if isinstance(run, Run) else Run.open(run)
    found = tables(opened, metric)
    with staged_update(out, "export", force) as stage:
        for name, rows in found.items():
            writer(stage / f"{name}.{format}", name, rows)
    return [Path(out) / f"{name}.{format}" for name in found]


def _write_csv(path: Path, name: str, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS[name]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


def _write_json(path: Path, name: str, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(rows, ensure_ascii=False, allow_nan=False) + "\n", "utf-8")


_WRITERS: dict[str, Callable[[Path, str, list[dict[str, Any]]], None]] = {
    "csv": _write_csv,
    "json": _write_json,
}


def _parquet_writer() -> Callable[[Path, str, list[dict[str, Any]]], None]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SettingsError(
            "--format parquet needs pyarrow, which is not installed: pip install "
            "'reportgen[parquet]' (or pip install pyarrow), or use --format csv or json"
        ) from None
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}

    def write(path: Path, name: str, rows: list[dict[str, Any]]) -> None:
        columns = COLUMNS[name]
        schema = pa.schema([(column, types[kind]) for column, kind in columns.items()])
        data = {column: [row[column] for row in rows] for column in columns}
        pq.write_table(pa.table(data, schema=schema), path)

    return write
