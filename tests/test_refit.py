"""The least-squares refit of the consumers (``refit=True``): each refitted layer equals a direct
least-squares solve on the calibration activations, lowers its reconstruction error below mean
replacement's, keeps the shapes, leaves grouped convolutions to mean replacement with a note, works
through depthwise convolutions and a Lightning Trainer, and a failure leaves the model as it was."""

from __future__ import annotations

import copy

import helpers
import pytest
import torch
import torch.nn.functional as F
from helpers import FAST
from torch import nn

from lightning_fair import PruneConfig, compute_scores, prune
from lightning_fair.demos import zoo
from lightning_fair.repair import refit as refit_module


def _io_seen(model: nn.Module, batches, names):
    """``{layer: (inputs, outputs)}`` over the batches, float64, the model in eval mode."""
    seen = {n: ([], []) for n in names}
    modules = dict(model.named_modules())

    def hook(module, args, output, n):
        seen[n][0].append(args[0].detach().double())
        seen[n][1].append(output.detach().double())

    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in names]
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return {n: (torch.cat(i), torch.cat(o)) for n, (i, o) in seen.items()}


def _design(module: nn.Module, x: torch.Tensor, kept_in: torch.Tensor) -> torch.Tensor:
    """Rows of kept inputs (convs: unfolded patches), float64, built independently of the package."""
    if isinstance(module, nn.Linear):
        return x[..., kept_in].reshape(-1, len(kept_in))
    patches = F.unfold(
        x[:, kept_in], module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
    )
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _targets(module: nn.Module, original: nn.Module, y: torch.Tensor, kept_out) -> torch.Tensor:
    if original.bias is not None:
        shape = (1, -1) + (1,) * (y.dim() - 2) if not isinstance(module, nn.Linear) else (-1,)
        y = y - original.bias.double().view(*shape)
    if isinstance(module, nn.Linear):
        y = y.reshape(-1, y.shape[-1])
        return y if kept_out is None else y[:, kept_out]
    y = y if kept_out is None else y[:, kept_out]
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def _ridge_solve(x: torch.Tensor, y: torch.Tensor, ridge: float):
    """Direct solve of the centred ridge problem with an intercept, by ``torch.linalg.lstsq`` on the
    augmented system ``[X - mean; sqrt(lambda) I] W = [Y - mean; 0]`` (not the normal equations)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    lam = ridge * xc.pow(2).mean(0).mean()
    d = x.shape[1]
    a = torch.cat([xc, (lam * x.shape[0]).sqrt() * torch.eye(d, dtype=x.dtype)])
    b = torch.cat([yc, torch.zeros(d, y.shape[1], dtype=y.dtype)])
    w = torch.linalg.lstsq(a, b).solution  # [D, O]
    return w.T, my - mx @ w


def biased_cnn() -> nn.Module:
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


@pytest.mark.parametrize("build", ["biased_cnn", "mlp"])
def test_refit_equals_a_direct_least_squares_solve_and_beats_mean_replacement(build):
    model = helpers.train(biased_cnn() if build == "biased_cnn" else zoo.mlp(in_features=64, hidden=(48, 32)), epochs=3)
    calibration = helpers.calibration_loader(300, 100)
    scores = compute_scores(model, calibration, **FAST)
    original = copy.deepcopy(model)
    plain = prune(copy.deepcopy(model), calibration, tolerance=0.3, scores=scores, recalibrate=False, refit=False)
    result = prune(model, calibration, tolerance=0.3, scores=scores, recalibrate=False, refit=True)
    consumers = [n for n, sides in result.kept.items() if "in" in sides]
    assert consumers and set(result.report.refitted) == set(consumers)
    assert not result.report.compensated  # every consumer refitted, none left to mean replacement
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in plain.model.parameters()]
    seen = _io_seen(original, calibration, consumers)
    before, after, mean_replaced = (dict(m.named_modules()) for m in (original, model, plain.model))
    for name in consumers:
        x, y = seen[name]
        sides = result.kept[name]
        rows = _design(before[name], x, sides["in"])
        target = _targets(after[name], before[name], y, sides.get("out"))
        weight, shift = _ridge_solve(rows, target, refit_module.RIDGE)
        new = after[name]
        torch.testing.assert_close(new.weight.double().reshape(weight.shape), weight, rtol=2e-3, atol=2e-4)
        bias = before[name].bias.double()
        bias = bias if sides.get("out") is None else bias[sides["out"]]
        torch.testing.assert_close(new.bias.double(), bias + shift, rtol=2e-3, atol=2e-4)

        def error(layer):
            w = layer.weight.double().reshape(layer.weight.shape[0], -1)
            return (rows @ w.T + (layer.bias.double() - bias) - target).pow(2).mean()

        assert error(new) < error(mean_replaced[name]), name


def test_refit_through_batchnorm_and_depthwise_convolutions_keeps_shapes_and_helps():
    """MobileNetV2 blocks: bias-free convs followed by BatchNorm take the intercept in the running
    mean, depthwise convs lose outputs with inputs and are not refitted; without BatchNorm
    re-estimation (which would measure the statistics anew either way) the network's output moves
    less from the unpruned one than with mean replacement alone."""
    model = helpers.train(zoo.mobilenet_v2(width_mult=0.5), epochs=2)
    calibration = helpers.calibration_loader(400, 100)
    scores = compute_scores(model, calibration, **FAST)
    x = helpers.digits()[2][:200]
    with torch.no_grad():
        reference = model.eval()(x)
    outputs, shapes = {}, {}
    for refit in (False, True):
        result = prune(
            copy.deepcopy(model), calibration, target_macs=0.5, scores=scores, refit=refit, recalibrate=False
        )
        shapes[refit] = [tuple(p.shape) for p in result.model.parameters()]
        with torch.no_grad():
            outputs[refit] = result.model.eval()(x)
        if refit:
            modules = dict(result.model.named_modules())
            assert result.report.refitted
            assert not any(modules[n].groups > 1 for n in result.report.refitted if hasattr(modules[n], "groups"))
            assert "least-squares refit" in str(result.report)
    assert shapes[True] == shapes[False]
    assert (outputs[True] - reference).pow(2).mean() < (outputs[False] - reference).pow(2).mean()


class GroupedConsumer(nn.Module):
    """A grouped (not depthwise) conv reading a pruned conv's channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.grouped(x))
        return self.head(x.mean((2, 3)))


