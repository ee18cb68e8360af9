"""The screening criterion (method.md "Screening"): F-statistic, combined score, structured and
unstructured pruning, and that criterion="fair" is untouched. Real data (sklearn digits)."""

from __future__ import annotations

import copy
import warnings

import helpers
import numpy as np
import pytest
import torch
from torch import nn

from lightning_fair import ConnectionConfig, FairScores, ScreeningScores, compute_scores, prune, prune_connections
from lightning_fair.allocation.tolerance import tolerance_count
from lightning_fair.demos import zoo
from lightning_fair.scoring.screening import connection_scores, screening_scores
from lightning_fair.units.cost import measure

f_classif = pytest.importorskip("sklearn.feature_selection").f_classif

FAST = dict(samples_per_class=8, num_projections=8)


def unequal_batches():
    """Unequal class sizes (class k keeps 12 + 6k images, class 9 none: absent), batches of 37, 50, 61, ..."""
    x, y, _, _ = helpers.digits()
    keep = torch.cat([torch.nonzero(y == k).flatten()[: 12 + 6 * k] for k in range(9)]).sort().values
    x, y = x[keep], y[keep]
    sizes, batches, start = [37, 50, 61], [], 0
    while start < len(y):
        size = sizes[len(batches) % 3]
        batches.append((x[start : start + size], y[start : start + size]))
        start += size
    return batches


def captured(model, batches, modules):
    """Spatially averaged outputs of ``modules`` ({name: module}) and every label, with plain hooks."""
    seen = {name: [] for name in modules}
    handles = [
        m.register_forward_hook(
            lambda mod, args, out, name=name: seen[name].append(
                out.detach().double().reshape(out.shape[0], out.shape[1], -1).mean(2)
            )
        )
        for name, m in modules.items()
    ]
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return {name: torch.cat(v).numpy() for name, v in seen.items()}, torch.cat([y for _, y in batches]).numpy()


def sklearn_f(values, labels):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Features [...] are constant."
        f, _ = f_classif(values, labels)
    return torch.from_numpy(np.nan_to_num(f, nan=0.0))  # constant features: nan in sklearn, 0 here


# ------------------------------------------------------------------ F-statistic
@pytest.mark.parametrize("observe", ["output", "activation"])
def test_f_statistic_equals_sklearn_f_classif(observe):
    model, batches = helpers.trained_small_cnn(), unequal_batches()
    scores = compute_scores(model, batches, observe=observe, criterion="screening", **FAST)
    f = model.features
    # conv and Linear units: the layer output, or the ReLU after the norm (the tensor U observes)
    taps = (
        {"features.0.0": f[0][0], "features.3.0": f[3][0], "head.0": model.head[0]}
        if observe == "output"
        else {"features.0.0": f[0][2], "features.3.0": f[3][2], "head.0": model.head[1]}
    )
    values, labels = captured(model, batches, taps)
    assert set(np.unique(labels)) == set(range(9))  # class 9 absent, unequal sizes
    for name in taps:
        torch.testing.assert_close(scores.f_statistic[name], sklearn_f(values[name], labels), rtol=1e-7, atol=1e-9)
    # inputs: the raw pixels' channel mean for the first conv, the pooled features for the head
    pixels = torch.cat([x for x, _ in batches]).double().mean((2, 3)).numpy()
    torch.testing.assert_close(
        scores.input_f_statistic["features.0.0"], sklearn_f(pixels, labels), rtol=1e-7, atol=1e-9
    )
    if observe == "activation":  # the head reads exactly the pooled activation of features.3.0
        torch.testing.assert_close(scores.input_f_statistic["head.0"], scores.f_statistic["features.3.0"])


