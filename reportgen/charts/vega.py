"""Compiled Vega: pages carry Vega, not Vega-Lite, compiled once per shape."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

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
