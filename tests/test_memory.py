"""Bounded memory: the statistics' memory is estimated up front and kept under a budget."""

from __future__ import annotations

import helpers
import pytest
import torch

import lightning_fair.scoring.compute as scores_module
from lightning_fair import compute_scores
from lightning_fair.collect.collector import StatisticsCollector
from lightning_fair.collect.memory import DISTANCE_WORK_BYTES, estimate_memory
from lightning_fair.config import parse_bytes
from lightning_fair.demos import zoo
from lightning_fair.units.channels import consumer_of

OPTIONS = dict(samples_per_class=16, num_projections=32)


class Recording(StatisticsCollector):
    """Remembers the bytes of utilization samples each pass held."""

    held = []

    def run(self, *args, **kwargs):
        result = super().run(*args, **kwargs)
        Recording.held.append(self.class_samples.nbytes)
        return result


def test_estimate_equals_the_buffers_of_one_pass(monkeypatch):
    model = helpers.trained_small_cnn()
    Recording.held = []
    monkeypatch.setattr(scores_module, "StatisticsCollector", Recording)
    scores = compute_scores(model, helpers.calibration_loader(300, 100), memory_budget=None, **OPTIONS)
    estimate = estimate_memory(model, helpers.example_inputs(1), **OPTIONS)
    assert Recording.held == [estimate.samples_bytes] and scores.config["passes"] == 1
    assert scores.config["memory_estimate"] == estimate.total_bytes


@pytest.mark.parametrize("screening", [False, True])
def test_each_statistic_holds_what_the_estimate_says(screening):
    # every accumulator of the pass reports its size; the estimate made before the pass predicts each
    model, batches = helpers.trained_small_cnn(), helpers.calibration_loader(300, 100)
    collector = StatisticsCollector(model, screening=screening, **OPTIONS).run(batches)
    estimate = estimate_memory(model, helpers.example_inputs(1), screening=screening, **OPTIONS)
    assert collector.class_samples.nbytes == estimate.samples_bytes > 0
    assert collector.taylor.nbytes + collector.peaks.nbytes == estimate.reconstruction_bytes > 0
    assert collector.inputs.nbytes == estimate.input_bytes > 0
    held = collector.screening_moments.nbytes if screening else 0
    assert held == estimate.screening_bytes and (held > 0) == screening
    statistics = collector.statistics()
    assert len(statistics) == 5 + screening and all(callable(s.merge) for s in statistics)


def test_a_small_budget_splits_the_pass_and_gives_the_same_scores(monkeypatch, capsys):
    model = helpers.trained_small_cnn()
    calibration = helpers.calibration_loader(300, 100)
    whole = compute_scores(model, calibration, memory_budget=None, **OPTIONS)
    estimate = estimate_memory(model, helpers.example_inputs(1), **OPTIONS)
    # room for about a quarter of the samples per pass: several passes, some layers split by channels
    budget = (
        estimate.distance_work_bytes
        + estimate.reconstruction_bytes
        + estimate.input_bytes
        + estimate.samples_bytes // 4
    )
    chunks = estimate.chunks(budget)
    assert len(chunks) >= 4 and any(
        stop - start < estimate.layers[n][0] for c in chunks for n, (start, stop) in c.items()
    )
    Recording.held = []
    monkeypatch.setattr(scores_module, "StatisticsCollector", Recording)
    split = compute_scores(model, calibration, memory_budget=budget, verbose=True, **OPTIONS)
    assert split.config["passes"] == len(chunks) == len(Recording.held)
    assert (
        max(Recording.held)
        <= budget - estimate.distance_work_bytes - estimate.reconstruction_bytes - estimate.input_bytes
    )
    assert f"{len(chunks)} passes" in capsys.readouterr().out
    for name in whole.layers:
        assert torch.equal(split.utilization[name], whole.utilization[name]), name
        assert torch.equal(split.reconstruction[name], whole.reconstruction[name]), name
    assert split.config["num_batches"] == whole.config["num_batches"]


def test_chunks_cover_every_unit_once_within_the_budget():
    estimate = estimate_memory(zoo.resnet(width=8, layers=(1, 1, 1)), torch.randn(1, 1, 16, 16), **OPTIONS)
    fixed = estimate.distance_work_bytes + estimate.reconstruction_bytes + estimate.input_bytes
    for budget in (fixed + 2 * 300_000, fixed + 2 * 1_000_000, fixed + estimate.samples_bytes):
        covered = {name: [] for name in estimate.layers}
        for chunk in estimate.chunks(budget):
            held = sum((b - a) * estimate.layers[n][1] for n, (a, b) in chunk.items())
            assert estimate.peak_bytes(held) <= budget
            for name, (a, b) in chunk.items():
                covered[name].extend(range(a, b))
        assert all(sorted(units) == list(range(estimate.layers[n][0])) for n, units in covered.items())


