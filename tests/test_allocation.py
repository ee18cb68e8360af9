"""Tolerance of Difference allocation (method.md §1.3) and the separable rankings.

The reference rule is transcribed plainly below and compared with the vectorised
implementation; the rest checks the guarantees users rely on (edge cases, monotonicity,
one score collection answering many tolerances, rankings other than utilization).
"""

from __future__ import annotations

import copy
import math

import helpers
import pytest
import torch

import lightning_fair
from lightning_fair import tod_curve, tolerance_count, tolerance_counts
from lightning_fair.allocation.order import removal_order
from lightning_fair.allocation.tolerance import count_from_curve
from lightning_fair.pipeline import oneshot

ALPHAS = (0.0, 0.005, 0.05, 0.2, 0.5, 1.0)


# --------------------------------------------------------------------------- the rule, plainly
def reference_tod(u, r, m):
    """ToD(m) = |lowest-U m units ∩ highest-R m units| / m (method.md §1.3)."""
    n = len(u)
    lowest_u = set(sorted(range(n), key=lambda i: u[i])[:m])
    highest_r = set(sorted(range(n), key=lambda i: r[i], reverse=True)[:m])
    return len(lowest_u & highest_r) / m


def reference_curve(u, r):
    n = len(u)
    return [reference_tod(u, r, m) for m in range(1, math.floor(0.99 * n) + 1)]


def reference_count(curve, alpha):
    """Scan m from floor(0.99 n) down to 1; the first m with ToD(m) <= alpha, else 0."""
    for m in range(len(curve), 0, -1):
        if curve[m - 1] <= alpha:
            return m
    return 0


def distinct_scores(n, generator):
    """n distinct floats in random order."""
    return (
        torch.randperm(n, generator=generator).double() + 0.5 * torch.rand(n, generator=generator, dtype=torch.float64)
    ).float()


def score_pairs():
    """(U, R) pairs for n = 1..200: independent, opposed (hard to prune) and aligned (easy)."""
    generator = torch.Generator().manual_seed(1234)
    for n in range(1, 201):
        u = distinct_scores(n, generator)
        yield u, distinct_scores(n, generator)
        # R mostly opposite to U: the lowest-U units tend to be the most protected
        yield u, -u + 0.3 * n * torch.rand(n, generator=generator) + 1e-3 * torch.arange(n)
        if n % 5 == 0:
            yield u, u * 2 + 1  # R aligned with U: the lowest-U units are the least protected


# --------------------------------------------------------------------------- 1. against the rule
def test_tod_curve_and_count_match_the_plain_rule():
    checked = 0
    nonzero = set()
    for u, r in score_pairs():
        assert len(set(u.tolist())) == u.numel() and len(set(r.tolist())) == r.numel()
        curve = reference_curve(u.tolist(), r.tolist())
        got = tod_curve(u, r)
        assert got.dtype == torch.float64
        assert got.tolist() == pytest.approx(curve, abs=1e-12), f"n={u.numel()}"
        for alpha in ALPHAS:
            expected = reference_count(curve, alpha)
            assert tolerance_count(u, r, alpha) == expected, f"n={u.numel()} alpha={alpha}"
            if expected:
                nonzero.add(alpha)
            checked += 1
    assert checked > 2000
    assert nonzero == set(ALPHAS)  # the comparison exercised non-trivial counts at every alpha


def test_tod_curve_docstring_example():
    u = torch.tensor([0.1, 0.2, 0.3, 0.4])
    # R aligned with U: the lowest-U units are the least protected
    assert tod_curve(u, u).tolist() == pytest.approx([0.0, 0.0, 2 / 3])
    assert tolerance_count(u, u, 0.0) == 2
    assert tolerance_count(u, u, 2 / 3) == 3
    # R opposed to U: the lowest-U units are the most protected
    assert tod_curve(u, u.flip(0)).tolist() == [1.0, 1.0, 1.0]
    assert tolerance_count(u, u.flip(0), 0.99) == 0
    assert tolerance_count(u, u.flip(0), 1.0) == 3