def test_f_statistic_of_an_mlp_and_its_raw_pixels():
    model, batches = helpers.train(zoo.mlp(in_features=64), epochs=2), unequal_batches()
    scores = compute_scores(model, batches, criterion="screening", **FAST)
    relus = {"features.1": model.features[2], "features.3": model.features[4]}  # observe="activation"
    values, labels = captured(model, batches, relus)
    for name in relus:
        torch.testing.assert_close(scores.f_statistic[name], sklearn_f(values[name], labels), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(scores.input_f_statistic["features.3"], scores.f_statistic["features.1"])
    pixels = torch.cat([x for x, _ in batches]).flatten(1).double().numpy()
    expected = sklearn_f(pixels, labels)
    assert (expected == 0).any()  # digits have always-blank pixels: constant, F = 0 (sklearn: nan)
    torch.testing.assert_close(scores.input_f_statistic["features.1"], expected, rtol=1e-7, atol=1e-9)
    assert torch.isfinite(scores.f_statistic["features.1"]).all()


def test_screening_statistics_leave_fair_scores_bitwise_unchanged():
    model, batches = helpers.trained_small_cnn(), helpers.calibration_loader(300, 100)
    plain = compute_scores(model, batches, **FAST)
    both = compute_scores(model, batches, criterion="screening", **FAST)
    # each criterion's scores are its own type: FAIR's carry no screening statistics
    assert type(plain) is FairScores and not hasattr(plain, "f_statistic")
    assert isinstance(both, ScreeningScores) and both.f_statistic.keys() == set(plain.layers)
    for name in plain.layers:
        assert torch.equal(plain.utilization[name], both.utilization[name])
        assert torch.equal(plain.reconstruction[name], both.reconstruction[name])
        assert torch.equal(plain.taylor_sum[name], both.taylor_sum[name])
    for name in plain.input_means:
        assert torch.equal(plain.input_means[name], both.input_means[name])


# ------------------------------------------------------------------ combined score
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_screening_score_is_the_brute_force_formula(weight):
    model, batches = helpers.trained_small_cnn(), unequal_batches()
    scores = compute_scores(model, batches, observe="output", criterion="screening", **FAST)
    layers = {"features.1.0": model.features[1][0], "head.0": model.head[0]}
    values, labels = captured(model, batches, layers)
    result = screening_scores(scores, weight)
    for name, module in layers.items():
        f = sklearn_f(values[name], labels)
        norm = module.weight.detach().double().flatten(1).pow(2).sum(1).sqrt()
        expected = weight * f / f.mean() + (1 - weight) * norm / norm.mean()
        torch.testing.assert_close(result[name], expected, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(scores.filter_norm[name], norm)
    assert torch.equal(scores.screening(weight)["head.0"], result["head.0"])


def test_scores_with_f_round_trip_and_old_files_still_load(tmp_path):
    scores = compute_scores(
        helpers.trained_small_cnn(), helpers.calibration_loader(200, 100), criterion="screening", **FAST
    )
    scores.save(tmp_path / "s.pt")
    back = FairScores.load(tmp_path / "s.pt")
    assert type(back) is ScreeningScores  # the class that wrote the state reads it back
    for field in ("f_statistic", "filter_norm", "input_f_statistic"):
        assert getattr(back, field).keys() == getattr(scores, field).keys()
        for name, value in getattr(scores, field).items():
            assert torch.equal(getattr(back, field)[name], value)
    old = scores.state_dict()
    for key in ("f_statistic", "filter_norm", "input_f_statistic", "kind"):
        del old[key]  # written before the screening criterion existed
    loaded = FairScores.from_state_dict(old)
    assert type(loaded) is FairScores and torch.equal(loaded.utilization["head.0"], scores.utilization["head.0"])


# ------------------------------------------------------------------ structured
@pytest.fixture(scope="module")
def lenet():
    """LeNet-300-100 (zoo.mlp on 8x8 digits) trained briefly, its state, and screening scores."""
    with helpers.single_thread():
        torch.manual_seed(0)
        model = helpers.train(zoo.mlp(in_features=64), epochs=6)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        batches = helpers.calibration_loader(400, 100)
        return state, batches, compute_scores(model, batches, criterion="screening", **FAST)


def fresh(state):
    model = zoo.mlp(in_features=64)
    model.load_state_dict(state)
    return model.eval()


def removed_are_lowest(result, ranked):
    for name, removed in result.removed.items():
        order = torch.sort(ranked[name].double(), stable=True).indices
        assert sorted(removed) == sorted(order[: len(removed)].tolist()), name


def test_structured_global_reaches_the_target_and_removes_the_lowest_scores(lenet):
    state, batches, scores = lenet
    result = prune(
        fresh(state),
        batches,
        criterion="screening",
        target_params=0.5,
        scores=scores,
        example_inputs=batches[0][0][:1],
        **FAST,
        ranking="utilization",
    )
    assert 0.45 < result.report.params_ratio <= 0.5
    assert result.report.options["criterion"] == "screening" and result.report.options["allocation"] == "global"
    assert result.report.options["screening_weight"] == 0.5
    ranked = screening_scores(scores, 0.5)
    removed_are_lowest(result, ranked)
    # one threshold for all layers: every removed unit scores below every kept one (scores have layer mean 1)
    gone = torch.cat([ranked[n][torch.tensor(i)] for n, i in result.removed.items()])
    kept = torch.cat(
        [ranked[n][[j for j in range(ranked[n].numel()) if j not in set(result.removed.get(n, []))]] for n in ranked]
    )
    assert gone.max() < kept.min()


def test_structured_uniform_ratio_and_target(lenet):
    state, batches, scores = lenet
    ranked = screening_scores(scores, 0.7)
    by_ratio = prune(
        fresh(state),
        batches,
        criterion="screening",
        screening_weight=0.7,
        ratio=0.3,
        scores=scores,
        example_inputs=batches[0][0][:1],
        **FAST,
        ranking="utilization",
    )
    assert by_ratio.report.options["allocation"] == "uniform"  # "auto" with a ratio
    assert {n: len(i) for n, i in by_ratio.removed.items()} == {"features.1": 90, "features.3": 30}
    removed_are_lowest(by_ratio, ranked)
    by_target = prune(
        fresh(state),
        batches,
        criterion="screening",
        screening_weight=0.7,
        allocation="uniform",
        target_macs=0.6,
        scores=scores,
        example_inputs=batches[0][0][:1],
        **FAST,
        ranking="utilization",
    )
    assert 0.55 < by_target.report.macs_ratio <= 0.6
    counts = {n: len(i) for n, i in by_target.removed.items()}
    assert counts == {
        "features.1": int(by_target.tolerance * 300 + 1e-9),
        "features.3": int(by_target.tolerance * 100 + 1e-9),
    }
    removed_are_lowest(by_target, ranked)


def test_structured_tod_uses_the_screening_score_with_r_as_protection(lenet):
    state, batches, scores = lenet
    ranked = screening_scores(scores, 0.5)
    result = prune(
        fresh(state),
        batches,
        criterion="screening",
        allocation="tod",
        tolerance=0.2,
        scores=scores,
        example_inputs=batches[0][0][:1],
        **FAST,
        ranking="utilization",
    )
    for name in ("features.1", "features.3"):
        k = tolerance_count(ranked[name], scores.reconstruction[name], 0.2)
        assert len(result.removed.get(name, [])) == result.counts[name] == k
    assert result.report.tolerance == 0.2 and sum(result.counts.values()) > 0
    removed_are_lowest(result, ranked)


def test_structured_screening_on_a_bn_cnn_with_the_full_pipeline():
    model, batches = helpers.trained_small_cnn(), helpers.calibration_loader(300, 100)
    result = prune(model, batches, criterion="screening", target_macs=0.5, **FAST)
    assert result.report.macs_ratio <= 0.5 and result.report.recalibrated and result.report.refitted
    assert result.scores.f_statistic and model(helpers.example_inputs(3)).shape == (3, 10)


def test_criterion_fair_is_the_default_bitwise(lenet):
    state, batches, _ = lenet
    model, batches = helpers.trained_small_cnn(), helpers.calibration_loader(300, 100)
    for kwargs in ({"target_macs": 0.5}, {"tolerance": 0.1, "allocation": "tod"}):
        default = prune(copy.deepcopy(model), batches, **kwargs, **FAST)
        fair = prune(copy.deepcopy(model), batches, criterion="fair", screening_weight=0.9, **kwargs, **FAST)
        assert default.removed == fair.removed and default.counts == fair.counts and default.removed
        assert default.tolerance == fair.tolerance
        for name in default.scores.layers:
            assert torch.equal(default.scores.utilization[name], fair.scores.utilization[name])
            assert torch.equal(default.scores.reconstruction[name], fair.scores.reconstruction[name])
        for key, value in default.model.state_dict().items():
            assert torch.equal(value, fair.model.state_dict()[key]), key
        assert fair.report.options["criterion"] == "fair"
        assert type(fair.scores) is FairScores  # nothing extra collected for FAIR


# ------------------------------------------------------------------ unstructured
@pytest.mark.parametrize("allocation", ["global", "layer"])
def test_unstructured_masks_are_exact_lowest_and_permanent(lenet, allocation, tmp_path):
    state, batches, scores = lenet
    model = fresh(state)
    params = dict(model.named_parameters())
    macs_before = measure(model, batches[0][0][:1])[0]
    result = prune_connections(
        model, batches, sparsity=0.7, allocation=allocation, screening_weight=0.4, include_output=True, **FAST
    )
    layers = {"features.1": model.features[1], "features.3": model.features[3], "classifier": model.classifier}
    total = sum(m.weight.numel() for m in layers.values())
    zeros = {n: int((m.weight == 0).sum()) for n, m in layers.items()}
    if allocation == "global":
        assert sum(zeros.values()) == int(0.7 * total)
    else:
        assert zeros == {n: int(0.7 * m.weight.numel() + 1e-9) for n, m in layers.items()}
    assert result.report.weight_sparsity == pytest.approx(sum(zeros.values()) / total)
    assert result.report.removed == sum(zeros.values()) and result.report.macs == macs_before
    assert "MACs unchanged" in str(result.report)
    # the lowest connection scores went (original weights: the score uses |w| before pruning)
    original = fresh(state)
    per_layer = {
        n: connection_scores(dict(original.named_modules())[n], scores.input_f_statistic[n], 0.4) for n in layers
    }
    for name, module in layers.items():
        assert torch.equal(module.weight == 0, ~result.masks[name])
        if allocation == "layer":
            assert per_layer[name][~result.masks[name]].max() <= per_layer[name][result.masks[name]].min()
    if allocation == "global":
        gone = torch.cat([per_layer[n][~result.masks[n]] for n in layers])
        kept = torch.cat([per_layer[n][result.masks[n]] for n in layers])
        assert gone.max() <= kept.min()
    # permanent: the same parameters, no masks or parametrizations, plain state_dict
    assert dict(model.named_parameters()) == params
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == set(fresh(state).state_dict())
    torch.save(model.state_dict(), tmp_path / "sparse.pt")
    reloaded = fresh(state)
    reloaded.load_state_dict(torch.load(tmp_path / "sparse.pt", weights_only=True))
    x = helpers.example_inputs(5)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x)) and torch.isfinite(model(x)).all()


