"""Property tests (hypothesis) for the pure score math: ToD allocation and Wasserstein-1 distances.

Every property is checked against the public functions of ``lightning_fair.allocation.budgets`` and
``lightning_fair.scoring.distances`` on generated inputs that include ties, constant and all-zero
vectors and sizes 1..40. Example counts are kept modest so the file runs in a few seconds.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import wasserstein_distance

from lightning_fair.allocation.budgets import global_counts, global_thresholds
from lightning_fair.allocation.tolerance import (
    count_from_curve,
    tod_curve,
    tolerance_count,
)
from lightning_fair.scoring.criterion import layer_standardised
from lightning_fair.scoring.distances import (
    max_pairwise_w1,
    pairwise_w1,
    quantile_grid,
    wasserstein_1d,
)
from lightning_fair.scoring.fair import FairScores

FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=25, deadline=None)


# ------------------------------------------------------------------ strategies
def _finite(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


#: One score: a general float, or one of a few values (so ties are common).
_score = st.one_of(_finite(0.0, 1e3), st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0]))


def _vector(n: int):
    """A score vector of length ``n``: free, all equal, all zero, or drawn from 2 values (ties)."""
    return st.one_of(
        st.lists(_score, min_size=n, max_size=n),
        _score.map(lambda v: [v] * n),
        st.just([0.0] * n),
        st.lists(st.sampled_from([0.25, 3.0]), min_size=n, max_size=n),
    )


#: Layer sizes: mostly 1..40; floor(0.99 n) == n - 1 up to n = 100, so a few larger layers
#: make the 0.99 cap distinguishable from "keep one unit".
sizes = st.one_of(st.integers(1, 40), st.integers(1, 40), st.sampled_from([100, 101, 150, 201]))
#: (U, R) of one layer.
score_pairs = sizes.flatmap(lambda n: st.tuples(_vector(n), _vector(n)))
tolerances = st.one_of(_finite(0.0, 1.0), st.sampled_from([0.0, 0.05, 0.5, 1.0]))


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _cap(n: int) -> int:
    """floor(0.99 n) in exact integer arithmetic."""
    return (99 * n) // 100


# ------------------------------------------------------------ a literal ToD
def tod_reference(u, r):
    """ToD(m) = |lowest-U m ∩ highest-R m| / m for m = 1..floor(0.99 n), in plain Python.

    Ties are broken by unit index (a stable sort), in both rankings: among equal U the lower
    index counts as "lower", among equal R the lower index counts as "higher".
    """
    n = len(u)
    by_u = sorted(range(n), key=lambda i: u[i])  # stable: ties keep index order
    by_r = sorted(range(n), key=lambda i: r[i], reverse=True)  # reverse=True is stable too
    return [len(set(by_u[:m]) & set(by_r[:m])) / m for m in range(1, _cap(n) + 1)]


def count_reference(curve, tolerance):
    """Largest m with ToD(m) <= tolerance, 0 if none."""
    return max([m for m, value in enumerate(curve, start=1) if value <= tolerance], default=0)


# ------------------------------------------------------------------ allocation
@FAST
@given(score_pairs)
def test_tod_curve_equals_literal_transcription(pair):
    u, r = pair
    curve = tod_curve(_t(u), _t(r))
    assert curve.dtype == torch.float64
    assert curve.tolist() == tod_reference(u, r)


@FAST
@given(score_pairs)
def test_tod_curve_float32_inputs_rank_like_float64(pair):
    u, r = pair
    u32, r32 = torch.tensor(u, dtype=torch.float32), torch.tensor(r, dtype=torch.float32)
    assert tod_curve(u32, r32).tolist() == tod_reference(u32.tolist(), r32.tolist())


@FAST
@given(score_pairs, tolerances)
def test_tolerance_count_is_largest_m_within_tolerance(pair, tolerance):
    u, r = pair
    curve = tod_reference(u, r)
    # count_from_curve accepts ToD values up to 1e-12 above the tolerance (float slack)
    assume(not any(tolerance < value <= tolerance + 1e-12 for value in curve))
    expected = count_reference(curve, tolerance)
    assert tolerance_count(_t(u), _t(r), tolerance) == expected
    assert count_from_curve(tod_curve(_t(u), _t(r)), tolerance) == expected


@FAST
@given(score_pairs)
def test_tolerance_count_at_an_exact_curve_value_includes_it(pair):
    u, r = pair
    curve = tod_reference(u, r)
    for tolerance in set(curve):
        assert tolerance_count(_t(u), _t(r), tolerance) == count_reference(curve, tolerance)


@FAST
@given(score_pairs, tolerances, tolerances)
def test_count_is_monotone_in_tolerance(pair, t1, t2):
    u, r = pair
    lo, hi = sorted((t1, t2))
    assert tolerance_count(_t(u), _t(r), lo) <= tolerance_count(_t(u), _t(r), hi)


@FAST
@given(score_pairs, tolerances)
def test_count_never_removes_every_unit_and_respects_cap(pair, tolerance):
    u, r = pair
    n = len(u)
    count = tolerance_count(_t(u), _t(r), tolerance)
    assert 0 <= count <= n - 1
    assert count <= _cap(n)


@pytest.mark.parametrize("n", [1, 2, 3])
@given(data=st.data())
@SLOW
def test_tiny_layers_never_emptied(n, data):
    u, r = data.draw(_vector(n)), data.draw(_vector(n))
    for tolerance in (0.0, 0.5, 1.0):
        assert tolerance_count(_t(u), _t(r), tolerance) <= n - 1
    assert tod_curve(_t(u), _t(r)).numel() == _cap(n)
    if n == 1:
        assert tolerance_count(_t(u), _t(r), 1.0) == 0


@FAST
@given(score_pairs)
def test_count_at_tolerance_one_is_the_cap(pair):
    u, r = pair
    assert tolerance_count(_t(u), _t(r), 1.0) == _cap(len(u))


@FAST
@given(st.lists(_finite(0.0, 1.0), max_size=40), tolerances, tolerances)
def test_count_from_any_curve_is_monotone(curve, t1, t2):
    lo, hi = sorted((t1, t2))
    c = _t(curve)
    assert count_from_curve(c, lo) <= count_from_curve(c, hi) <= len(curve)
    assert count_from_curve(c, 1.0) == len(curve)


@FAST
@given(score_pairs)
def test_curve_mismatched_lengths_raise(pair):
    u, r = pair
    with pytest.raises(ValueError):
        tod_curve(_t(u), _t(r + [1.0]))


# global allocation
layer_sets = st.lists(sizes.flatmap(_vector), min_size=1, max_size=4)
thresholds = st.one_of(_finite(0.0, 5.0), st.sampled_from([0.0, 0.5, 1.0, 1.5, 1e6]))


def _scores(layers) -> FairScores:
    names = [f"layer{i}" for i in range(len(layers))]
    return FairScores({n: _t(u) for n, u in zip(names, layers)}, {n: torch.ones(len(u)) for n, u in zip(names, layers)})


def _global_bounds(u, threshold):
    """Exact #{U_j / mean U < threshold} at threshold*(1 -+ 1e-9).

    As in the implementation, the mean is floored at 1e-12, so a layer whose mean U
    is 0 (all units dead) counts every unit as below any positive threshold.
    """
    fractions = [Fraction(v) for v in u]
    mean = max(sum(fractions) / len(fractions), Fraction(1e-12))
    normalised = [v / mean for v in fractions]
    lo = Fraction(threshold) * Fraction(1 - 1e-9)
    hi = Fraction(threshold) * Fraction(1 + 1e-9)
    return sum(v < lo for v in normalised), sum(v < hi for v in normalised)


@FAST
@given(layer_sets, thresholds)
def test_global_counts_match_the_rule_and_cap(layers, threshold):
    scores = _scores(layers)
    counts = global_counts(scores, threshold)
    assert list(counts) == scores.layers
    for name, u in zip(scores.layers, layers):
        n = len(u)
        cap = min(_cap(n), n - 1)
        lo, hi = _global_bounds(u, threshold)
        assert min(lo, cap) <= counts[name] <= min(hi, cap)
        assert 0 <= counts[name] <= n - 1 and counts[name] <= _cap(n)


@FAST
@given(layer_sets, thresholds, thresholds)
def test_global_counts_monotone_in_threshold(layers, t1, t2):
    scores = _scores(layers)
    lo, hi = sorted((t1, t2))
    a, b = global_counts(scores, lo), global_counts(scores, hi)
    assert all(a[n] <= b[n] for n in scores.layers)


@FAST
@given(layer_sets)
def test_global_counts_at_huge_threshold_hit_the_cap_and_zero_threshold_removes_nothing(layers):
    scores = _scores(layers)
    assert global_counts(scores, 1e12) == {n: _cap(len(u)) for n, u in zip(scores.layers, layers)}
    assert global_counts(scores, 0.0) == {n: 0 for n in scores.layers}


@FAST
@given(layer_sets, thresholds)
def test_global_counts_layers_subset(layers, threshold):
    scores = _scores(layers)
    subset = scores.layers[::2]
    full = global_counts(scores, threshold)
    assert global_counts(scores, threshold, subset) == {n: full[n] for n in subset}


# ------------------------------------------------------------------- distances
_value = st.one_of(_finite(-100.0, 100.0), st.sampled_from([0.0, 1.0, -1.0, 2.5]))
samples = st.lists(_value, min_size=1, max_size=40)


def _w1(x, y) -> float:
    return float(wasserstein_1d(_t(x), _t(y)))


def _close(a: float, b: float, scale: float = 1.0) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


@FAST
@given(samples, samples)
def test_w1_symmetric_and_nonnegative(x, y):
    d = _w1(x, y)
    assert d >= 0.0
    assert _close(d, _w1(y, x))


@FAST
@given(samples, st.randoms(use_true_random=False))
def test_w1_zero_on_identical_and_permuted_samples(x, rng):
    assert _w1(x, x) == 0.0
    y = list(x)
    rng.shuffle(y)
    assert _w1(x, y) == 0.0


@FAST
@given(samples, samples, st.one_of(_finite(-10.0, 10.0), st.sampled_from([0.0, -1.0, 2.0])))
def test_w1_scale_equivariant(x, y, c):
    scaled = _w1([c * v for v in x], [c * v for v in y])
    assert _close(scaled, abs(c) * _w1(x, y), scale=abs(c) * 100)


@FAST
@given(samples, samples, _finite(-1e3, 1e3))
def test_w1_translation_invariant(x, y, a):
    shifted = _w1([v + a for v in x], [v + a for v in y])
    # each shifted value carries a rounding error of about eps * |a|
    assert math.isclose(shifted, _w1(x, y), abs_tol=1e-12 * (abs(a) + 100) * 4)


@FAST
@given(samples, samples, samples)
def test_w1_triangle_inequality(x, y, z):
    assert _w1(x, z) <= _w1(x, y) + _w1(y, z) + 1e-9


@FAST
@given(samples, samples)
def test_w1_equals_scipy(x, y):
    assert _close(_w1(x, y), wasserstein_distance(x, y), scale=100)


@FAST
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(st.lists(_value, min_size=n, max_size=n), st.lists(_value, min_size=n, max_size=n))
    )
)
def test_w1_equal_sizes_is_mean_abs_sorted_difference_and_scipy(pair):
    x, y = pair
    expected = float(np.mean(np.abs(np.sort(x) - np.sort(y))))
    assert _close(_w1(x, y), expected, scale=100)
    assert _close(_w1(x, y), wasserstein_distance(x, y), scale=100)


@SLOW
@given(st.integers(1, 12), st.integers(1, 3), st.integers(1, 3), st.data())
def test_w1_batched_over_trailing_dims(n, a, b, data):
    m = data.draw(st.integers(1, 12))
    x = _t(data.draw(st.lists(_value, min_size=n * a * b, max_size=n * a * b))).reshape(n, a, b)
    y = _t(data.draw(st.lists(_value, min_size=m * a * b, max_size=m * a * b))).reshape(m, a, b)
    d = wasserstein_1d(x, y)
    assert d.shape == (a, b)
    for i, j in itertools.product(range(a), range(b)):
        assert _close(float(d[i, j]), wasserstein_distance(x[:, i, j].numpy(), y[:, i, j].numpy()), scale=100)


@FAST
@given(st.lists(st.integers(1, 40), min_size=1, max_size=5))
def test_quantile_grid_is_a_refinement(counts):
    indices, widths = quantile_grid(counts)
    assert len(indices) == len(counts)
    assert bool((widths > 0).all())
    assert math.isclose(float(widths.sum()), 1.0, abs_tol=1e-12)
    for c, idx in zip(counts, indices):
        assert idx.shape == widths.shape
        assert int(idx.min()) == 0 and int(idx.max()) == c - 1
        assert bool((idx[1:] >= idx[:-1]).all())
        # each sample of a c-sample distribution holds exactly 1/c of the mass
        mass = torch.zeros(c, dtype=torch.float64).index_add_(0, idx, widths)
        assert torch.allclose(mass, torch.full((c,), 1.0 / c, dtype=torch.float64), atol=1e-12)


def test_quantile_grid_rejects_empty_distribution():
    with pytest.raises(ValueError):
        quantile_grid([3, 0])


#: K classes of n_k samples each (sizes may differ)
class_samples = st.lists(samples, min_size=2, max_size=4)


@FAST
@given(class_samples)
def test_pairwise_w1_on_quantile_grid_equals_scipy(classes):
    indices, widths = quantile_grid([len(c) for c in classes])
    quantiles = torch.stack([_t(sorted(c))[idx] for c, idx in zip(classes, indices)])  # [K, L]
    distances = pairwise_w1(quantiles, widths)
    k = len(classes)
    assert distances.shape == (k, k)
    for i, j in itertools.product(range(k), range(k)):
        assert _close(float(distances[i, j]), wasserstein_distance(classes[i], classes[j]), scale=100)


@SLOW
@given(st.integers(2, 4), st.integers(1, 3), st.integers(1, 3), st.data())
def test_max_pairwise_w1_equals_brute_force(num_classes, channels, dim, data):
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=num_classes, max_size=num_classes))
    tensors = []
    for n in sizes:
        values = data.draw(st.lists(_value, min_size=n * channels * dim, max_size=n * channels * dim))
        tensors.append(_t(values).reshape(n, channels, dim))
    result = max_pairwise_w1(tensors)
    assert result.shape == (channels,)
    for c in range(channels):
        brute = max(
            float(np.mean([wasserstein_distance(a[:, c, d].numpy(), b[:, c, d].numpy()) for d in range(dim)]))
            for a, b in itertools.combinations(tensors, 2)
        )
        assert _close(float(result[c]), brute, scale=100)
    # chunking over units does not change the answer
    assert torch.allclose(max_pairwise_w1(tensors, max_elements=1), result, rtol=0, atol=1e-12)


@FAST
@given(st.integers(1, 10), st.integers(1, 4), st.integers(1, 3))
def test_max_pairwise_w1_single_class_is_zero(n, channels, dim):
    result = max_pairwise_w1([torch.randn(n, channels, dim)])
    assert torch.equal(result, torch.zeros(channels))


# standardised allocation: one threshold on per-layer z-scores
z_thresholds = st.one_of(_finite(-5.0, 5.0), st.sampled_from([-1e6, -1.0, 0.0, 1.0, 1e6]))


def _z_bounds(u, threshold):
    """#{z_j < threshold} at threshold -+ 1e-6, z computed in float64 with numpy; one score, or
    scores that spread by less than 1e-6 of their largest magnitude, are ties at z = 0."""
    x = np.asarray(u, dtype=np.float64)
    spread = x.std(ddof=1) if x.size > 1 else 0.0
    tied = not spread > 1e-6 * np.abs(x).max()
    z = np.zeros_like(x) if tied else (x - x.mean()) / spread
    return int((z < threshold - 1e-6).sum()), int((z < threshold + 1e-6).sum())


@FAST
@given(layer_sets, z_thresholds)
def test_standardised_counts_match_the_rule_and_cap(layers, threshold):
    scores = _scores(layers)
    counts = global_counts(scores, threshold, normalise=layer_standardised)
    for name, u in zip(scores.layers, layers):
        cap = min(_cap(len(u)), len(u) - 1)
        lo, hi = _z_bounds(u, threshold)
        assert min(lo, cap) <= counts[name] <= min(hi, cap)


@FAST
@given(layer_sets, z_thresholds, z_thresholds)
def test_standardised_counts_monotone_and_the_candidates_span_none_to_the_cap(layers, t1, t2):
    scores = _scores(layers)
    lo, hi = sorted((t1, t2))
    a = global_counts(scores, lo, normalise=layer_standardised)
    b = global_counts(scores, hi, normalise=layer_standardised)
    assert all(a[n] <= b[n] for n in scores.layers)
    levels = global_thresholds(scores, normalise=layer_standardised)
    assert levels == sorted(levels)
    assert global_counts(scores, levels[0], normalise=layer_standardised) == {n: 0 for n in scores.layers}
    top = global_counts(scores, levels[-1], normalise=layer_standardised)
    assert top == {n: min(_cap(len(u)), len(u) - 1) for n, u in zip(scores.layers, layers)}