def test_grouped_convolution_is_left_to_mean_replacement_with_a_note():
    torch.manual_seed(0)
    model = helpers.train(GroupedConsumer(), epochs=2)
    result = prune(model, helpers.calibration_loader(200, 100), ratio=0.25, refit=True, compensate=True, **FAST)
    assert "grouped" in result.removed or "conv1" in result.removed
    assert "grouped" not in result.report.refitted
    assert any("grouped convolution" in n and "mean replacement" in n for n in result.report.notes)
    assert "grouped" in result.report.compensated
    assert result.model(helpers.example_inputs()).shape == (2, 10)


def test_refit_statistics_do_not_grow_with_batches():
    model = biased_cnn().eval()
    kept = {"2": {"in": torch.arange(6), "out": torch.arange(16)}}
    targets, _ = refit_module.refit_targets(model, kept, {})
    few = refit_module.collect_refit_statistics(model, targets, helpers.calibration_loader(100, 50))
    many = refit_module.collect_refit_statistics(model, targets, helpers.calibration_loader(400, 50))
    assert {k: v.xx.shape for k, v in few.items()} == {k: v.xx.shape for k, v in many.items()}
    assert int(many["2"].rows) == 4 * int(few["2"].rows)
    nbytes = sum(t.numel() * t.element_size() for s in many.values() for t in vars(s).values())
    assert nbytes == refit_module.refit_bytes(model, targets)


def test_conv1d_and_sequence_linear_consumers_are_refitted():
    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 12, 5, padding=2)
            self.mix = nn.Conv1d(12, 12, 3, padding="same")
            self.token = nn.Linear(12, 12)
            self.head = nn.Linear(12, 10)

        def forward(self, x):  # x: [N, 1, 8, 8] digits as a length-64 sequence
            h = F.relu(self.conv(x.flatten(1).unsqueeze(1)))
            h = F.relu(self.mix(h))
            return self.head(F.relu(self.token(h.transpose(1, 2))).mean(1))

    torch.manual_seed(0)
    model = helpers.train(Sequence(), epochs=3)
    result = prune(model, helpers.calibration_loader(200, 100), ratio=0.3, refit=True, **FAST)
    assert {"mix", "token"} <= set(result.report.refitted) | {n for n in result.kept if "in" not in result.kept[n]}
    assert result.model(helpers.example_inputs()).shape == (2, 10)