def test_unstructured_leaves_the_output_layer_dense_by_default(lenet):
    state, batches, _ = lenet
    model = fresh(state)
    classifier = model.classifier.weight.detach().clone()
    result = prune_connections(model, batches, sparsity=0.8, **FAST)
    assert torch.equal(model.classifier.weight, classifier) and "classifier" not in result.masks
    hidden = [model.features[1].weight, model.features[3].weight]
    assert sum(int((w == 0).sum()) for w in hidden) == int(0.8 * sum(w.numel() for w in hidden))


def test_unstructured_with_precomputed_scores_and_a_copy(lenet):
    state, batches, scores = lenet
    model = fresh(state)
    result = prune_connections(model, scores=scores, sparsity=0.5, inplace=False, ignored_layers=["classifier"])
    assert torch.equal(model.features[1].weight, fresh(state).features[1].weight)  # untouched
    assert [row.name for row in result.report.layers] == ["features.1", "features.3"]
    assert not (result.model.classifier.weight == 0).any() and result.report.macs is None


# ------------------------------------------------------------------ bad options
@pytest.mark.parametrize(
    "kwargs",
    [
        {"criterion": "anova"},
        {"criterion": "screening", "screening_weight": 1.5},
        {"criterion": "screening", "screening_weight": -0.1},
        {"screening_weight": True},
        {"screening_weight": "0.5"},
        {"ratio": 1.0},
        {"ratio": -0.2},
        {"ratio": 0.3, "allocation": "tod"},
        {"allocation": "uniform"},
        {"ratio": 0.3, "target_macs": 0.5},
        {"ratio": True},
    ],
)
def test_bad_screening_options_are_refused_before_anything_changes(lenet, kwargs):
    state, batches, _ = lenet
    model = fresh(state)
    with pytest.raises(ValueError):
        prune(model, batches, **kwargs)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_screening_needs_scores_with_screening_statistics(lenet):
    state, batches, _ = lenet
    model = fresh(state)
    plain = compute_scores(model, batches, **FAST)
    with pytest.raises(ValueError, match="criterion='screening'"):
        prune(
            model, scores=plain, example_inputs=batches[0][0][:1], criterion="screening", target_params=0.5, refit=False
        )
    with pytest.raises(ValueError, match="criterion='screening'"):
        prune_connections(model, scores=plain, sparsity=0.5)
    for kwargs in (
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"sparsity": 0.5, "allocation": "uniform"},
        {"sparsity": 0.5, "screening_weight": 2},
    ):
        with pytest.raises(ValueError):
            prune_connections(model, batches, **kwargs)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_connection_config_gives_the_same_masks_as_keywords(lenet):
    state, batches, _ = lenet
    options = dict(sparsity=0.6, allocation="layer", screening_weight=0.3, ignored_layers=["features.1"], **FAST)
    by_keywords = prune_connections(fresh(state), batches, **options)
    config = ConnectionConfig(**options)
    by_config = prune_connections(fresh(state), batches, config)
    # keywords override the config's fields
    overridden = prune_connections(
        fresh(state),
        batches,
        ConnectionConfig(sparsity=0.2, **FAST),
        sparsity=0.6,
        allocation="layer",
        screening_weight=0.3,
        ignored_layers=["features.1"],
    )
    for result in (by_config, overridden):
        assert result.masks.keys() == by_keywords.masks.keys() == {"features.3"}
        for name, mask in by_keywords.masks.items():
            assert torch.equal(result.masks[name], mask), name
        assert result.config == config and result.report.options == by_keywords.report.options
    assert by_keywords.config == config


