"""The pipeline's options: presets, BatchNorm re-estimation inside prune(), the reconstruction
aggregation variant, the global allocation variant, and the input means scores carry."""

from __future__ import annotations

import copy

import helpers
import pytest
import torch
import torch.nn.functional as F
from helpers import FAST
from torch import nn

from lightning_fair import compute_scores, prune, recalibrate_bn
from lightning_fair.allocation.budgets import global_counts, global_thresholds
from lightning_fair.config import PRESETS
from lightning_fair.demos import zoo
from lightning_fair.scoring.criterion import layer_standardised


# ------------------------------------------------------------------ presets
def test_paper_preset_is_the_method_as_published():
    model = helpers.trained_small_cnn()
    original = copy.deepcopy(model)
    calibration = helpers.calibration_loader(300, 100)
    result = prune(model, calibration, tolerance=0.2, preset="paper", **FAST)
    # scores: U on the raw layer output, R = |sum dL/dz z|, exactly what compute_scores gives
    expected = compute_scores(original, calibration, observe="output", reconstruction="abs_of_sum", **FAST)
    assert set(result.scores.observed.values()) == {"output"}
    assert result.scores.config["reconstruction"] == "abs_of_sum"
    for name in expected.layers:
        assert torch.equal(result.scores.utilization[name], expected.utilization[name])
        assert torch.equal(result.scores.reconstruction[name], expected.reconstruction[name])
        assert torch.equal(result.scores.reconstruction[name], expected.taylor_sum[name].abs().float())
    # no re-estimation, no compensation: kept BatchNorm statistics are the original ones, sliced
    assert not result.report.recalibrated and not result.report.compensated
    kept = result.kept["features.1.1"]["out"]
    assert torch.equal(model.features[1][1].running_mean, original.features[1][1].running_mean[kept])
    options = result.report.options  # the whole config; the pipeline part is the paper's
    assert {key: options[key] for key in ("preset", *PRESETS["paper"], "criterion")} == {
        "preset": "paper",
        **PRESETS["paper"],
        "criterion": "fair",
    }


def test_default_preset_refits_and_recalibrates():
    model = helpers.trained_small_cnn()
    calibration = helpers.calibration_loader(300, 100)
    result = prune(copy.deepcopy(model), calibration, tolerance=0.2, **FAST)
    assert result.report.options["preset"] == "default"
    assert result.report.recalibrated == ["features.0.1", "features.1.1", "features.3.1"]
    assert result.report.refitted and not result.report.compensated  # every consumer refitted
    assert "BatchNorm statistics re-estimated" in str(result.report)
    # the same as pruning without re-estimation and re-estimating afterwards with the public function
    manual = prune(copy.deepcopy(model), calibration, tolerance=0.2, recalibrate=False, **FAST).model
    assert recalibrate_bn(manual, calibration) == result.report.recalibrated
    for a, b in zip(manual.state_dict().values(), result.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_explicit_options_override_the_preset():
    result = prune(
        helpers.trained_small_cnn(),
        helpers.calibration_loader(200, 100),
        tolerance=0.2,
        preset="paper",
        observe="activation",
        recalibrate=True,
        **FAST,
    )
    assert result.report.options["observe"] == "activation" and result.report.options["compensate"] is False
    assert result.report.recalibrated


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preset="fast"), "preset must be one of"),
        (dict(reconstruction="sum"), "reconstruction must be one of"),
        (dict(allocation="layerwise"), "allocation must be one of"),
        (dict(allocation="global"), "needs a budget"),
        (dict(allocation="standardised"), "allocation='standardised' ranks units across layers and needs a budget"),
    ],
)
def test_bad_pipeline_options_are_refused_before_anything_runs(kwargs, match):
    model = helpers.trained_small_cnn()
    state = copy.deepcopy(model.state_dict())

    def never():
        raise AssertionError("the data was touched")
        yield

    with pytest.raises(ValueError, match=match):
        prune(model, never(), **kwargs)
    assert all(torch.equal(a, state[k]) for k, a in model.state_dict().items())


def test_recalibrate_true_without_data_is_an_error_and_so_is_the_default_on_batchnorm():
    """The README's 0.1 recipe (scores reused, no loader) pruned a BatchNorm net to chance quietly."""
    scores = helpers.trained_small_cnn_scores()
    model = helpers.trained_small_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="recalibrate=True"):
        prune(model, scores=scores, example_inputs=helpers.example_inputs(), recalibrate=True)
    with pytest.raises(ValueError, match="BatchNorm.*pass it too.*recalibrate=False"):
        prune(model, scores=scores, example_inputs=helpers.example_inputs(), tolerance=0.2)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    result = prune(
        model, scores=scores, example_inputs=helpers.example_inputs(), tolerance=0.2, recalibrate=False, refit=False
    )
    assert not result.report.recalibrated and result.report.macs_ratio < 1


