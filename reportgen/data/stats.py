"""Statistics over a run's inputs, with numpy only: bootstrap confidence intervals of dataset
head scores, paired tests of the top-k ablation against random heads (an exact sign test and a
sign-flip permutation test), and the Benjamini–Hochberg false discovery rate over the tests of
every head and of every layer's ablation.

Every random draw is seeded (the run's --seed): the same run gives the same numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
"""Bootstrap resamples of the inputs for a confidence interval."""
PERMUTATIONS = 10000
"""Random sign flips of the permutation test when exact enumeration (2^n) would be more."""
BLOCK = 256
"""Bootstrap resamples drawn at a time."""
EXACT_UP_TO = 16
"""Inputs up to which the permutation test enumerates all 2^n sign flips (exact)."""


@dataclass(frozen=True)
class Interval:
    """A mean over inputs with its percentile bootstrap confidence interval (arrays alike)."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    samples: int
    seed: int


def bootstrap_mean(
    values: np.ndarray,
    seed: int,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
) -> Interval:
    """The mean over axis 0 (the inputs) of `values` [n, ...] and its percentile bootstrap
    interval: the inputs resampled with replacement `samples` times (seeded), each resample's
    mean, and their (1 − level)/2 and (1 + level)/2 quantiles. Drawn as multinomial counts, a
    block of resamples at a time: memory is BLOCK × n plus samples × the rest."""
    x = np.asarray(values, np.float64)
    n = x.shape[0]
    if n == 0:
        raise ValueError("bootstrap of no values")
    flat = x.reshape(n, -1)
    rng = np.random.default_rng(seed)
    means = np.empty((samples, flat.shape[1]))
    for start in range(0, samples, BLOCK):
        size = min(BLOCK, samples - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size)  # [size, n]
        means[start : start + size] = counts @ flat / n
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    shape = x.shape[1:]
    return Interval(
        flat.mean(0).reshape(shape), low.reshape(shape), high.reshape(shape), level, samples, seed
    )


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison over inputs of d_i = a_i − b_i (here: the effect of ablating the
    top-k heads minus that of k random heads; negative means the top heads matter more)."""

    n: int
    """Inputs compared."""
    mean: float
    """Mean difference."""
    effect_size: float
    """Cohen's d_z: mean / standard deviation of the differences (ddof 1); NaN if n < 2."""
    below: int
    """Inputs with d_i < 0."""
    above: int
    """Inputs with d_i > 0 (ties, d_i = 0, count in neither)."""
    sign_p: float
    """Exact two-sided sign test p-value (binomial, p = 1/2, ties dropped)."""
    permutation_p: float
    """Two-sided sign-flip permutation p-value of the mean difference."""
    exact: bool
    """Whether the permutation test enumerated all 2^n sign flips (else seeded random flips,
    p = (hits + 1) / (permutations + 1))."""


def sign_test(below: int, above: int) -> float:
    """Exact two-sided sign test: P(a split at least as uneven as below:above | p = 1/2)."""
    m = below + above
    if m == 0:
        return 1.0
    k = min(below, above)
    tail = _upper_tail(m, m - k) / 2**m  # C(m, i) summed over i ≤ k equals over i ≥ m − k
    return min(1.0, 2 * tail)


def _upper_tail(m: int, k: int) -> int:
    """Σ C(m, i) over i = k..m, exactly, in O(m) integer steps (each binomial coefficient
    from the one before: a sum of `math.comb` calls is quadratic, hours at m = 10,000)."""
    if k > m:
        return 0
    term = math.comb(m, k)
    total = term
    for i in range(k, m):
        term = term * (m - i) // (i + 1)
        total += term
    return total


def permutation_test(
    d: np.ndarray, seed: int, permutations: int = PERMUTATIONS
) -> tuple[float, bool]:
    """Two-sided p-value of mean(d) under random sign flips of each d_i (pairs exchangeable
    under the null): exact over all 2^n flips for n up to EXACT_UP_TO, else seeded Monte Carlo."""
    d = np.asarray(d, np.float64)
    n = len(d)
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max(initial=0.0)))
    if n <= EXACT_UP_TO:
        codes = np.arange(2**n)[:, None] >> np.arange(n)[None, :] & 1
        flips = 1 - 2 * codes  # every sign pattern, [2^n, n]
        means = np.abs(flips @ d / n)
        return float(np.mean(means >= observed - tolerance)), True
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, 1000):
        size = min(1000, permutations - start)
        flips = rng.choice((-1.0, 1.0), size=(size, n))
        hits += int(np.sum(np.abs(flips @ d / n) >= observed - tolerance))
    return (hits + 1) / (permutations + 1), False