def test_refit_options_are_checked_before_anything_changes():
    model = helpers.trained_small_cnn()
    scores = compute_scores(model, helpers.calibration_loader(200, 100), **FAST)
    with pytest.raises(ValueError, match="refit must be True, False or None"):
        PruneConfig(refit="yes")
    assert PruneConfig.paper().resolved().refit is False
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"refit=True \(the default pipeline's\) fits the consumers"):
        prune(
            model,
            None,
            tolerance=0.3,
            scores=scores,
            example_inputs=helpers.example_inputs(),
            refit=True,
            recalibrate=False,
        )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_failure_after_the_refit_leaves_the_model_as_it_was(monkeypatch):
    model = helpers.trained_small_cnn()
    original = copy.deepcopy(model)
    params = {n: p for n, p in model.named_parameters()}
    import lightning_fair.pipeline.oneshot as oneshot

    real, calls = oneshot.refit_consumers, []

    def refit_then_fail(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        raise RuntimeError("injected failure after the refit")

    monkeypatch.setattr(oneshot, "refit_consumers", refit_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        prune(model, helpers.calibration_loader(200, 100), tolerance=0.3, refit=True, **FAST)
    assert calls and calls[0][0]  # the refit ran and changed layers before the failure
    assert all(p is params[n] for n, p in model.named_parameters())
    for (n, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), n


def test_callback_refits_during_fit_and_training_goes_on(tmp_path):
    """A real Trainer: FairPruneCallback(refit=True) prunes at epoch 0 on the validation batches,
    the report names the refitted layers, and the next epoch trains the refitted weights."""
    pytest.importorskip("lightning")
    from lightning_helpers import FAST as CALLBACK_FAST
    from lightning_helpers import classifier, datamodule, trainer

    from lightning_fair import FairPruneCallback

    callback = FairPruneCallback(prune_at=0, target_macs=0.6, refit=True, **CALLBACK_FAST)
    model = classifier()
    trainer(tmp_path, [callback], max_epochs=2, limit_train_batches=4, limit_val_batches=2).fit(model, datamodule())
    result = callback.last_result
    assert result.config.refit is True and result.report.refitted
    assert result.report.macs_ratio <= 0.6 + 1e-9
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cli_flag(tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse")
    import sys

    from lightning_helpers import cli_callback

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    for flag, expected in (("--prune.refit=true", True), ("--prune.refit=false", False)):
        assert cli_callback(tmp_path, flag).config.refit is expected


def test_over_the_memory_budget_the_refit_gathers_in_several_passes_with_the_same_result():
    model = helpers.trained_small_cnn()
    calibration = helpers.calibration_loader(200, 100)
    scores = compute_scores(model, calibration, **FAST)
    one = prune(copy.deepcopy(model), calibration, target_macs=0.5, scores=scores, refit=True, memory_budget=None)
    several = prune(copy.deepcopy(model), calibration, target_macs=0.5, scores=scores, refit=True, memory_budget=4096)
    assert any("passes" in note for note in several.report.notes)
    assert not any("passes" in note for note in one.report.notes)
    for (name, a), (_, b) in zip(one.model.state_dict().items(), several.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_too_few_calibration_rows_leave_the_consumer_to_mean_replacement():
    """A Linear consumer with fewer than MIN_ROWS_PER_INPUT rows per kept input is not refitted
    (the fit would follow the calibration noise): a note says so and how to fix it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 96), nn.ReLU(), nn.Linear(96, 3))
    x = torch.randn(60, 8)
    batches = [(x[i : i + 20], (x[i : i + 20, 0] > 0).long() + (x[i : i + 20, 1] > 0).long()) for i in range(0, 60, 20)]
    result = prune(copy.deepcopy(model), batches, ratio=0.25, allocation="uniform", **FAST)
    assert result.model[2].in_features == 72  # 60 rows for 72 kept inputs: too few
    assert not result.report.refitted
    assert any(
        "calibration rows for 72 kept inputs" in note and "more calibration data" in note
        for note in result.report.notes
    )
