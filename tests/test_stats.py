"""The statistics on fixed numbers, against direct numpy computations and scipy.stats."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from reportgen.data.stats import (
    benjamini_hochberg,
    bootstrap_mean,
    head_tests,
    layer_tests,
    paired_test,
    permutation_test,
    sign_test,
)

pytestmark = pytest.mark.unit

D = np.array([-0.8, -0.3, -1.2, 0.1, -0.5, -0.9, -0.05, -0.4, 0.2, -0.7, -1.1, -0.6])


def test_bootstrap_equals_resampling_indices_by_hand():
    x = np.arange(30, dtype=np.float64).reshape(10, 3) ** 1.5
    found = bootstrap_mean(x, seed=7, samples=500, level=0.9)
    counts = np.random.default_rng(7).multinomial(10, np.full(10, 0.1), size=500)
    means = np.stack([x[np.repeat(np.arange(10), c)].mean(0) for c in counts])
    np.testing.assert_allclose(found.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(found.low, np.quantile(means, 0.05, axis=0), rtol=1e-12)
    np.testing.assert_allclose(found.high, np.quantile(means, 0.95, axis=0), rtol=1e-12)
    assert np.all(found.low <= found.mean) and np.all(found.mean <= found.high)
    again = bootstrap_mean(x, seed=7, samples=500, level=0.9)
    np.testing.assert_array_equal(again.low, found.low)


def test_bootstrap_agrees_with_scipy_on_many_samples():
    """A different generator, so only close: both estimate the same percentile interval."""
    x = np.random.default_rng(1).normal(size=40)
    ours = bootstrap_mean(x, seed=3, samples=20000)
    theirs = scipy.stats.bootstrap(
        (x,), np.mean, n_resamples=20000, method="percentile", random_state=3
    ).confidence_interval
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert abs(float(ours.low) - theirs.low) < 0.05 * se
    assert abs(float(ours.high) - theirs.high) < 0.05 * se


@pytest.mark.parametrize(("below", "above"), [(12, 0), (10, 2), (6, 6), (3, 9), (0, 0), (1, 0)])
def test_sign_test_equals_scipy_binomtest(below, above):
    n = below + above
    expected = 1.0 if n == 0 else scipy.stats.binomtest(below, n, 0.5).pvalue
    assert sign_test(below, above) == pytest.approx(expected, rel=1e-12)


def test_exact_permutation_test_equals_enumeration_and_scipy():
    d = D[:10]
    flips = np.array(list(itertools.product((-1, 1), repeat=10)))
    expected = np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12)
    p, exact = permutation_test(d, seed=0)
    assert exact and p == pytest.approx(expected, rel=1e-12)
    theirs = scipy.stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=np.inf
    ).pvalue
    assert p == pytest.approx(theirs, rel=1e-9)


def test_monte_carlo_permutation_test_is_seeded_and_close_to_exact():
    d = np.concatenate([D, D[:5] * -0.5])  # 17 inputs: past the exact limit
    p, exact = permutation_test(d, seed=5, permutations=20000)
    assert not exact and permutation_test(d, seed=5, permutations=20000)[0] == p
    flips = np.array(list(itertools.product((-1, 1), repeat=17)), dtype=np.float64)
    theirs = float(np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12))
    assert p == pytest.approx(theirs, abs=3 * math.sqrt(theirs * (1 - theirs) / 20000) + 1e-4)


def test_paired_test_reports_n_effect_size_and_both_p_values():
    a = D + 1.0
    b = np.ones_like(D)
    found = paired_test(a, b, seed=0)
    assert found.n == 12 and (found.below, found.above) == (10, 2)
    assert found.mean == pytest.approx(D.mean(), rel=1e-12)
    assert found.effect_size == pytest.approx(D.mean() / D.std(ddof=1), rel=1e-12)
    assert found.sign_p == pytest.approx(scipy.stats.binomtest(10, 12).pvalue, rel=1e-12)
    assert found.exact and found.permutation_p < 0.01


def test_benjamini_hochberg_equals_scipy_and_a_hand_example():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5, 0.2])
    # sorted: .005 .01 .03 .04 .2 .5 -> x 6/rank: .03 .03 .06 .06 .24 .5 (already monotone)
    expected = np.array([0.03, 0.06, 0.06, 0.03, 0.5, 0.24])
    np.testing.assert_allclose(benjamini_hochberg(p), expected, rtol=1e-12)
    rng = np.random.default_rng(2)
    many = rng.uniform(size=(4, 5)) ** 3
    np.testing.assert_allclose(
        benjamini_hochberg(many),
        scipy.stats.false_discovery_control(many, axis=None).reshape(4, 5),
        rtol=1e-12,
    )


def test_head_tests_find_the_head_that_is_above_uniform_on_every_input():
    rng = np.random.default_rng(0)
    shares = rng.dirichlet(np.ones(6), size=12).reshape(12, 2, 3)
    shares[:, 1, 2] += 1.0
    shares /= shares.sum((1, 2), keepdims=True)
    found = head_tests(shares)
    assert found.p[1, 2] == pytest.approx(
        scipy.stats.binomtest(12, 12, alternative="greater").pvalue
    )
    above = (shares - 1 / 6 > 0).sum(0)
    for index in np.ndindex(2, 3):
        expected = scipy.stats.binomtest(int(above[index]), 12, alternative="greater").pvalue
        assert found.p[index] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(
        found.q, scipy.stats.false_discovery_control(found.p, axis=None).reshape(2, 3)
    )
    assert found.q[1, 2] <= 0.05 and found.discoveries >= 1


def test_layer_tests_are_sign_tests_against_no_change_with_bh_over_the_layers():
    """Per layer, scipy's exact two-sided binomial test of the inputs below and above 0 (ties
    dropped), and scipy's Benjamini–Hochberg over the layers."""
    deltas = np.stack(
        [D, -np.abs(D), D * 0 + np.array([0.1, -0.1] * 6), np.where(D > 0, 0.0, D)], axis=1
    )  # [12 inputs, 4 layers]: mixed, all lower, balanced, lower with ties
    found = layer_tests(deltas)
    assert found.n == 12 and found.alpha == 0.05
    np.testing.assert_allclose(found.mean, deltas.mean(0), rtol=1e-12)
    for layer in range(4):
        below, above = int((deltas[:, layer] < 0).sum()), int((deltas[:, layer] > 0).sum())
        assert (found.below[layer], found.above[layer]) == (below, above)
        expected = scipy.stats.binomtest(below, below + above, 0.5).pvalue
        assert found.p[layer] == pytest.approx(expected, rel=1e-12)
    assert (found.below[3], found.above[3]) == (10, 0), "ties count in neither"
    np.testing.assert_allclose(found.q, scipy.stats.false_discovery_control(found.p), rtol=1e-12)
    assert found.q[2] == 1.0 and found.q[1] < 0.05 and found.discoveries == 2
    assert found.p[0] < 0.05 < found.q[0], "significant alone, not after the correction"
    rows = found.rows()
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert rows[1] == (1, float(found.mean[1]), 12, 0, float(found.p[1]), float(found.q[1]))
