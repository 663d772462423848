"""Head metrics from an example's HeadStats: shares of total, prediction and flow mass, checked
against sums of a dense S by hand, and the errors of a metric without saliency."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from synthetic import make_result, make_scores, stats_from_dense

from reportgen.data.metrics import parse_metric, shares
from reportgen.data.results import HeadStats, TokenSpan
from reportgen.errors import SaliencyError

pytestmark = pytest.mark.unit


def test_shares_are_the_dense_sums_by_hand_for_every_metric() -> None:
    """Queries are rows: flow:ENV->LAN is keys in ENV, queries in LAN; prediction is the
    prediction position's row; each grid is that mass over all heads' mass."""
    result = make_result()
    mag = np.abs(make_scores().astype(np.float64))
    env, lan = result.spans
    p = result.prediction_position
    by_hand = {
        "total": mag.sum((2, 3)),
        "prediction": mag[:, :, p, :].sum(-1),
        "flow:ENV->LAN": mag[:, :, lan.start : lan.end, env.start : env.end].sum((2, 3)),
        "flow:LAN->ENV": mag[:, :, env.start : env.end, lan.start : lan.end].sum((2, 3)),
    }
    assert not by_hand["flow:LAN->ENV"].any(), "causal: no query in ENV sees a LAN key"
    for name, mass in by_hand.items():
        if not mass.any():
            with pytest.raises(SaliencyError, match="carries no saliency"):
                result.head_scores(name)
            continue
        grid = shares(result.stats, parse_metric(name), "syn")
        assert grid.dtype == np.float32 and grid.shape == mass.shape
        np.testing.assert_allclose(grid, mass / mass.sum(), rtol=1e-6)
        assert grid.sum() == pytest.approx(1.0, rel=1e-6) and (grid >= 0).all()
        np.testing.assert_array_equal(result.head_scores(name), grid)


def test_flow_groups_tokens_outside_every_segment_last() -> None:
    """Tokens in no named segment (here positions 0 and 5) form the last flow group, so the
    flow blocks add up to the total."""
    scores = make_scores(tokens=8, seed=3)
    spans = (TokenSpan("A", 1, 3), TokenSpan("B", 3, 5))
    stats = stats_from_dense(scores, spans, 7, 4)
    mag = np.abs(scores.astype(np.float64))
    outside = [0, 5, 6, 7]
    np.testing.assert_allclose(
        stats.flow[:, :, 2, 2], mag[:, :, outside][:, :, :, outside].sum((2, 3)), rtol=1e-12
    )
    np.testing.assert_allclose(stats.flow[:, :, 1, 0], mag[:, :, 3:5, 1:3].sum((2, 3)))
    np.testing.assert_allclose(stats.flow.sum((2, 3)), stats.total, rtol=1e-12)
    grid = shares(stats, parse_metric("flow:A->B"), "x")
    mass = mag[:, :, 3:5, 1:3].sum((2, 3))
    np.testing.assert_allclose(grid, mass / mass.sum(), rtol=1e-6)


def _zero_stats(layers: int = 2, heads: int = 2) -> HeadStats:
    return HeadStats(
        segments=("ENV", "LAN"),
        total=np.zeros((layers, heads)),
        prediction=np.zeros((layers, heads)),
        flow=np.zeros((layers, heads, 3, 3)),
        top_cells=np.full((layers, heads, 4), -1, np.int32),
        top_values=np.zeros((layers, heads, 4), np.float32),
    )


@pytest.mark.parametrize("metric", ["total", "prediction", "flow:ENV->LAN"])
def test_shares_reject_a_metric_without_mass(metric: str) -> None:
    with pytest.raises(SaliencyError, match=f"input 'x': metric {metric} carries no saliency"):
        shares(_zero_stats(), parse_metric(metric), "x")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_shares_reject_nan_or_infinite_saliency(bad: float) -> None:
    stats = _zero_stats()
    total = np.ones((2, 2))
    total[1, 0] = bad
    with pytest.raises(SaliencyError, match="input 'x': the saliency under metric total is NaN"):
        shares(replace(stats, total=total), parse_metric("total"), "x")
    flow = np.ones((2, 2, 3, 3))
    flow[0, 1, 1, 0] = bad
    with pytest.raises(SaliencyError, match="NaN or infinite"):
        shares(replace(stats, flow=flow), parse_metric("flow:ENV->LAN"), "x")
    # mass elsewhere does not matter: the metric reads its own block only
    grid = shares(replace(stats, flow=flow), parse_metric("flow:LAN->ENV"), "x")
    np.testing.assert_allclose(grid, np.full((2, 2), 0.25))


def test_a_metric_naming_a_missing_segment_names_the_input() -> None:
    with pytest.raises(
        SaliencyError, match=r"input 'x' has no segment 'XYZ' \(its segments: ENV, LAN\)"
    ):
        shares(_zero_stats(), parse_metric("flow:XYZ->LAN"), "x")
