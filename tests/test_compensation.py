"""Mean-replacement compensation: the folded bias change equals a brute-force computation."""

from __future__ import annotations

import copy

import helpers
import pytest
import torch
from helpers import FAST
from torch import nn

from lightning_fair import compute_scores, prune
from lightning_fair.demos import zoo


def _inputs_seen(model: nn.Module, batches, names):
    """``{layer: every input it received over the batches, concatenated}`` (original model, eval)."""
    seen = {n: [] for n in names}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_pre_hook(lambda m, args, n=n: seen[n].append(args[0].detach().double()))
        for n in names
    ]
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def _brute_shift(module: nn.Module, inputs: torch.Tensor, kept_in: torch.Tensor) -> torch.Tensor:
    """Mean over samples and output positions of layer(x) - layer(x with removed inputs zeroed),
    in float64, with the layer's original weights (no bias: it cancels)."""
    layer = copy.deepcopy(module).double()
    if layer.bias is not None:
        layer.bias = None
    zeroed = torch.zeros_like(inputs)
    dim = inputs.dim() - 1 if isinstance(layer, nn.Linear) else 1
    zeroed.index_copy_(dim, kept_in, inputs.index_select(dim, kept_in))
    with torch.no_grad():
        diff = layer(inputs) - layer(zeroed)
    if isinstance(layer, nn.Linear):
        return diff.reshape(-1, diff.shape[-1]).mean(0)
    return diff.transpose(0, 1).flatten(1).mean(1)


def biased_cnn() -> nn.Module:
    """Convs with biases and zero padding, no norm: conv -> conv -> flatten -> linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def trained(model: nn.Module) -> nn.Module:
    return helpers.train(model, epochs=4)


@pytest.mark.parametrize("build", ["mlp", "biased_cnn"])
def test_bias_change_equals_brute_force(build):
    model = trained(zoo.mlp(in_features=64, hidden=(48, 32)) if build == "mlp" else biased_cnn())
    original = copy.deepcopy(model)
    calibration = helpers.calibration_loader(300, 100)
    result = prune(model, calibration, tolerance=0.3, compensate=True, refit=False, recalibrate=False, **FAST)
    consumers = [n for n, sides in result.kept.items() if "in" in sides]
    assert consumers and set(result.report.compensated) == set(consumers)
    seen = _inputs_seen(original, calibration, consumers)
    before, after = dict(original.named_modules()), dict(model.named_modules())
    for name in consumers:
        sides = result.kept[name]
        assert result.report.compensated[name] == seen[name].shape[1 if before[name].weight.dim() > 2 else -1] - len(
            sides["in"]
        )
        expected = _brute_shift(before[name], seen[name], sides["in"])
        if "out" in sides:
            expected = expected[sides["out"]]
        old_bias = before[name].bias.detach().double()
        if "out" in sides:
            old_bias = old_bias[sides["out"]]
        change = after[name].bias.detach().double() - old_bias
        assert expected.abs().max() > 1e-3, "a trivial shift would not test anything"
        torch.testing.assert_close(change, expected, rtol=1e-4, atol=1e-5)


def test_mlp_pruned_equals_mean_replaced_original():
    """End to end on an MLP: the pruned model computes what the original computes with every
    removed unit's activation replaced by its calibration mean (exact: all consumers are Linear)."""
    model = trained(zoo.mlp(in_features=64, hidden=(48, 32)))
    original = copy.deepcopy(model).eval()
    calibration = helpers.calibration_loader(300, 100)
    result = prune(model, calibration, tolerance=0.3, compensate=True, refit=False, recalibrate=False, **FAST)
    assert set(result.removed) == {"features.1", "features.3"}
    x = helpers.digits()[2][:50]
    means = compute_scores(original, calibration, **FAST).input_means
    modules = dict(original.named_modules())
    consumer_of = {"features.1": "features.3", "features.3": "classifier"}
    handles = []
    for layer, idxs in result.removed.items():
        consumer = consumer_of[layer]

        def replace(module, args, idxs=idxs, mean=means[consumer]):
            inputs = args[0].clone()
            inputs[:, idxs] = mean[idxs].to(inputs)
            return (inputs,)

        handles.append(modules[consumer].register_forward_pre_hook(replace))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), original(x), rtol=1e-4, atol=1e-4)
        for h in handles:  # sanity: the replacement matters, plain zeroing is something else
            h.remove()
        assert not torch.allclose(model(x), original(x), rtol=1e-2, atol=1e-2)


def test_bias_free_conv_shifts_the_following_batchnorm():
    model = helpers.trained_small_cnn()
    original = copy.deepcopy(model)
    calibration = helpers.calibration_loader(300, 100)
    result = prune(model, calibration, tolerance=0.3, compensate=True, refit=False, recalibrate=False, **FAST)
    name = "features.1.0"  # bias-free conv -> BatchNorm2d
    assert before_bias_is_none(original, name) and name in result.report.compensated
    sides = result.kept[name]
    seen = _inputs_seen(original, calibration, [name])[name]
    expected = _brute_shift(dict(original.named_modules())[name], seen, sides["in"])[sides["out"]]
    old_mean = dict(original.named_modules())["features.1.1"].running_mean.double()[sides["out"]]
    new_mean = dict(model.named_modules())["features.1.1"].running_mean.double()
    torch.testing.assert_close(old_mean - new_mean, expected, rtol=1e-4, atol=1e-5)


def before_bias_is_none(model, name):
    return dict(model.named_modules())[name].bias is None


def test_no_place_to_fold_is_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10, bias=False))
    model = trained(model)
    result = prune(model, helpers.calibration_loader(200, 100), tolerance=0.4, compensate=True, refit=False, **FAST)
    assert "1" in result.removed and "3" not in result.report.compensated
    assert any("3: no bias and no BatchNorm right after it" in note for note in result.report.notes)
    assert "mean replacement" in str(result.report)


def test_compensation_off_leaves_biases_alone():
    model = trained(zoo.mlp(in_features=64, hidden=(48, 32)))
    original = copy.deepcopy(model)
    result = prune(model, helpers.calibration_loader(300, 100), tolerance=0.3, compensate=False, refit=False, **FAST)
    assert not result.report.compensated
    torch.testing.assert_close(model.classifier.bias, original.classifier.bias)


def test_failure_after_compensation_leaves_the_model_as_it_was(monkeypatch):
    model = helpers.trained_small_cnn()
    original = copy.deepcopy(model)
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    import lightning_fair.pipeline.oneshot as oneshot

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("injected failure during BatchNorm re-estimation")

    monkeypatch.setattr(oneshot, "recalibrate_bn", broken)
    with pytest.raises(RuntimeError, match="injected"):
        prune(
            model,
            helpers.calibration_loader(200, 100),
            tolerance=0.3,
            compensate=True,
            refit=False,
            recalibrate=True,
            **FAST,
        )
    assert calls
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(b is buffers[n] for n, b in model.named_buffers())
    for (n, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), n