def test_connection_options_are_checked_before_the_model_changes(lenet):
    state, batches, _ = lenet
    model = fresh(state)
    with pytest.raises(
        TypeError, match=r"'samples_per_clas' \(did you mean 'samples_per_class'\?\).*sparsity, allocation"
    ):
        prune_connections(model, batches, sparsity=0.5, samples_per_clas=2)
    with pytest.raises(TypeError, match=r"did you mean 'inplace'"):
        prune_connections(model, batches, sparsity=0.5, in_place=False)
    with pytest.raises(ValueError, match=r"^sparsity .*\[0, 1\), got 1.5"):
        prune_connections(model, batches, sparsity=1.5)
    with pytest.raises(ValueError, match=r"^sparsity is required"):
        prune_connections(model, batches, **FAST)
    with pytest.raises(ValueError, match=r"^sparsity"):
        prune_connections(model, batches, ConnectionConfig(sparsity=0.5), sparsity=1.5)
    for kwargs, name in (
        ({"samples_per_class": 0}, "samples_per_class"),
        ({"num_projections": 0}, "num_projections"),
        ({"observe": "inputs"}, "observe"),
        ({"memory_budget": "lots"}, "memory_budget"),
        ({"max_batches": 0}, "max_batches"),
        ({"include_output": "yes"}, "include_output"),
        ({"ignored_layers": [3]}, "ignored_layers"),
        ({"allocation": "uniform"}, "allocation"),
    ):
        with pytest.raises(ValueError, match=f"^{name}"):
            prune_connections(model, batches, sparsity=0.5, **kwargs)
    with pytest.raises(TypeError, match="ConnectionConfig"):
        prune_connections(model, batches, {"sparsity": 0.5})
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_callback_passes_screening_options_through():
    callback_module = pytest.importorskip("lightning_fair.lightning.callback")
    callback = callback_module.FairPruneCallback(criterion="screening", screening_weight=0.25, ratio=0.2)
    assert callback.config.criterion == "screening" and callback.config.screening_weight == 0.25
    for bad in ({"criterion": "x"}, {"screening_weight": 3}, {"ratio": 0.2, "allocation": "tod"}):
        with pytest.raises(ValueError):
            callback_module.FairPruneCallback(**bad)