def test_resnet50_at_224_with_1000_classes_stays_within_a_few_gib():
    # 32 samples, 128 projections (the default before "auto"), U compares max_classes=100 of the 1000 classes
    estimate = estimate_memory(helpers.resnet50(), torch.randn(1, 3, 224, 224), num_projections=128)
    # 53 scored layers, and the inputs of the Conv/Linear layers that read a residual stream (observed apart)
    assert len([n for n in estimate.layers if consumer_of(n) is None]) == 53
    assert (estimate.num_classes, estimate.model_classes) == (100, 1000)
    assert len(estimate.layers) == 53 + 17  # a stage's first block and shortcut read one tensor: observed once
    every = estimate_memory(helpers.resnet50(), torch.randn(1, 3, 224, 224), max_classes=None, num_projections=128)
    assert every.total_bytes > 500 * 2**30 and every.pairs == 499_500  # all classes: hundreds of GiB in one pass
    assert estimate.total_bytes < 64 * 2**30 and estimate.pairs == 4_950
    budget = parse_bytes("4GiB")
    chunks = estimate.chunks(budget)
    worst = max(estimate.peak_bytes(sum((b - a) * estimate.layers[n][1] for n, (a, b) in c.items())) for c in chunks)
    assert worst <= budget
    text = estimate.describe(budget)
    assert f"{len(chunks)} passes" in text and "MiB" in text
    assert len(every.chunks(budget)) > 9 * len(chunks)  # 185 passes -> 19
    # the defaults (num_projections="auto": 32 directions at 100 compared classes): a quarter, 16 GiB, 5 passes
    default = estimate_memory(helpers.resnet50(), torch.randn(1, 3, 224, 224))
    assert default.num_projections == 32 and default.total_bytes < 17 * 2**30
    assert len(default.chunks(budget)) <= 5 and default.cost_warning(budget) is None
    assert "num_projections (now 128" in estimate.cost_warning(budget)  # 19 passes: the warning names the count
    # with a handful of samples per class it is a single pass (2 before the class cap; 3 with all classes, since
    # the residual streams' consumer inputs, observed for the coupled groups' ranking, add 15k units)
    small = estimate_memory(helpers.resnet50(), torch.randn(1, 3, 224, 224), samples_per_class=2, num_projections=16)
    assert len(small.chunks(budget)) == 1


def test_one_shot_iterator_cannot_be_passed_twice():
    model = helpers.trained_small_cnn()
    estimate = estimate_memory(model, helpers.example_inputs(1), **OPTIONS)
    budget = (
        estimate.distance_work_bytes
        + estimate.reconstruction_bytes
        + estimate.input_bytes
        + estimate.samples_bytes // 2
    )
    with pytest.raises(ValueError, match="re-iterable dataloader"):
        compute_scores(model, iter(helpers.calibration_loader(200, 100)), memory_budget=budget, **OPTIONS)


@pytest.mark.parametrize("value, match", [("4 parsecs", "memory_budget"), (-5, "positive"), ("0GiB", "positive")])
def test_bad_budgets_are_refused(value, match):
    with pytest.raises(ValueError, match=match):
        compute_scores(
            helpers.trained_small_cnn(), helpers.calibration_loader(100, 100), memory_budget=value, **OPTIONS
        )


def test_a_budget_below_one_unit_says_so():
    model = helpers.trained_small_cnn()
    estimate = estimate_memory(model, helpers.example_inputs(1), **OPTIONS)
    with pytest.raises(ValueError, match="raise memory_budget"):
        compute_scores(
            model,
            helpers.calibration_loader(100, 100),
            memory_budget=estimate.distance_work_bytes + estimate.reconstruction_bytes + estimate.input_bytes + 1,
            **OPTIONS,
        )


def test_the_estimate_is_in_proportion_and_printed_only_when_it_matters(capsys):
    """A small CNN's statistics take megabytes, not the distance buffers' cap, and scoring it says
    nothing about memory; a budget that splits the pass is said."""
    model = helpers.trained_small_cnn()
    estimate = estimate_memory(model, helpers.example_inputs(1), **OPTIONS)
    assert estimate.total_bytes < 64 * 2**20 < DISTANCE_WORK_BYTES
    compute_scores(model, helpers.calibration_loader(200, 100), verbose=True, **OPTIONS)
    assert "statistics need" not in capsys.readouterr().out
    budget = estimate.distance_work_bytes + estimate.reconstruction_bytes + estimate.input_bytes
    compute_scores(
        model,
        helpers.calibration_loader(200, 100),
        verbose=True,
        memory_budget=budget + estimate.samples_bytes // 2,
        **OPTIONS,
    )
    assert "statistics need" in capsys.readouterr().out
