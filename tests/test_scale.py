"""Many classes: the class cap of the utilization score, the printed cost estimate and its warning,
and the deferred NaN checks a GPU pass uses (exercised here on the CPU)."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_fair import PruneConfig, compute_scores, estimate_memory, prune
from lightning_fair.collect.classes import (
    chosen_classes,
    class_slots,
    projections_for,
    rank_within_class,
)
from lightning_fair.collect.collector import StatisticsCollector
from lightning_fair.collect.finite import FiniteChecks
from lightning_fair.collect.memory import (
    MANY_PASSES,
    MemoryEstimate,
    resolve_budget,
    unit_bytes,
)
from lightning_fair.config import MANY_CLASSES, parse_bytes
from lightning_fair.demos import zoo

FAST = dict(samples_per_class=4, num_projections=8)


def batches(classes: int, n: int, batch: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float() / classes
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def model(classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.small_cnn(num_classes=classes, width=4).eval()


def test_rank_within_class_is_the_position_among_its_class():
    labels = torch.randint(0, 7, (200,), generator=torch.Generator().manual_seed(0))
    one_hot = torch.nn.functional.one_hot(labels, 7)
    expected = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    assert torch.equal(rank_within_class(labels), expected)


def test_chosen_classes_are_seeded_and_all_when_few():
    assert torch.equal(chosen_classes(10, 100, seed=3), torch.arange(10))
    assert torch.equal(chosen_classes(10, None, seed=3), torch.arange(10))
    a, b, c = chosen_classes(1000, 100, seed=0), chosen_classes(1000, 100, seed=0), chosen_classes(1000, 100, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.numel() == 100 and a.unique().numel() == 100 and bool((a[1:] > a[:-1]).all())
    assert class_slots(1000, a)[a].tolist() == list(range(100))


def test_a_cap_at_or_above_the_classes_changes_nothing():
    data = batches(10, 240)
    capped = compute_scores(model(10), data, max_classes=10, **FAST)
    every = compute_scores(model(10), data, max_classes=None, **FAST)
    for name in every.layers:
        assert torch.equal(capped.utilization[name], every.utilization[name]), name
    assert capped.config["classes_compared"] == 10


def test_capped_utilization_is_the_exact_score_of_the_chosen_classes():
    """U with max_classes=5 of 30 classes equals U computed on the calibration data of those 5
    classes only (same samples, kept in the same order); R still sees every class."""
    data = batches(30, 600)
    capped = compute_scores(model(30), data, max_classes=5, seed=2, **FAST)
    chosen = chosen_classes(30, 5, seed=2)
    assert capped.config["classes_compared"] == 5
    assert [k for k, c in enumerate(capped.class_counts) if c] == chosen.tolist()
    keep = [(x[torch.isin(y, chosen)], y[torch.isin(y, chosen)]) for x, y in data]
    only = compute_scores(model(30), keep, max_classes=None, seed=2, **FAST)
    for name in only.layers:
        assert torch.equal(capped.utilization[name], only.utilization[name]), name
    for name in only.input_utilization:
        assert torch.equal(capped.input_utilization[name], only.input_utilization[name]), name
    every = compute_scores(model(30), data, max_classes=None, seed=2, **FAST)
    for name in every.layers:
        assert torch.equal(capped.reconstruction[name], every.reconstruction[name]), name


def test_max_classes_is_validated_and_named():
    with pytest.raises(ValueError, match="max_classes"):
        PruneConfig(max_classes=1)
    with pytest.raises(ValueError, match="max_classes"):
        PruneConfig(max_classes="100")
    assert PruneConfig().max_classes == 100 and PruneConfig(max_classes=None).max_classes is None


def test_too_few_chosen_classes_in_the_data_names_max_classes():
    g = torch.Generator().manual_seed(0)
    chosen = chosen_classes(50, 2, seed=0)
    other = [k for k in range(50) if k not in chosen.tolist()][:3]
    y = torch.tensor(other * 20)
    data = [(torch.randn(60, 1, 8, 8, generator=g), y)]
    with pytest.raises(ValueError, match="max_classes"):
        compute_scores(model(50), data, max_classes=2, **FAST)


# ------------------------------------------------------------------------------ num_projections="auto"
def test_auto_projections_are_128_below_many_classes_and_32_from_there_on():
    assert PruneConfig().num_projections == "auto" and MANY_CLASSES == 50
    assert [projections_for("auto", k) for k in (2, 10, MANY_CLASSES - 1, MANY_CLASSES, 100, 1000)] == [
        128,
        128,
        128,
        32,
        32,
        32,
    ]
    few, many = batches(10, 120), batches(60, 600)
    for classes, data, expected in ((10, few, 128), (60, many, 32)):
        collector = StatisticsCollector(model(classes), samples_per_class=2).run(data)
        assert collector.num_projections == expected  # resolved on the first batch
        scores = compute_scores(model(classes), data, samples_per_class=2)
        assert scores.config["num_projections"] == expected  # recorded with the scores
        estimate = estimate_memory(model(classes), data[0][0][:1], samples_per_class=2)
        assert estimate.num_projections == expected and f"{expected} projections" in estimate.describe()
        same = compute_scores(model(classes), data, samples_per_class=2, num_projections=expected)
        assert all(torch.equal(scores.utilization[n], same.utilization[n]) for n in scores.layers)
    # the classes U compares decide, not the model's: 20 of 60 compared take 128
    assert compute_scores(model(60), many, samples_per_class=2, max_classes=20).config["num_projections"] == 128
    assert estimate_memory(model(60), many[0][0][:1], max_classes=20).num_projections == 128
    # an integer is used as given, whatever the classes
    assert compute_scores(model(60), many, samples_per_class=2, num_projections=8).config["num_projections"] == 8
    assert estimate_memory(model(60), many[0][0][:1], num_projections=8).num_projections == 8
    # the report says which count was used
    result = prune(model(60), many, samples_per_class=2, tolerance=0.1, allocation="tod")
    assert result.report.options["num_projections"] == 32 and result.config.num_projections == "auto"


@pytest.mark.parametrize("value", [0, -3, "many", "128", 2.5, True, None])
def test_bad_num_projections_are_refused_naming_the_option_and_the_fix(value):
    with pytest.raises(ValueError, match="num_projections must be a positive integer or 'auto'"):
        PruneConfig(num_projections=value)
    with pytest.raises(ValueError, match="num_projections"):
        compute_scores(model(10), batches(10, 60), num_projections=value)
    with pytest.raises(ValueError, match="num_projections"):
        StatisticsCollector(model(10), num_projections=value)


# ------------------------------------------------------------------------------ cost estimate
def test_estimate_counts_the_compared_classes_pairs_and_distance_work():
    example = torch.randn(1, 1, 8, 8)
    every = estimate_memory(model(1000), example, max_classes=None, **FAST)
    capped = estimate_memory(model(1000), example, **FAST)  # max_classes=100 by default
    assert (every.num_classes, capped.num_classes, capped.model_classes) == (1000, 100, 1000)
    assert every.pairs == 499_500 and capped.pairs == 4_950
    assert every.samples_bytes == 10 * capped.samples_bytes
    assert every.distance_ops == 100 * capped.distance_ops
    text = capped.describe()
    assert "100 of 1000 classes" in text and "4,950 class pairs" in text and "distance operations" in text


def test_a_setting_that_would_take_far_too_long_warns_naming_the_options():
    layers = {"layer4": (2048, unit_bytes(1000, 32, 49, 128))}  # ResNet-50's last stage, 1000 classes
    estimate = MemoryEstimate(1000, 32, 128, layers, model_classes=1000)
    message = estimate.cost_warning(2**32)
    assert message and "max_classes" in message and "num_projections" in message and "memory_budget" in message
    assert "passes" in message and "h of class-pair distances" in message
    cheap = MemoryEstimate(10, 32, 128, {"conv": (64, unit_bytes(10, 32, 64, 128))})
    assert cheap.cost_warning(2**32) is None


def test_compute_scores_warns_before_a_long_pass_and_prints_the_estimate(capsys):
    data = batches(10, 120)
    estimate = estimate_memory(model(10), data[0][0][:1], **FAST)
    budget = estimate.peak_bytes(0) + estimate.samples_bytes // (3 * MANY_PASSES)  # many passes
    with pytest.warns(UserWarning, match="far too long.*memory_budget"):
        scores = compute_scores(model(10), data, memory_budget=budget, verbose=True, **FAST)
    assert scores.config["passes"] > MANY_PASSES
    printed = capsys.readouterr().out
    assert "class pairs" in printed and f"{scores.config['passes']} passes" in printed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_scores(model(10), data, **FAST)  # the default budget: one pass, no warning


# ------------------------------------------------------------------------------ deferred checks
def test_deferred_checks_raise_the_first_failure_at_flush():
    checks = FiniteChecks(torch.device("meta"))  # any device but the CPU defers
    checks.check(torch.ones(2), lambda: "first")
    checks.check(torch.tensor([float("inf")]), lambda: "second failed")
    checks.check(torch.tensor([float("nan")]), lambda: "third failed")
    with pytest.raises(FloatingPointError, match="second failed"):
        checks.flush()
    checks.flush()  # nothing pending any more


def test_the_default_budget_is_auto_and_4gib_on_the_cpu():
    assert PruneConfig().memory_budget == "auto"
    assert resolve_budget("auto", "cpu") == resolve_budget("AUTO", None) == parse_bytes("4GiB")
    assert resolve_budget("2GiB", "cpu") == 2 * 2**30 and resolve_budget(None, "cpu") is None
    with pytest.raises(ValueError, match="'auto'"):
        PruneConfig(memory_budget="automatic")
    data = batches(10, 120)
    auto = compute_scores(model(10), data, **FAST)
    four = compute_scores(model(10), data, memory_budget="4GiB", **FAST)
    assert auto.config["passes"] == four.config["passes"] == 1
    for name in auto.layers:
        assert torch.equal(auto.utilization[name], four.utilization[name]), name