def test_callback_prunes_with_screening_in_a_trainer(tmp_path):
    lh = pytest.importorskip("lightning_helpers")
    model, dm = lh.classifier(), lh.datamodule()
    callback = lh.FairPruneCallback(prune_at=0, criterion="screening", target_macs=0.6, **lh.FAST)
    lh.trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(model, datamodule=dm)
    result = callback.last_result
    assert result.report.options["criterion"] == "screening" and result.report.macs_ratio <= 0.6
    assert result.scores.f_statistic and callback.events[0]["report"]["options"]["criterion"] == "screening"


# ------------------------------------------------------------------ accuracy sanity check
def test_screening_beats_random_removal_on_held_out_digits():
    """LeNet-300-100 on digits, one-shot at 50% kept params, the same uniform per-layer counts and
    pipeline: screening-ranked removal is clearly ahead of random removal, for 3 trained models."""
    _, _, x_test, y_test = helpers.digits()
    batches = helpers.calibration_loader(400, 100)
    for seed in range(3):
        torch.manual_seed(seed)
        trained = helpers.train(zoo.mlp(in_features=64), epochs=12, seed=seed)
        # refit=False: the ranking is under test (the refit lifts random removal too)
        options = dict(allocation="uniform", target_params=0.5, example_inputs=batches[0][0][:1], refit=False, **FAST)
        scores = compute_scores(trained, batches, criterion="screening", **FAST)
        screened = prune(copy.deepcopy(trained), batches, criterion="screening", scores=scores, **options)
        accuracy = helpers.accuracy(screened.model, x_test, y_test)
        random = [
            helpers.accuracy(
                prune(copy.deepcopy(trained), batches, ranking="random", seed=s, scores=scores, **options).model,
                x_test,
                y_test,
            )
            for s in range(3)
        ]
        assert screened.report.params_ratio <= 0.5
        assert accuracy >= max(random) + 0.02, (seed, accuracy, random)
        assert accuracy >= 0.9, (seed, accuracy)