def paired_test(a: Sequence[float], b: Sequence[float], seed: int) -> PairedTest:
    """Sign test and permutation test of a_i − b_i over inputs, with Cohen's d_z."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("a paired test of no inputs")
    below, above = int(np.sum(d < 0)), int(np.sum(d > 0))
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    effect = float(d.mean() / sd) if n > 1 and sd > 0 else math.nan
    p, exact = permutation_test(d, seed)
    return PairedTest(n, float(d.mean()), effect, below, above, sign_test(below, above), p, exact)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values), same shape as `p`: the smallest false
    discovery rate at which each hypothesis is rejected."""
    flat = np.asarray(p, np.float64).reshape(-1)
    m = len(flat)
    if m == 0:
        return np.asarray(p, np.float64)
    order = np.argsort(flat, kind="stable")
    ranked = flat[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.reshape(np.shape(p))


@dataclass(frozen=True)
class HeadTests:
    """Per head, a sign test over inputs of share > uniform share (1 / heads), BH-corrected."""

    p: np.ndarray
    """[layers, heads] one-sided exact sign-test p-values."""
    q: np.ndarray
    """[layers, heads] Benjamini–Hochberg q-values."""
    alpha: float

    @property
    def discoveries(self) -> int:
        """Heads with q ≤ alpha."""
        return int(np.sum(self.q <= self.alpha))


def head_tests(shares: np.ndarray, alpha: float = 0.05) -> HeadTests:
    """Which heads carry more than a uniform share of the metric's saliency: per head, a
    one-sided exact sign test over the inputs of share − 1/(layers·heads) > 0 (ties dropped),
    then Benjamini–Hochberg over all heads. `shares` is [inputs, layers, heads]."""
    x = np.asarray(shares, np.float64)
    uniform = 1.0 / (x.shape[1] * x.shape[2])
    d = x - uniform
    above = np.sum(d > 0, axis=0)
    below = np.sum(d < 0, axis=0)
    p = np.ones(above.shape)
    for index in np.ndindex(above.shape):
        m, k = int(above[index] + below[index]), int(above[index])
        if m:
            p[index] = _upper_tail(m, k) / 2**m
    return HeadTests(p, benjamini_hochberg(p), alpha)


@dataclass(frozen=True)
class LayerTests:
    """Per layer, an intervention on every head of the layer against no change, paired over
    inputs: an exact two-sided sign test of the changes, Benjamini–Hochberg over the layers."""

    n: int
    """Inputs compared."""
    mean: np.ndarray
    """[layers] mean change (intervened minus intact)."""
    below: np.ndarray
    """[layers] inputs whose change is < 0."""
    above: np.ndarray
    """[layers] inputs whose change is > 0 (ties, 0, count in neither)."""
    p: np.ndarray
    """[layers] exact two-sided sign-test p-values."""
    q: np.ndarray
    """[layers] Benjamini–Hochberg q-values over the layers."""
    alpha: float

    @property
    def discoveries(self) -> int:
        """Layers with q ≤ alpha."""
        return int(np.sum(self.q <= self.alpha))

    def rows(self) -> list[tuple[int, float, int, int, float, float]]:
        """(layer 0-based, mean, below, above, p, q) of each layer."""
        return [
            (layer, float(m), int(b), int(a), float(p), float(q))
            for layer, (m, b, a, p, q) in enumerate(
                zip(self.mean, self.below, self.above, self.p, self.q, strict=True)
            )
        ]


def layer_tests(deltas: np.ndarray, alpha: float = 0.05) -> LayerTests:
    """Which layers' intervention changes the effect measure: per layer, the exact two-sided
    sign test over the inputs of its change against 0 (ties dropped), then Benjamini–Hochberg
    over the layers (one family per intervention). `deltas` is [inputs, layers]."""
    d = np.asarray(deltas, np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError("layer tests need [inputs, layers] changes of at least one input")
    below, above = np.sum(d < 0, axis=0), np.sum(d > 0, axis=0)
    p = np.array([sign_test(int(b), int(a)) for b, a in zip(below, above, strict=True)])
    return LayerTests(d.shape[0], d.mean(0), below, above, p, benjamini_hochberg(p), alpha)
