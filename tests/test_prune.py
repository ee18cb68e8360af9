"""One-shot ``lightning_fair.prune``: structural removal, guarantees and failure safety.

Real data (sklearn digits, 8x8) or seeded random weights; CPU only, no network.
"""

from __future__ import annotations

import copy
import io
import json
import math

import helpers
import pytest
import torch
import torch_pruning as tp
from torch import nn

import lightning_fair
from lightning_fair import prune, tolerance_counts
from lightning_fair.allocation.tolerance import tod_curve
from lightning_fair.demos import zoo
from lightning_fair.pipeline import oneshot
from lightning_fair.removal import planner as removal
from lightning_fair.removal.planner import DependencyPlanner

BUILDERS = {
    "mlp": lambda: zoo.mlp(in_features=64),
    "small_cnn": zoo.small_cnn,
    "vgg_bn": zoo.vgg_bn,
    "resnet_basic": lambda: zoo.resnet(block="basic"),
    "resnet_bottleneck": lambda: zoo.resnet(block="bottleneck"),
    "mobilenet_v2": zoo.mobilenet_v2,
    "densenet": zoo.densenet,
    "grouped_cnn": zoo.grouped_cnn,
    "GuardedCNN": helpers.GuardedCNN,
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def run(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def prunable(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def full_state(model):
    """Everything that must survive a failed prune, by value and by identity."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": dict(model.named_parameters()),
        "buffers": dict(model.named_buffers()),
        "modules": dict(model.named_modules()),
        "shapes": helpers.module_shapes(model),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_untouched(model, before):
    state = model.state_dict()
    assert list(state) == list(before["state"])
    for key, value in before["state"].items():
        assert state[key].shape == value.shape and torch.equal(state[key], value), key
    assert helpers.module_shapes(model) == before["shapes"]
    modules = dict(model.named_modules())
    assert list(modules) == list(before["modules"])
    assert all(modules[n] is m for n, m in before["modules"].items())
    params = dict(model.named_parameters())
    assert list(params) == list(before["params"])
    for name, param in before["params"].items():
        assert params[name] is param, f"{name} was replaced"
    for name, buffer in before["buffers"].items():
        assert dict(model.named_buffers())[name] is buffer, f"buffer {name} was replaced"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before["requires_grad"]
    assert {n: m.training for n, m in model.named_modules()} == before["training"]


# --------------------------------------------------------------------------- 1. every zoo model
@pytest.mark.parametrize("name", list(BUILDERS))
def test_prune_every_zoo_model(name):
    model = build(name)
    x = helpers.example_inputs(8)
    shapes = {n: helpers.units(m) for n, m in prunable(model).items()}
    params_before = sum(p.numel() for p in model.parameters())
    out_before = run(model, x)

    result = prune(model, helpers.calibration_loader(), tolerance=0.3, **helpers.FAST)

    assert result.model is model
    out = run(model, x)
    assert out.shape == out_before.shape and torch.isfinite(out).all()
    report = result.report
    assert report.macs_after < report.macs_before, str(report)
    assert report.params_after < report.params_before
    assert sum(p.numel() for p in model.parameters()) == report.params_after < params_before
    assert report.macs_ratio < 1 and report.params_ratio < 1
    assert result.removed, "nothing was removed"
    # the report's rows agree with the modules
    modules = dict(model.named_modules())
    assert [row.name for row in report.layers] == result.scores.layers
    for row in report.layers:
        assert row.before == shapes[row.name], row.name
        assert row.after == helpers.units(modules[row.name]), row.name
        assert 1 <= row.after <= row.before
    assert any(row.after < row.before for row in report.layers)
    # the output layer keeps its classes
    assert model.classifier.out_features == 10
    # every layer keeps at least one unit and consistent weight shapes
    for n, m in prunable(model).items():
        assert helpers.units(m) >= 1
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels and m.weight.shape[1] * m.groups == m.in_channels, n
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, n
        else:
            assert tuple(m.weight.shape) == (m.out_features, m.in_features), n
    if name == "grouped_cnn":
        grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert grouped and all(m.groups == 4 for m in grouped)
        assert any(m.out_channels < 32 for m in grouped)  # the grouped conv itself was pruned
    if name.startswith("resnet"):
        blocks = [m for m in model.modules() if isinstance(m, (zoo.BasicBlock, zoo.Bottleneck))]
        last = "bn3" if name.endswith("bottleneck") else "bn2"
        for block in blocks:  # residual adds: both branches still agree in channels
            identity_channels = block.downsample[1].num_features if block.downsample is not None else None
            if identity_channels is not None:
                assert getattr(block, last).num_features == identity_channels


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "densenet", "mobilenet_v2"])
def test_coupled_channels_are_removed_together(name):
    model = build(name)
    result = prune(model, helpers.calibration_loader(), tolerance=0.3, **helpers.FAST)
    x = helpers.example_inputs(4)
    assert run(model, x).shape == (4, 10)
    # batch norms always match the conv that feeds them
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.weight.shape == module.running_mean.shape == (module.num_features,)
    # replaying the same removal on a fresh copy reproduces it: the recorded groups are complete
    fresh = build(name, seed=1)
    graph = tp.DependencyGraph().build_dependency(fresh, example_inputs=x)
    graph.load_pruning_history(result.history)
    assert helpers.module_shapes(fresh) == helpers.module_shapes(model)


def test_removed_channels_are_exactly_the_planned_ones():
    """Pruning == zeroing the removed units' activations of the original model (nothing else moves)."""
    model = helpers.trained_small_cnn()
    original = copy.deepcopy(model)
    x = helpers.digits()[2][:64]
    result = prune(
        model,
        scores=helpers.trained_small_cnn_scores(),
        example_inputs=x[:2],
        tolerance=0.3,
        compensate=False,
        recalibrate=False,
        refit=False,
    )
    assert set(result.removed) == {"features.0.0", "features.1.0", "features.3.0", "head.0"}
    activation = {
        "features.0.0": "features.0.2",
        "features.1.0": "features.1.2",
        "features.3.0": "features.3.2",
        "head.0": "head.1",
    }
    modules = dict(original.named_modules())
    for layer, idxs in result.removed.items():

        def zero(module, args, output, idxs=idxs):
            output = output.clone()
            output[:, idxs] = 0
            return output

        modules[activation[layer]].register_forward_hook(zero)
    torch.testing.assert_close(run(model, x), run(original, x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- 2. protected layers
def test_output_layer_is_never_pruned():
    for name in ("mlp", "small_cnn", "resnet_basic"):
        model = build(name)
        result = prune(model, helpers.calibration_loader(), tolerance=1.0, **helpers.FAST)
        assert model.classifier.out_features == 10
        assert "classifier" not in result.scores.layers and "classifier" not in result.removed
        assert "classifier" not in result.counts


@pytest.mark.parametrize("by", ["name", "module"])
def test_ignored_layers_keep_their_units(by):
    model = helpers.trained_small_cnn()
    ignored = "features.0.0" if by == "name" else model.features[0][0]
    result = prune(model, helpers.calibration_loader(), tolerance=0.5, ignored_layers=[ignored], **helpers.FAST)
    assert model.features[0][0].out_channels == 16
    assert model.features[0][1].num_features == 16
    assert "features.0.0" not in result.removed and "features.0.0" not in result.counts
    assert model.features[1][0].out_channels < 16  # the others were pruned


@pytest.mark.parametrize("inplace", [True, False])
def test_ignored_layers_with_precomputed_scores(inplace):
    # scores computed without ignoring anything still name the layer: prune must protect it
    model = helpers.trained_small_cnn()
    scores = helpers.trained_small_cnn_scores()
    assert "features.0.0" in scores.layers and tolerance_counts(scores, 0.5)["features.0.0"] > 0
    result = prune(
        model,
        scores=scores,
        example_inputs=helpers.example_inputs(),
        tolerance=0.5,
        ignored_layers=["features.0.0"],
        inplace=inplace,
        recalibrate=False,
        refit=False,
    )
    assert result.model.features[0][0].out_channels == 16
    assert "features.0.0" not in result.removed
    assert result.model.features[1][0].out_channels < 16


def test_unknown_ignored_layer_raises():
    model = build("small_cnn")
    with pytest.raises(ValueError, match="ignored_layers"):
        prune(model, helpers.calibration_loader(), ignored_layers=["features.9"], **helpers.FAST)
    with pytest.raises(ValueError, match="ignored_layers"):
        prune(model, helpers.calibration_loader(), ignored_layers=[nn.Linear(2, 2)], **helpers.FAST)


# --------------------------------------------------------------------------- 3. not fx-traceable
def test_guarded_cnn_with_python_control_flow():
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(helpers.GuardedCNN())
    model = build("GuardedCNN")
    result = prune(model, helpers.calibration_loader(), tolerance=0.4, **helpers.FAST)
    assert result.report.macs_after < result.report.macs_before
    x = helpers.example_inputs(3)
    assert run(model, x).shape == (3, 10)
    # block1 and block2 are added: they stay equal in width
    assert model.block1[0].out_channels == model.block2[0].out_channels < 16
    with pytest.raises(ValueError):  # the guard still works
        model(torch.randn(1, 1, 10, 10))


# --------------------------------------------------------------------------- 4. failure safety
def _prepare_for_failure(name):
    model = build(name)
    x = helpers.example_inputs(4)
    out = run(model, x)
    model.train()
    model.features[1].eval()  # mixed flags
    for p in model.features[0].parameters():
        p.requires_grad_(False)
    scores = lightning_fair.compute_scores(model, helpers.calibration_loader(), **helpers.FAST)
    return model, x, out, scores


def _check_restored(model, before, x, out, name, scores):
    assert_untouched(model, before)
    torch.testing.assert_close(run(model, x), out, rtol=0, atol=0)
    model.train()
    model.features[1].eval()
    # a later prune works and does exactly what it does on a pristine copy
    pristine = build(name)
    pristine.load_state_dict(model.state_dict())
    a = prune(model, scores=scores, example_inputs=x, tolerance=0.3, recalibrate=False, refit=False)
    b = prune(pristine, scores=scores, example_inputs=x, tolerance=0.3, recalibrate=False, refit=False)
    assert a.removed == b.removed and a.history == b.history
    torch.testing.assert_close(run(model, x), run(pristine, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet_basic", "densenet"])
def test_failure_during_removal_leaves_model_untouched(name, monkeypatch):
    model, x, out, scores = _prepare_for_failure(name)
    before = full_state(model)
    original_apply = DependencyPlanner.apply
    seen = {}

    def apply_then_fail(self, plan, record_history=True):
        original_apply(self, plan, record_history)  # every group is pruned...
        seen["shapes"] = helpers.module_shapes(self.model)
        raise RuntimeError("injected failure")  # ...then it fails

    monkeypatch.setattr(DependencyPlanner, "apply", apply_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        prune(model, scores=scores, example_inputs=x, tolerance=0.3, recalibrate=False, refit=False)
    assert seen["shapes"] != before["shapes"], "the injected failure came before any removal"
    monkeypatch.setattr(DependencyPlanner, "apply", original_apply)
    _check_restored(model, before, x, out, name, scores)


@pytest.mark.parametrize("name", ["resnet_basic", "densenet"])
def test_failure_after_removal_leaves_model_untouched(name, monkeypatch):
    model, x, out, scores = _prepare_for_failure(name)
    before = full_state(model)
    original_measure = oneshot.measure
    calls = []

    def measure_then_fail(m, inputs):
        calls.append(helpers.module_shapes(m))
        if len(calls) == 2:  # after removal: the model is pruned by now
            raise KeyboardInterrupt
        return original_measure(m, inputs)

    monkeypatch.setattr(oneshot, "measure", measure_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prune(model, scores=scores, example_inputs=x, tolerance=0.3, recalibrate=False, refit=False)
    assert len(calls) == 2 and calls[1] != before["shapes"]
    monkeypatch.setattr(oneshot, "measure", original_measure)
    _check_restored(model, before, x, out, name, scores)


def test_failure_during_target_search_leaves_model_untouched(monkeypatch):
    """A level whose pruned model fails is out of reach (the search goes on: test_reference_blocks);
    an interruption in the middle of the search, with a trial removal applied, undoes everything."""
    model, x, out, scores = _prepare_for_failure("densenet")
    before = full_state(model)
    original_measure = removal.measure
    calls = []

    def measure_then_fail(m, inputs):
        calls.append(1)
        if len(calls) == 3:  # in the middle of the search, with a trial removal applied
            raise KeyboardInterrupt("injected failure")
        return original_measure(m, inputs)

    monkeypatch.setattr(removal, "measure", measure_then_fail)
    with pytest.raises(KeyboardInterrupt, match="injected"):
        prune(model, scores=scores, example_inputs=x, target_macs=0.8, recalibrate=False, refit=False)
    monkeypatch.setattr(removal, "measure", original_measure)
    _check_restored(model, before, x, out, "densenet", scores)


# --------------------------------------------------------------------------- 5. inplace=False
def test_inplace_false_leaves_input_untouched():
    model = build("resnet_basic")
    model.train()  # train mode: a forward would update BatchNorm statistics
    before = full_state(model)
    result = prune(model, helpers.calibration_loader(), tolerance=0.3, inplace=False, **helpers.FAST)
    assert result.model is not model
    assert result.report.macs_after < result.report.macs_before
    assert_untouched(model, before)
    assert helpers.module_shapes(result.model) != before["shapes"]
    assert not any(p is q for p in result.model.parameters() for q in model.parameters())
    assert {n: m.training for n, m in result.model.named_modules()} == before["training"]


# --------------------------------------------------------------------------- 6. targets
def _previous_candidate(scores, tolerance):
    """The largest ToD value below ``tolerance`` over every layer's curve (0 if none)."""
    values = torch.cat([tod_curve(scores.utilization[n], scores.reconstruction[n]) for n in scores.layers])
    below = values[values < tolerance - 1e-12]
    return float(below.max()) if below.numel() else 0.0


@pytest.mark.parametrize("key", ["macs", "params"])
def test_target_reaches_goal_with_least_pruning(key):
    model = helpers.trained_small_cnn()
    scores = helpers.trained_small_cnn_scores()
    x = helpers.example_inputs()

    def kept(tolerance):
        report = prune(
            copy.deepcopy(model), scores=scores, example_inputs=x, tolerance=tolerance, recalibrate=False, refit=False
        ).report
        return report.macs_ratio if key == "macs" else report.params_ratio

    least, most = kept(0.0), kept(1.0)
    assert most < least < 1.0
    for goal in (0.7, (least + most) / 2):
        result = prune(
            copy.deepcopy(model),
            scores=scores,
            example_inputs=x,
            allocation="tod",
            **{f"target_{key}": goal},
            recalibrate=False,
            refit=False,
        )
        ratio = result.report.macs_ratio if key == "macs" else result.report.params_ratio
        assert ratio <= goal + 1e-6, (goal, ratio)
        assert ratio == kept(result.tolerance)
        assert result.report.target == {key: goal} and result.report.tolerance == result.tolerance
        # the trial removals of the search leave no trace: the history replays to this model
        fresh = helpers.trained_small_cnn()
        tp.DependencyGraph().build_dependency(fresh, example_inputs=x).load_pruning_history(result.history)
        assert helpers.module_shapes(fresh) == helpers.module_shapes(result.model)
        if result.tolerance > 0:  # the next smaller tolerance would miss the goal
            assert kept(_previous_candidate(scores, result.tolerance)) > goal
            assert kept(result.tolerance - 1e-7) > goal
        else:
            assert least <= goal
    # the midpoint goal needs a positive tolerance: the search really searched
    middle = prune(
        copy.deepcopy(model),
        scores=scores,
        example_inputs=x,
        **{f"target_{key}": (least + most) / 2},
        recalibrate=False,
        refit=False,
    )
    assert middle.tolerance > 0


@pytest.mark.parametrize("key", ["macs", "params"])
def test_unreachable_target_raises_and_leaves_model_untouched(key):
    model = helpers.trained_small_cnn()
    scores = helpers.trained_small_cnn_scores()
    x = helpers.example_inputs()
    before = full_state(model)
    report = prune(
        copy.deepcopy(model), scores=scores, example_inputs=x, tolerance=1.0, recalibrate=False, refit=False
    ).report
    reachable = report.macs_ratio if key == "macs" else report.params_ratio
    assert 0 < reachable < 0.05  # at tolerance 1 every layer keeps only 1% of its units
    with pytest.raises(ValueError, match=f"target_{key}") as error:
        prune(
            model, scores=scores, example_inputs=x, **{f"target_{key}": reachable / 2}, recalibrate=False, refit=False
        )
    assert f"{reachable:.3f}" in str(error.value), str(error.value)
    assert_untouched(model, before)


# --------------------------------------------------------------------------- 7. flags
def test_frozen_parameters_stay_frozen_and_flags_are_restored():
    model = helpers.trained_small_cnn()
    model.train()
    model.head.eval()
    frozen = model.features[0]  # conv + BN of the first block
    for p in frozen.parameters():
        p.requires_grad_(False)
    old = {n: p for n, p in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    result = prune(model, helpers.calibration_loader(), tolerance=0.5, **helpers.FAST)
    assert model.features[0][0].out_channels < 16 and model.features[1][0].in_channels < 16
    replaced = [n for n, p in model.named_parameters() if p is not old[n]]
    assert "features.0.0.weight" in replaced and "features.1.0.weight" in replaced
    for name, p in model.named_parameters():
        assert p.requires_grad is not name.startswith("features.0."), name
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert result.model is model


# --------------------------------------------------------------------------- 8. accuracy on real data
def test_accuracy_sanity_on_digits():
    # One-shot pruning (no fine-tuning) of a BatchNorm CNN is sensitive to the training run:
    # across training seeds the accuracy after pruning at tolerance 0 spans roughly 0.55-0.95
    # (width 64); removing the *highest*-utilization units instead gives 0.1-0.25.
    model = helpers.trained_small_cnn(width=64, seed=4, epochs=10)
    _, _, x_test, y_test = helpers.digits()
    base = helpers.accuracy(model, x_test, y_test)
    assert base > 0.9, base
    loader = helpers.calibration_loader(800)
    scores = lightning_fair.compute_scores(model, loader, samples_per_class=32, num_projections=64)
    x = helpers.example_inputs()
    result = prune(copy.deepcopy(model), scores=scores, example_inputs=x, tolerance=0.0, recalibrate=False, refit=False)
    acc = helpers.accuracy(result.model, x_test, y_test)
    message = f"accuracy {base:.3f} -> {acc:.3f} at kept MACs {result.report.macs_ratio:.3f}\n{result.report}"
    assert result.report.macs_ratio < 0.9, message
    assert acc >= 0.7, message
    # control: the same counts removing the highest-utilization units instead
    reversed_scores = copy.deepcopy(scores)
    for name in scores.layers:
        reversed_scores.utilization[name] = -scores.utilization[name]
    worst = copy.deepcopy(model)
    planner = DependencyPlanner(worst, x, scores.layers, {scores.output_layer})
    planner.apply(planner.plan(reversed_scores, tolerance_counts(scores, 0.0)))
    acc_worst = helpers.accuracy(worst, x_test, y_test)
    assert acc > acc_worst + 0.2, f"{message}\nhighest-U removal: {acc_worst:.3f}"
    print(f"{message.splitlines()[0]}; highest-U removal {acc_worst:.3f}")


# --------------------------------------------------------------------------- 9. history
@pytest.mark.parametrize("name", ["resnet_basic", "densenet", "mobilenet_v2", "grouped_cnn"])
def test_history_is_plain_data_and_replays(name):
    model = build(name)
    result = prune(model, helpers.calibration_loader(), tolerance=0.3, **helpers.FAST)
    history = result.history
    assert history and json.loads(json.dumps(history)) == history  # plain data
    buffer = io.BytesIO()
    torch.save({"history": history, "state": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["history"] == history

    fresh = build(name, seed=123)
    x = helpers.example_inputs(4)
    graph = tp.DependencyGraph().build_dependency(fresh, example_inputs=x)
    graph.load_pruning_history(saved["history"])
    fresh.load_state_dict(saved["state"])
    torch.testing.assert_close(run(fresh, x), run(model, x), rtol=0, atol=0)


# --------------------------------------------------------------------------- 10. bad arguments
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tolerance=-0.1), "tolerance"),
        (dict(tolerance=1.5), "tolerance"),
        (dict(tolerance=float("nan")), "tolerance"),
        (dict(target_macs=0), "target_macs"),
        (dict(target_macs=1.5), "target_macs"),
        (dict(target_params=0.0), "target_params"),
        (dict(target_params=-0.5), "target_params"),
        (dict(target_macs=0.5, target_params=0.5), "target_macs or target_params"),
        (dict(ranking="foo"), "ranking"),
        (dict(group_policy="foo"), "group_policy"),
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs, match, monkeypatch):
    def fail(*args, **kw):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(oneshot, "compute_scores", fail)
    monkeypatch.setattr(oneshot, "DependencyPlanner", fail)
    monkeypatch.setattr(oneshot, "measure", fail)
    model = build("small_cnn")
    before = full_state(model)
    with pytest.raises(ValueError, match=match):
        prune(model, helpers.calibration_loader(), **kwargs)
    with pytest.raises(ValueError, match=match):  # also with precomputed scores
        prune(
            model,
            scores=helpers.trained_small_cnn_scores(),
            example_inputs=helpers.example_inputs(),
            **kwargs,
            recalibrate=False,
        )
    assert_untouched(model, before)


def test_missing_data_raises(monkeypatch):
    monkeypatch.setattr(oneshot, "compute_scores", lambda *a, **k: pytest.fail("computed scores"))
    model = build("small_cnn")
    with pytest.raises(ValueError, match="dataloader"):
        prune(model)
    with pytest.raises(ValueError, match="example_inputs"):
        prune(model, scores=helpers.trained_small_cnn_scores())
    with pytest.raises(ValueError, match="dataloader"):
        prune(model, [], **helpers.FAST)  # empty loader


def test_scores_of_another_model_raise():
    scores = helpers.trained_small_cnn_scores()
    model = build("mlp")
    with pytest.raises(ValueError, match="scores"):
        prune(model, scores=scores, example_inputs=helpers.example_inputs(), recalibrate=False, refit=False)
    assert helpers.module_shapes(model) == helpers.module_shapes(build("mlp"))


# --------------------------------------------------------------------------- 11. group policies
def test_group_policy_joint_on_resnet():
    model = build("resnet_basic")
    scores = lightning_fair.compute_scores(model, helpers.calibration_loader(), **helpers.FAST)
    x = helpers.example_inputs(4)
    results = {}
    for policy in ("min_count", "joint"):
        result = prune(
            copy.deepcopy(model),
            scores=scores,
            example_inputs=x,
            tolerance=0.3,
            group_policy=policy,
            recalibrate=False,
            refit=False,
        )
        assert run(result.model, x).shape == (4, 10)
        assert result.report.macs_after < result.report.macs_before
        results[policy] = result
    # coupled groups exist (residual adds) and the policies only differ there
    planner = DependencyPlanner(copy.deepcopy(model), x, scores.layers, {scores.output_layer})
    multi = {g.root for g in planner.groups if len(g.members) > 1 and not g.blocked}
    assert multi
    for root, idxs in results["min_count"].removed.items():
        if root not in multi:
            assert results["joint"].removed.get(root) == idxs, root
    # min_count: a coupled group removes no more than its most conservative member allows
    for group in planner.groups:
        if group.root in multi:
            allowed = min(
                tolerance_counts(scores, 0.3)[n] * group.num_channels // scores.utilization[n].numel()
                for n in group.members
            )
            assert len(results["min_count"].removed.get(group.root, [])) == allowed, group.root


# --------------------------------------------------------------------------- 12. report
def test_report_text_and_dict():
    model = build("resnet_basic")
    result = prune(model, helpers.calibration_loader(), tolerance=0.3, **helpers.FAST)
    text = str(result.report)
    for name in result.scores.layers:
        assert name in text
    assert "MACs" in text and "params" in text
    data = result.report.to_dict()
    decoded = json.loads(json.dumps(data))
    assert decoded["macs_before"] == result.report.macs_before
    assert decoded["macs_after"] == result.report.macs_after
    assert decoded["macs_ratio"] == pytest.approx(result.report.macs_ratio)
    assert [row["name"] for row in decoded["layers"]] == result.scores.layers
    assert math.isclose(decoded["tolerance"], 0.3)