def test_recalibration_restores_one_shot_accuracy_on_a_batchnorm_net():
    """The reason it is on by default: measured on held-out digits, same removal both times."""
    model = helpers.trained_small_cnn()
    _, _, x_test, y_test = helpers.digits()
    calibration = helpers.calibration_loader(400, 100)
    options = dict(target_macs=0.4, compensate=False, refit=False, **FAST)
    stale = prune(copy.deepcopy(model), calibration, recalibrate=False, **options)
    fresh = prune(copy.deepcopy(model), calibration, recalibrate=True, **options)
    assert stale.removed == fresh.removed
    assert helpers.accuracy(fresh.model, x_test, y_test) > helpers.accuracy(stale.model, x_test, y_test) + 0.1


# ------------------------------------------------------------------ reconstruction aggregation
def _per_sample_taylor(model, batches, layers):
    """``Σ_samples |Σ_positions dL_b/dz · z|`` by explicit parameter autograd, one sample at a time
    (L_b is the batch-mean loss, so each sample's term is 1/B of its own loss's)."""
    ref = copy.deepcopy(model).eval().double()
    modules = dict(ref.named_modules())
    params = {n: [p for p in (modules[n].weight, modules[n].bias) if p is not None] for n in layers}
    total = {n: torch.zeros(modules[n].weight.shape[0], dtype=torch.float64) for n in layers}
    for xb, yb in batches:
        for i in range(len(yb)):
            loss = F.cross_entropy(ref(xb[i : i + 1].double()), yb[i : i + 1]) / len(yb)
            flat = [p for n in layers for p in params[n]]
            grads = dict(zip(map(id, flat), torch.autograd.grad(loss, flat)))
            for n in layers:
                term = sum((p.detach() * grads[id(p)]).reshape(p.shape[0], -1).sum(1) for p in params[n])
                total[n] += term.abs()
    return total


@pytest.mark.parametrize("build", ["mlp", "cnn"])
def test_sum_of_abs_reconstruction_matches_per_sample_autograd(build):
    torch.manual_seed(0)
    model = zoo.mlp(in_features=64, hidden=(24, 16)) if build == "mlp" else zoo.small_cnn(width=4)
    model = helpers.train(model, epochs=2)
    x, y, _, _ = helpers.digits()
    batches = [(x[:12], y[:12]), (x[12:20], y[12:20])]
    scores = compute_scores(
        model.double(),
        [(a.double(), b) for a, b in batches],
        reconstruction="sum_of_abs",
        samples_per_class=2,
        num_projections=4,
    )
    model.float()
    expected = _per_sample_taylor(model, batches, scores.layers)
    for name in scores.layers:
        assert scores.config["reconstruction"] == "sum_of_abs"
        torch.testing.assert_close(scores.reconstruction[name].double(), expected[name], rtol=1e-5, atol=1e-9)
        # and it differs from the paper's |sum| (the variant is not a no-op)
        assert not torch.allclose(scores.reconstruction[name].double(), scores.taylor_sum[name].abs().double())


# ------------------------------------------------------------------ global allocation
def test_global_allocation_reaches_the_target_with_threshold_counts():
    model = helpers.trained_small_cnn()
    scores = helpers.trained_small_cnn_scores()
    result = prune(
        model,
        scores=scores,
        example_inputs=helpers.example_inputs(),
        target_macs=0.5,
        allocation="global",
        recalibrate=False,
        ranking="utilization",
        refit=False,
    )
    assert result.report.macs_ratio <= 0.5 + 1e-9
    assert result.report.tolerance is None  # no tolerance of difference in this variant
    scored = [n for n in scores.layers if n != scores.output_layer]
    assert result.counts == global_counts(scores, result.tolerance, scored)
    # every layer lost exactly its lowest-U units
    for name, idxs in result.removed.items():
        u = scores.utilization[name]
        assert set(idxs) == set(torch.sort(u.double(), stable=True).indices[: len(idxs)].tolist())
    # and it is a different allocation than ToD's at the same budget
    tod = prune(
        helpers.trained_small_cnn(),
        scores=scores,
        example_inputs=helpers.example_inputs(),
        target_macs=0.5,
        recalibrate=False,
        refit=False,
        allocation="tod",
        ranking="utilization",
    )
    assert tod.counts != result.counts