def test_count_is_global_largest_not_first_failure():
    # ToD is not monotone in m: it can exceed alpha at small m and fall below it later.
    u = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    r = torch.tensor([10.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # unit 0 is most protected
    curve = tod_curve(u, r).tolist()
    assert curve[0] == 1.0  # ToD(1) = 1: the lowest-U unit is the top-R unit
    assert curve == pytest.approx(reference_curve(u.tolist(), r.tolist()))
    assert tolerance_count(u, r, 0.2) == reference_count(curve, 0.2) > 1


def test_tolerance_counts_is_per_layer_tolerance_count():
    scores = helpers.trained_small_cnn_scores()
    for alpha in ALPHAS:
        counts = tolerance_counts(scores, alpha)
        assert list(counts) == scores.layers
        for name in scores.layers:
            u, r = scores.utilization[name], scores.reconstruction[name]
            assert counts[name] == reference_count(reference_curve(u.tolist(), r.tolist()), alpha), name


# --------------------------------------------------------------------------- 2. edge cases
@pytest.mark.parametrize("alpha", ALPHAS)
def test_single_unit_layer_is_never_pruned(alpha):
    assert tod_curve(torch.tensor([0.3]), torch.tensor([0.1])).numel() == 0
    assert tolerance_count(torch.tensor([0.3]), torch.tensor([0.1]), alpha) == 0


def test_never_removes_all_units_and_respects_the_cap():
    generator = torch.Generator().manual_seed(7)
    for n in list(range(1, 120)) + [199, 200, 201, 512, 1000]:
        u = torch.rand(n, generator=generator)
        cap = math.floor(0.99 * n)
        assert tod_curve(u, u).numel() == cap < n
        # R aligned with U (the easiest case): |A ∩ B| = max(0, 2m - n), so ToD(m) = 0 iff 2m <= n
        assert tolerance_count(u, u, 0.0) == (n // 2 if n > 1 else 0)
        assert tolerance_count(u, u, 1.0) == cap
        # R opposed to U: ToD(m) = 1 for every m
        assert tolerance_count(u, -u, 1.0 - 1e-6) == 0
        assert tolerance_count(u, -u, 1.0) == cap
    assert tolerance_count(torch.rand(2), torch.rand(2), 1.0) == 1
    assert tolerance_count(torch.rand(100), torch.rand(100), 1.0) == 99
    assert tolerance_count(torch.rand(101), torch.rand(101), 1.0) == 99  # floor(99.99)
    assert tolerance_count(torch.rand(200), torch.rand(200), 1.0) == 198


@pytest.mark.parametrize("bad", [-0.1, -1e-9, 1.0 + 1e-9, 1.5, float("nan"), float("inf")])
def test_tolerance_outside_unit_interval_raises(bad):
    u, r = torch.rand(10), torch.rand(10)
    with pytest.raises(ValueError, match="tolerance"):
        tolerance_count(u, r, bad)
    with pytest.raises(ValueError, match="tolerance"):
        count_from_curve(tod_curve(u, r), bad)
    with pytest.raises(ValueError, match="tolerance"):
        tolerance_counts(helpers.trained_small_cnn_scores(), bad)


def test_mismatched_score_lengths_raise():
    with pytest.raises(ValueError):
        tod_curve(torch.rand(5), torch.rand(6))


# --------------------------------------------------------------------------- 3. monotone
def test_counts_never_decrease_as_tolerance_grows_on_real_scores():
    scores = helpers.trained_small_cnn_scores()
    grid = [i / 200 for i in range(201)]
    previous = None
    for alpha in grid:
        counts = tolerance_counts(scores, alpha)
        if previous is not None:
            for name in scores.layers:
                assert counts[name] >= previous[name], (name, alpha)
        previous = counts
    first, last = tolerance_counts(scores, 0.0), tolerance_counts(scores, 1.0)
    assert sum(last.values()) > sum(first.values())
    for name in scores.layers:  # at tolerance 1 every layer is at its cap
        assert last[name] == math.floor(0.99 * scores.utilization[name].numel())


def test_counts_never_decrease_on_random_scores():
    generator = torch.Generator().manual_seed(3)
    for n in (3, 10, 64, 150):
        for _ in range(5):
            u, r = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
            counts = [tolerance_count(u, r, a / 50) for a in range(51)]
            assert counts == sorted(counts)


# --------------------------------------------------------------------------- 4. one score collection
def _removed_per_layer(report):
    return {row.name: row.before - row.after for row in report.layers}


def test_two_tolerances_from_one_score_collection(monkeypatch):
    model = helpers.trained_small_cnn()
    scores = lightning_fair.compute_scores(model, helpers.calibration_loader(), **helpers.FAST)  # once
    low, high = 0.0, 0.5
    counts_low, counts_high = tolerance_counts(scores, low), tolerance_counts(scores, high)
    assert counts_low != counts_high
    assert all(counts_high[n] >= counts_low[n] for n in scores.layers)

    def no_recompute(*args, **kwargs):
        raise AssertionError("prune recomputed the scores although scores= was given")

    monkeypatch.setattr(oneshot, "compute_scores", no_recompute)
    monkeypatch.setattr(lightning_fair, "compute_scores", no_recompute)
    before = copy.deepcopy(scores)
    results = {}
    for alpha, counts in ((low, counts_low), (high, counts_high)):
        result = lightning_fair.prune(
            copy.deepcopy(model),
            scores=scores,
            example_inputs=helpers.example_inputs(),
            tolerance=alpha,
            recalibrate=False,
            refit=False,
        )
        assert result.scores is scores
        assert result.counts == counts
        # small_cnn has no coupled layers: every layer loses exactly its own ToD count
        assert _removed_per_layer(result.report) == counts
        results[alpha] = result
    assert results[high].report.macs_after < results[low].report.macs_after
    # the scores are not consumed or modified by pruning
    for name in scores.layers:
        assert torch.equal(scores.utilization[name], before.utilization[name])
        assert torch.equal(scores.reconstruction[name], before.reconstruction[name])


# --------------------------------------------------------------------------- 5. other rankings
def test_removal_order_utilization_and_l1():
    u = torch.tensor([0.5, 0.1, 0.9, 0.3])
    assert removal_order("utilization", u).tolist() == [1, 3, 0, 2]
    weight = torch.tensor([[1.0, -1.0], [0.1, 0.0], [-3.0, 0.0], [0.2, -0.2]]).reshape(4, 2, 1, 1)
    # L1 per unit: 2.0, 0.1, 3.0, 0.4
    assert removal_order("l1", u, weight).tolist() == [1, 3, 0, 2]
    weight[1] = 10.0
    assert removal_order("l1", u, weight).tolist() == [3, 0, 2, 1]
    with pytest.raises(ValueError):
        removal_order("l1", u)
    with pytest.raises(ValueError, match="ranking"):
        removal_order("foo", u)


def test_removal_order_random_is_seeded_and_a_permutation():
    u = torch.rand(50)
    a = removal_order("random", u, seed=3)
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a, removal_order("random", u, seed=3))
    assert not torch.equal(a, removal_order("random", u, seed=4))
    assert torch.equal(a, removal_order("random", torch.rand(50), seed=3))  # ignores the scores


def test_prune_l1_ranking_removes_smallest_l1_with_utilization_counts():
    model = helpers.trained_small_cnn()
    scores = helpers.trained_small_cnn_scores()
    x = helpers.example_inputs()
    alpha = 0.3
    weights = {name: module.weight.detach().clone() for name, module in model.named_modules() if name in scores.layers}
    fair = lightning_fair.prune(
        copy.deepcopy(model),
        scores=scores,
        example_inputs=x,
        tolerance=alpha,
        recalibrate=False,
        ranking="utilization",
        refit=False,
    )
    l1 = lightning_fair.prune(
        copy.deepcopy(model),
        scores=scores,
        example_inputs=x,
        tolerance=alpha,
        ranking="l1",
        recalibrate=False,
        refit=False,
    )
    assert _removed_per_layer(l1.report) == _removed_per_layer(fair.report) == tolerance_counts(scores, alpha)
    differs = False
    for name in scores.layers:  # every group of small_cnn has one member
        k = fair.counts[name]
        if k == 0:
            continue
        norms = weights[name].flatten(1).abs().sum(1)
        assert set(l1.removed[name]) == set(torch.argsort(norms)[:k].tolist()), name
        lowest_u = torch.argsort(scores.utilization[name])[:k]
        assert set(fair.removed[name]) == set(lowest_u.tolist()), name
        differs |= set(l1.removed[name]) != set(fair.removed[name])
    assert differs  # the ranking changed which units went, not how many


def test_prune_random_ranking_is_reproducible():
    model = helpers.trained_small_cnn()
    scores = helpers.trained_small_cnn_scores()
    x = helpers.example_inputs()
    runs = [
        lightning_fair.prune(
            copy.deepcopy(model),
            scores=scores,
            example_inputs=x,
            tolerance=0.3,
            ranking="random",
            seed=s,
            recalibrate=False,
            refit=False,
        )
        for s in (5, 5, 6)
    ]
    assert runs[0].removed == runs[1].removed
    assert runs[0].removed != runs[2].removed
    assert _removed_per_layer(runs[2].report) == tolerance_counts(scores, 0.3)
    out = [r.model(x) for r in runs[:2]]
    assert torch.equal(out[0], out[1])