def test_cli_flags_reach_the_callback(monkeypatch):
    pytest.importorskip("jsonargparse")
    import sys

    from lightning_fair.lightning.callback import FairPruneCallback
    from lightning_fair.lightning.cli import FairCLI

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    cli = FairCLI(
        args=[
            "--model=lightning_fair.demos.digits.ImageClassifier",
            "--model.width=8",
            "--data=lightning_fair.demos.digits.DigitsDataModule",
            "--trainer.logger=false",
            "--prune.criterion=screening",
            "--prune.screening_weight=0.3",
            "--prune.ratio=0.2",
        ],
        run=False,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert {k: getattr(callback.config, k) for k in ("criterion", "screening_weight", "ratio")} == {
        "criterion": "screening",
        "screening_weight": 0.3,
        "ratio": 0.2,
    }


def test_screening_memory_is_k_by_c_and_in_the_estimate():
    from lightning_fair.collect.collector import StatisticsCollector
    from lightning_fair.collect.memory import estimate_memory
    from lightning_fair.units.channels import consumer_of

    model, batches = helpers.trained_small_cnn(), helpers.calibration_loader(300, 100)
    collector = StatisticsCollector(model, screening=True, **FAST).run(batches)
    # the scored layers (the entries observing layer inputs for U carry no screening statistics)
    layers = [s for name, s in collector.layers.items() if consumer_of(name) is None]
    held = collector.screening_moments.nbytes
    estimate = estimate_memory(model, helpers.example_inputs(1), screening=True, **FAST)
    assert held == estimate.screening_bytes == collector.estimate.screening_bytes > 0
    units = sum(s.num_units for s in layers)
    assert held == 16 * 10 * (units + 1 + 16 + 16 + 32 + 64) + 8 * 10 * (len(layers) + 5)  # K * (C + C_in)
    scores = compute_scores(model, batches, criterion="screening", **FAST)
    assert scores.config["memory_estimate"] == estimate.total_bytes


def test_grouped_and_transposed_convs_map_connections_and_filters_to_the_right_channels():
    from lightning_fair.scoring.screening import filter_norms

    torch.manual_seed(0)
    f_in = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)  # F of the 4 input channels, mean 3
    conv = nn.Conv2d(4, 6, 3, groups=2)  # weight [6, 2, 3, 3]: output o (group o // 3) reads inputs 2 * (o // 3) + j
    scores = connection_scores(conv, f_in, 1.0)
    for o in range(6):
        for j in range(2):
            assert torch.all(scores[o, j] == f_in[2 * (o // 3) + j] / 3)
    transposed = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight [4, 3, 3, 3]: row i is input channel i
    scores = connection_scores(transposed, f_in, 1.0)
    for i in range(4):
        assert torch.all(scores[i] == f_in[i] / 3)
    expected = torch.stack(
        [transposed.weight.detach()[2 * (o // 3) : 2 * (o // 3) + 2, o % 3].double().norm() for o in range(6)]
    )
    torch.testing.assert_close(filter_norms(transposed), expected)
    torch.testing.assert_close(filter_norms(conv), conv.weight.detach().double().flatten(1).norm(dim=1))
    magnitude = connection_scores(conv, f_in, 0.0)
    torch.testing.assert_close(
        magnitude, conv.weight.detach().double().abs() / conv.weight.detach().double().abs().mean()
    )