def test_standardised_allocation_thresholds_z_scores_within_each_layer():
    """allocation="standardised": one threshold on (U - mean U) / std U of each layer, FLAP's
    standardisation; a different allocation from the mean-normalised one at the same budget."""
    scores = helpers.trained_small_cnn_scores()
    options = dict(
        scores=scores, example_inputs=helpers.example_inputs(), target_macs=0.5, recalibrate=False, refit=False
    )
    result = prune(helpers.trained_small_cnn(), allocation="standardised", ranking="utilization", **options)
    assert result.report.macs_ratio <= 0.5 + 1e-9
    assert result.level_name == "threshold" and result.level < 0  # z-scores: the mean is 0
    assert "standardised within each layer" in str(result.report)
    scored = [n for n in scores.layers if n != scores.output_layer]
    assert result.counts == global_counts(scores, result.level, scored, layer_standardised)
    for name, idxs in result.removed.items():
        u = scores.utilization[name]
        assert set(idxs) == set(torch.sort(u.double(), stable=True).indices[: len(idxs)].tolist())
    # the lowest candidate level removes nothing, the levels ascend
    levels = global_thresholds(scores, scored, layer_standardised)
    assert levels == sorted(levels) and levels[0] < 0
    assert set(global_counts(scores, levels[0], scored, layer_standardised).values()) == {0}
    mean_normalised = prune(helpers.trained_small_cnn(), allocation="global", ranking="utilization", **options)
    assert mean_normalised.counts != result.counts


# ------------------------------------------------------------------ input means
def test_input_means_equal_the_mean_input_of_every_layer():
    model = helpers.trained_small_cnn()
    calibration = helpers.calibration_loader(250, 100)  # unequal last batch
    scores = compute_scores(model, calibration, **FAST)
    seen = {}
    modules = dict(model.named_modules())
    names = ["features.0.0", "features.3.0", "head.0", "classifier"]
    handles = [
        modules[n].register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, []).append(a[0].double()))
        for n in names
    ]
    with torch.no_grad():
        for x, _ in calibration:
            model(x)
    for h in handles:
        h.remove()
    assert set(scores.input_means) == set(n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear)))
    for name in names:
        torch.testing.assert_close(scores.input_means[name], torch.cat(seen[name]).mean(0), rtol=1e-9, atol=1e-9)


def test_default_allocation_is_global_under_a_target_and_tod_under_a_tolerance():
    scores = helpers.trained_small_cnn_scores()
    kwargs = dict(scores=scores, example_inputs=helpers.example_inputs(), recalibrate=False, refit=False)
    assert prune(helpers.trained_small_cnn(), target_macs=0.5, **kwargs).report.options["allocation"] == "global"
    by_tolerance = prune(helpers.trained_small_cnn(), tolerance=0.1, **kwargs)
    assert by_tolerance.report.options["allocation"] == "tod" and by_tolerance.report.tolerance == 0.1


def test_mean_over_class_pairs_flows_from_the_scores_to_the_ranking_and_report():
    """``pairs="mean"`` scores passed to ``prune`` (which is not told): the report says what U was, and
    the units removed follow the mean-pair U (a layer's lowest-U units are the ones that go)."""
    calib = helpers.calibration_loader()
    model = helpers.trained_small_cnn()
    scores = compute_scores(model, calib, pairs="mean", **helpers.FAST)
    assert scores.config["pairs"] == "mean"
    by_max = compute_scores(model, calib, **helpers.FAST)
    assert all(bool((scores.utilization[n] <= by_max.utilization[n] + 1e-6).all()) for n in scores.layers)
    assert any(not torch.allclose(scores.utilization[n], by_max.utilization[n]) for n in scores.layers)
    result = prune(copy.deepcopy(model), calib, scores=scores, target_macs=0.6, ranking="utilization", refit=False)
    assert result.report.options["pairs"] == "mean"
    assert "units ranked by U (class separation, mean over class pairs, after" in str(result.report)
    name = "features.0.0"  # the first conv: its kept rows are its own, unchanged (it reads the image)
    before, after = model.get_submodule(name).weight.flatten(1), result.model.get_submodule(name).weight.flatten(1)
    kept = {int(torch.cdist(row[None], before).argmin()) for row in after}
    removed = set(range(before.shape[0])) - kept
    assert len(kept) == after.shape[0] and removed
    assert removed == set(torch.argsort(scores.utilization[name], stable=True)[: len(removed)].tolist())


def test_printed_report_says_the_pipeline_in_words():
    """0.1 printed ``pipeline: preset=default, observe=activation, ...``: jargon (issue 13)."""
    scores = helpers.trained_small_cnn_scores()
    calib = helpers.calibration_loader()
    text = str(prune(helpers.trained_small_cnn(), calib, scores=scores, target_macs=0.5).report)
    line = next(line for line in text.splitlines() if line.startswith("pipeline"))
    assert line == (
        "pipeline (default preset): units ranked by U (class separation, after the following activation, "
        "times how strongly the next layers read them); "
        "one threshold on layer-normalised scores across all layers; "
        "then least-squares refit, mean replacement and BatchNorm re-estimation"
    )
    paper = str(prune(helpers.trained_small_cnn(), calib, preset="paper", tolerance=0.1, **helpers.FAST).report)
    assert (
        "pipeline (paper preset): units ranked by U (class separation, on the layer's output); per-layer counts "
        "by the tolerance of difference (U against R); coupled layers take their smallest count; no repair" in paper
    )
