"""Head metrics: how much of an example's saliency each head carries, as shares of all heads.

- `total`: every cell;
- `prediction`: the row of the prediction position;
- `flow:SRC->DST`: keys in segment SRC, queries in segment DST.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from reportgen.data.examples import Example
from reportgen.data.methods import METHODS
from reportgen.data.results import HeadStats
from reportgen.errors import SaliencyError, SettingsError


@dataclass(frozen=True)
class Metric:
    """A way to score heads: total, prediction, or flow from keys in SRC to queries in DST."""

    name: str
    src: str | None = None
    dst: str | None = None

    @property
    def kind(self) -> str:
        return "flow" if self.src is not None else self.name

    def __str__(self) -> str:
        return self.name


def parse_metric(name: str | Metric) -> Metric:
    """`total`, `prediction` or `flow:SRC->DST`; anything else is an error listing these."""
    if isinstance(name, Metric):
        return name
    if name in ("total", "prediction"):
        return Metric(name)
    if name.startswith("flow:") and "->" in name:
        src, _, dst = name[len("flow:") :].partition("->")
        if src.strip() and dst.strip():
            return Metric(f"flow:{src.strip()}->{dst.strip()}", src.strip(), dst.strip())
    raise SettingsError(
        f"unknown metric '{name}'. Available: total, prediction, flow:SRC->DST (e.g. flow:ENV->LAN)"
    )


def shares(stats: HeadStats, metric: Metric, example_id: str = "") -> np.ndarray:
    """Each head's share of the metric's saliency mass, from an example's exact reductions:
    float32 [layers, heads], summing to 1."""
    if metric.kind == "total":
        mass = stats.total
    elif metric.kind == "prediction":
        mass = stats.prediction
    else:
        index = {name: i for i, name in enumerate(stats.segments)}
        for name in (metric.src, metric.dst):
            if name not in index:
                raise SaliencyError(
                    f"input '{example_id}' has no segment '{name}' (its segments: "
                    f"{', '.join(stats.segments) or 'none'}), which metric {metric.name} needs"
                )
        mass = stats.flow[:, :, index[metric.dst or ""], index[metric.src or ""]]
    total = float(np.sum(mass, dtype=np.float64))
    if not np.isfinite(total):
        raise SaliencyError(
            f"input '{example_id}': the saliency under metric {metric.name} is NaN or infinite"
        )
    if not total > 0:
        raise SaliencyError(
            f"input '{example_id}': metric {metric.name} carries no saliency in any head (for a "
            "causal model, keys must come before queries); choose another metric"
        )
    return (np.asarray(mass, np.float64) / total).astype(np.float32)


def check_metric(metric: Metric, examples: Iterable[Example]) -> None:
    """Fail before any work if a flow metric names a segment an input lacks."""
    if metric.kind != "flow":
        return
    for ex in examples:
        names = [s.name for s in ex.segments if s.name]
        for needed in (metric.src, metric.dst):
            if needed not in names:
                raise SaliencyError(
                    f"{ex.source}: input '{ex.id}' has no segment '{needed}' (its segments: "
                    f"{', '.join(names) or 'none'}), which metric {metric.name} needs"
                )


def check_discriminates(method: str, metric: Metric, option: str = "--metric") -> None:
    """Refuse a metric that gives every head the same score under `method`: where the per-head
    scores are attention weights (`attention`, and `rollout` per head), each row sums to 1, so
    each head's `total` is T (one per query row) and its `prediction` row is 1, and every head
    would score exactly 1/(layers × heads): a flat grid, an arbitrary ranking. A flow between
    two segments still tells heads apart."""
    known = METHODS.get(method)
    if known is not None and known.attention_rows and metric.kind in ("total", "prediction"):
        raise SettingsError(
            f"{option} {metric.name} cannot tell heads apart with --method {method}: its "
            "per-head scores are attention weights, every row of which sums to 1, so every "
            "head would score 1/(layers × heads); use --metric flow:SRC->DST (e.g. "
            "flow:ENV->LAN, segments of the inputs), or --method attn-grad"
        )
