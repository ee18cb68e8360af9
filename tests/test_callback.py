"""``FairPruneCallback`` end to end inside a real ``lightning.Trainer`` (CPU, sklearn digits)."""

from __future__ import annotations

import io
import math

import lightning as L
import pytest
import torch
import torch_pruning as tp
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning_helpers import (
    CONVS,
    FAST,
    FairPruneCallback,
    assert_optimizer_matches_model,
    assert_same_optimizer,
    assert_same_state,
    classifier,
    datamodule,
    finite,
    optimizer_copy,
    read_metrics,
    seeded_fit,
    shapes,
    state_copy,
    trainer,
)
from torch import nn

import lightning_fair.lightning.callback
import lightning_fair.pipeline.oneshot
from lightning_fair.lightning.callback import PruningError
from lightning_fair.removal.planner import DependencyPlanner
from lightning_fair.units.cost import measure

TOLERANCE = 0.1


pytestmark = pytest.mark.usefixtures("seeded")


class Capturing(FairPruneCallback):
    """Records the model and optimizer just before and just after each pruning."""

    def prune_now(self, trainer, pl_module, stage="fit"):
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        before = {
            "epoch": trainer.current_epoch,
            "params": dict(pl_module.named_parameters()),
            "state": state_copy(pl_module),
            "shapes": shapes(pl_module),
            "training": {n: m.training for n, m in pl_module.named_modules()},
            "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
            "optimizer": optimizer_copy(optimizer) if optimizer is not None else None,
            "scheduler": trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None,
        }
        self.before = before
        try:
            super().prune_now(trainer, pl_module, stage)
        except BaseException as error:
            # compare now, inside the hook: nothing else has had a chance to change the model
            self.failure = {
                "error": error,
                "params": dict(pl_module.named_parameters()),
                "state": state_copy(pl_module),
                "shapes": shapes(pl_module),
            }
            if optimizer is not None:
                assert_same_optimizer(optimizer, before["optimizer"])
            raise
        self.after = {
            "training": {n: m.training for n, m in pl_module.named_modules()},
            "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
            "params": dict(pl_module.named_parameters()),
            "values": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
        }


class EpochRecorder(L.Callback):
    """Learning rate, scheduler and module shapes seen at the start/end of every training epoch."""

    def __init__(self):
        self.start, self.end = {}, {}

    def on_train_epoch_start(self, trainer, pl_module):
        config = trainer.lr_scheduler_configs[0]
        self.start[trainer.current_epoch] = {
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "scheduler": config.scheduler,
            "last_epoch": config.scheduler.last_epoch,
            "shapes": shapes(pl_module),
        }

    def on_train_epoch_end(self, trainer, pl_module):
        self.end[trainer.current_epoch] = {
            "shapes": shapes(pl_module),
            "loss": float(trainer.callback_metrics["train_loss"]),
        }


def conv_channels(model) -> dict:
    modules = dict(model.named_modules())
    return {name: modules[name].out_channels for name in CONVS}


# ------------------------------------------------------------------ 1, 2: prune mid-fit, then fine-tune
@pytest.fixture(scope="module")
def pruned_mid_fit(tmp_path_factory):
    """fit for 3 epochs, pruning at the end of epoch 1, with a CSVLogger (shared by several tests)."""
    tmp_path = tmp_path_factory.mktemp("mid_fit")
    callback, recorder = Capturing(prune_at=1, tolerance=TOLERANCE, **FAST), EpochRecorder()
    logger = CSVLogger(str(tmp_path), name="logs")
    fit, model, _ = seeded_fit(tmp_path, [callback, recorder], max_epochs=3, logger=logger)
    return {"trainer": fit, "model": model, "callback": callback, "recorder": recorder, "log_dir": logger.log_dir}


def test_prunes_at_the_chosen_epoch_and_keeps_training(pruned_mid_fit):
    fit, model, callback, recorder = (pruned_mid_fit[k] for k in ("trainer", "model", "callback", "recorder"))
    assert [(e["stage"], e["epoch"]) for e in callback.events] == [("fit", 1)]
    assert callback.before["epoch"] == 1
    event = callback.events[0]
    assert event["global_step"] == recorder_steps(fit, 2)

    # epochs 0 and 1 trained the full model, epoch 2 the pruned one
    full, pruned = recorder.start[0]["shapes"], shapes(model)
    assert recorder.end[0]["shapes"] == full and recorder.start[1]["shapes"] == full
    assert recorder.start[2]["shapes"] == pruned and recorder.end[2]["shapes"] == pruned
    assert pruned != full
    fresh = conv_channels(classifier())
    now = conv_channels(model)
    assert all(now[n] <= fresh[n] for n in CONVS) and sum(now.values()) < sum(fresh.values())
    for name, shape in pruned.items():
        assert all(a <= b for a, b in zip(shape, full[name])), name

    # MACs really dropped, and the reported numbers agree with the model
    example = torch.zeros(1, 1, 8, 8)
    macs_now, params_now = tp.utils.count_ops_and_params(model.net, example)
    macs_full, params_full = tp.utils.count_ops_and_params(classifier().net, example)
    assert macs_now < macs_full and params_now < params_full
    conv_macs_now, _ = measure(model, example)
    conv_macs_full, _ = measure(classifier(), example)
    assert event["macs_ratio"] == pytest.approx(conv_macs_now / conv_macs_full, rel=1e-9)
    assert event["macs_ratio"] < 1.0 and event["params_ratio"] < 1.0
    assert event["tolerance"] == TOLERANCE

    # the pruned model trained: finite loss at epoch 2, and its weights moved after pruning
    assert math.isfinite(recorder.end[2]["loss"])
    after_prune = callback.after["values"]
    assert all(not torch.equal(p, after_prune[n]) for n, p in model.named_parameters() if p.requires_grad)
    rows = read_metrics(pruned_mid_fit["log_dir"])
    late = [r for r in rows if r.get("train_loss") and int(r["step"]) > event["global_step"]]
    assert len(late) >= 10 and all(finite(r["train_loss"]) for r in late)
    assert any(finite(r.get("val_loss")) and r["epoch"] == "2" for r in rows)


def recorder_steps(fit, epochs: int) -> int:
    """global step after ``epochs`` full training epochs."""
    return epochs * fit.num_training_batches


def test_optimizer_and_scheduler_follow_the_pruned_model(pruned_mid_fit):
    fit, model, callback, recorder = (pruned_mid_fit[k] for k in ("trainer", "model", "callback", "recorder"))
    (optimizer,) = fit.optimizers
    assert_optimizer_matches_model(optimizer, model)
    # same number of parameters in the same positions: the ones pruning replaced are the new ones
    before_groups = callback.before["optimizer"]["groups"]
    names_before = {id(p): n for n, p in callback.before["params"].items()}
    now = dict(model.named_parameters())
    for group, old_params in zip(optimizer.param_groups, before_groups):
        assert len(group["params"]) == len(old_params)
        for new, old in zip(group["params"], old_params):
            assert new is now[names_before[id(old)]]
    # every trained parameter has Adam state again (carried at pruning time, stepped since)
    assert all(p in optimizer.state for p in model.parameters() if p.requires_grad)
    after = callback.after["params"]
    assert all(now[n] is after[n] for n in now)  # no parameter replaced after pruning
    # the scheduler is the same object, bound to the same optimizer, and its progress continued
    config = fit.lr_scheduler_configs[0]
    assert config.scheduler is callback.before["scheduler"] is recorder.start[0]["scheduler"]
    assert config.scheduler.optimizer is optimizer
    assert [recorder.start[e]["last_epoch"] for e in range(3)] == [0, 1, 2]
    assert config.scheduler.last_epoch == 3
    lr0, t_max = model.hparams.lr, 3
    expected = lr0 * (1 + math.cos(math.pi * 2 / t_max)) / 2
    assert recorder.start[2]["lr"] == pytest.approx(expected)


def test_logged_metrics_reach_the_csv_logger(pruned_mid_fit):
    callback = pruned_mid_fit["callback"]
    rows = read_metrics(pruned_mid_fit["log_dir"])
    fair_rows = [r for r in rows if r.get("fair/macs_before")]
    assert len(fair_rows) == 1
    row = fair_rows[0]
    keys = [
        "fair/macs_before",
        "fair/macs_after",
        "fair/macs_ratio",
        "fair/params_before",
        "fair/params_after",
        "fair/params_ratio",
        "fair/tolerance",
        "fair/calibration_loss_before",
        "fair/calibration_loss_after",
        "fair/calibration_accuracy_before",
        "fair/calibration_accuracy_after",
    ]
    for key in keys:
        assert finite(row.get(key)), key
    report = callback.last_result.report
    assert float(row["fair/macs_before"]) == report.macs_before
    assert float(row["fair/macs_after"]) == report.macs_after < report.macs_before
    assert float(row["fair/macs_ratio"]) == pytest.approx(report.macs_after / report.macs_before)
    assert float(row["fair/params_ratio"]) == pytest.approx(report.params_ratio)
    assert float(row["fair/tolerance"]) == TOLERANCE
    for key in ("fair/calibration_accuracy_before", "fair/calibration_accuracy_after"):
        assert 0.0 <= float(row[key]) <= 1.0
    assert float(row["fair/calibration_loss_before"]) == pytest.approx(
        callback.last_result.scores.config["calibration_loss"]
    )
    model = pruned_mid_fit["model"]
    modules = dict(model.named_modules())
    # the kept channels logged are the widths right after pruning (epoch 2 does not change widths)
    for layer in CONVS:
        assert int(float(row[f"fair/kept_channels/{layer}"])) == modules[layer].out_channels
    assert int(float(row["fair/kept_channels/net.head.0"])) == modules["net.head.0"].out_features


# ------------------------------------------------------------------ 3: when
def test_fit_end_prunes_once_after_the_last_epoch(tmp_path):
    model, dm = classifier(), datamodule()
    callback, recorder = FairPruneCallback(tolerance=TOLERANCE, **FAST), EpochRecorder()
    assert callback.prune_at == "fit_end"
    fit = trainer(tmp_path, [callback, recorder], max_epochs=2)
    full = shapes(model)
    fit.fit(model, datamodule=dm)
    assert [(e["stage"], e["epoch"]) for e in callback.events] == [("fit", 2)]
    assert recorder.end[1]["shapes"] == full  # the last epoch trained the full model
    assert shapes(model) != full
    # the module and optimizer stay usable; validating again does not prune again
    fit.validate(model, datamodule=dm, verbose=False)
    assert len(callback.events) == 1
    assert_optimizer_matches_model(fit.optimizers[0], model)


def test_validate_prunes_a_trained_model(tmp_path):
    model, dm = classifier(), datamodule()
    trainer(tmp_path / "train", max_epochs=1).fit(model, datamodule=dm)
    trained = shapes(model)
    callback = FairPruneCallback(prune_at="validate", tolerance=TOLERANCE, **FAST)
    validator = trainer(tmp_path / "val", [callback])
    validator.validate(model, datamodule=dm, verbose=False)
    assert [e["stage"] for e in callback.events] == ["validate"]
    assert shapes(model) != trained
    assert callback.last_result.report.macs_after < callback.last_result.report.macs_before
    # nothing of the model is an inference tensor: it can still be trained and evaluated
    assert not any(t.is_inference() for t in list(model.parameters()) + list(model.buffers()))
    x, y = next(iter(dm.val_dataloader()))
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (len(x), 10)
    # and it validates again, now pruned (a second validate prunes again: each call is a request)
    metrics = trainer(tmp_path / "val2").validate(model, datamodule=dm, verbose=False)
    assert finite(metrics[0]["val_loss"])


def test_validate_mode_does_not_prune_during_fit(tmp_path):
    model, dm = classifier(), datamodule()
    callback = FairPruneCallback(prune_at="validate", tolerance=TOLERANCE, **FAST)
    full = shapes(model)
    trainer(tmp_path, [callback], max_epochs=1).fit(model, datamodule=dm)
    assert callback.events == [] and callback.last_result is None
    assert shapes(model) == full


# ------------------------------------------------------------------ 4: frozen parameters and flags
class FreezeStem(L.Callback):
    """Keeps the (frozen) stem in eval mode during training, as for a frozen backbone."""

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.net.features[0].eval()


def test_frozen_parameters_and_training_flags_survive(tmp_path):
    model, dm = classifier(), datamodule()
    stem = model.net.features[0]
    for p in stem.parameters():
        p.requires_grad_(False)
    original = {n: p.detach().clone() for n, p in stem.named_parameters()}
    callback = Capturing(prune_at=0, tolerance=0.3, **FAST)
    fit = trainer(tmp_path, [FreezeStem(), callback], max_epochs=2)
    fit.fit(model, datamodule=dm)

    assert [e["epoch"] for e in callback.events] == [0]
    kept = callback.last_result.kept
    assert "net.features.0.0" in kept, "the frozen stem should have been pruned for this test to mean something"
    # frozen before -> frozen after; every other parameter still trains
    assert callback.after["requires_grad"] == callback.before["requires_grad"]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"net.features.0.0.weight", "net.features.0.1.weight", "net.features.0.1.bias"}
    # train/eval flags as they were (stem in eval, the rest training)
    assert callback.after["training"] == callback.before["training"]
    assert callback.before["training"]["net.features.0.0"] is False
    assert callback.before["training"]["net.features.1.0"] is True
    # the frozen weights were sliced, never updated
    out = kept["net.features.0.0"]["out"]
    assert torch.equal(stem[0].weight, original["0.weight"][out])
    assert torch.equal(stem[1].weight, original["1.weight"][out])
    assert torch.equal(stem[1].bias, original["1.bias"][out])
    assert_optimizer_matches_model(fit.optimizers[0], model)


# ------------------------------------------------------------------ 5: optimizer state carried
def test_adam_state_is_sliced_to_the_kept_channels(tmp_path):
    model, dm = classifier(), datamodule()
    callback = Capturing(prune_at=0, tolerance=TOLERANCE, **FAST)
    # carry the state exactly: check right after pruning (the next callback), before any further step
    seen = {}

    class AfterPrune(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            seen.update(
                {
                    n: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
                    for n, p in pl_module.named_parameters()
                    if p in optimizer.state
                }
            )
            seen["__objects__"] = {
                n: optimizer.state[p] for n, p in pl_module.named_parameters() if p in optimizer.state
            }

    fit = trainer(tmp_path, [callback, AfterPrune()], max_epochs=1, limit_val_batches=2)
    fit.fit(model, datamodule=dm)
    assert callback.events, "nothing was pruned"
    kept = callback.last_result.kept
    optimizer_before = callback.before["optimizer"]
    old_params = callback.before["params"]
    modules = dict(model.named_modules())
    checked = 0
    for name, old in old_params.items():
        module_name, _, kind = name.rpartition(".")
        old_state = optimizer_before["state"][id(old)]
        new_state = seen[name]
        assert new_state.keys() == old_state.keys()
        assert torch.equal(torch.as_tensor(new_state["step"]), torch.as_tensor(old_state["step"]))
        if module_name not in kept:
            assert model.get_parameter(name) is old
            assert seen["__objects__"][name] is optimizer_before["state_objects"][id(old)]
            continue
        sides = kept[module_name]
        for key in ("exp_avg", "exp_avg_sq"):
            expected = old_state[key]
            module = modules[module_name]
            if "out" in sides:
                expected = expected.index_select(0, sides["out"])
            if kind == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)) and "in" in sides:
                expected = expected.index_select(1, sides["in"])
            assert new_state[key].shape == model.get_parameter(name).shape, name
            assert torch.equal(new_state[key], expected), (name, key)
        checked += 1
    assert checked >= 6
    full = conv_channels(classifier())
    assert any(len(kept[n]["out"]) < full[n] for n in CONVS if "out" in kept.get(n, {})), "no conv lost output channels"
    assert any("in" in kept.get(n, {}) for n in CONVS[1:]), "no conv lost input channels"


# ------------------------------------------------------------------ 6: atomic
class FlakyLoss:
    """cross-entropy that raises on its ``fail_at``-th call (the scoring pass calls it once per batch)."""

    def __init__(self, fail_at: int):
        self.fail_at, self.calls = fail_at, 0

    def __call__(self, logits, target):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("flaky loss on batch 2")
        return nn.functional.cross_entropy(logits, target)


def _partial_apply(monkeypatch):
    original = DependencyPlanner.apply

    def apply(self, plan, record_history=True):
        assert len(plan) > 1, "the test needs a plan with several groups"
        original(self, dict(list(plan.items())[:1]), record_history)  # one group removed, then a failure
        raise RuntimeError("boom in apply")

    monkeypatch.setattr(DependencyPlanner, "apply", apply)


def _failing_recalibration(monkeypatch):
    def recalibrate_bn(model, dataloader, **kwargs):  # writes in place, then fails
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.running_mean.add_(1.0)
                    module.running_var.mul_(2.0)
                    module.num_batches_tracked.add_(7)
        raise RuntimeError("boom in BatchNorm re-estimation")

    monkeypatch.setattr(lightning_fair.pipeline.oneshot, "recalibrate_bn", recalibrate_bn)


def _failing_real_recalibration(monkeypatch):
    original = lightning_fair.pipeline.oneshot.recalibrate_bn

    def recalibrate_bn(model, dataloader, **kwargs):  # the real pass, on data that breaks at batch 2
        def batches():
            for number, batch in enumerate(dataloader):
                if number == 1:
                    raise OSError("boom: calibration data unreadable")
                yield batch

        return original(model, batches(), **kwargs)

    monkeypatch.setattr(lightning_fair.pipeline.oneshot, "recalibrate_bn", recalibrate_bn)


def _failing_compensation(monkeypatch):
    monkeypatch.setattr(
        lightning_fair.pipeline.oneshot,
        "fold_mean_replacement",
        _raise_after(lightning_fair.pipeline.oneshot.fold_mean_replacement, "boom in compensation"),
    )


def _failing_repoint(monkeypatch):
    monkeypatch.setattr(
        lightning_fair.lightning.callback,
        "repoint_optimizer",
        _raise_after(lightning_fair.lightning.callback.repoint_optimizer, "boom in repoint"),
    )


def _failing_evaluation(monkeypatch):
    monkeypatch.setattr(
        lightning_fair.lightning.callback,
        "evaluate",
        _raise_after(lightning_fair.lightning.callback.evaluate, "boom in evaluate"),
    )


def _raise_after(original, message):
    def wrapper(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError(message)

    return wrapper


FAILURES = {
    # name: (inject, callback options, step named in the message, type of the original error)
    "scoring": (None, {"loss_fn": "flaky"}, "scoring units", ValueError),
    "removal": (_partial_apply, {}, "removing units", RuntimeError),
    "compensation": (_failing_compensation, {"compensate": True}, "removing units", RuntimeError),
    "bn_reestimation": (_failing_recalibration, {"recalibrate": True}, "removing units", RuntimeError),
    "bn_reestimation_real_pass": (_failing_real_recalibration, {"recalibrate": True}, "removing units", OSError),
    "optimizer_repointing": (_failing_repoint, {}, "re-pointing the optimizers", RuntimeError),
    "evaluation": (_failing_evaluation, {}, "evaluating the pruned model", RuntimeError),
}


def _hooks(model) -> dict:
    return {
        n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for n, m in model.named_modules()
    }


class Guarded(FairPruneCallback):
    """Records everything prune_now may touch, and compares it inside the hook when pruning fails."""

    def prune_now(self, trainer, pl_module, stage="fit"):
        (optimizer,) = trainer.optimizers
        before = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "params": dict(pl_module.named_parameters()),
            "buffers": dict(pl_module.named_buffers()),
            "state": state_copy(pl_module),
            "grads": {n: (p.grad, None if p.grad is None else p.grad.clone()) for n, p in pl_module.named_parameters()},
            "training": {n: m.training for n, m in pl_module.named_modules()},
            "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
            "optimizer": optimizer_copy(optimizer),
            "group_lists": [g["params"] for g in optimizer.param_groups],
            "hooks": _hooks(pl_module),
            "attributes": set(pl_module.__dict__),
        }
        try:
            super().prune_now(trainer, pl_module, stage)
        except BaseException as error:
            self.error = error
            # right after the failure, inside the hook: nothing else has had a chance to act
            assert (trainer.current_epoch, trainer.global_step) == (before["epoch"], before["step"])
            assert dict(pl_module.named_parameters()).keys() == before["params"].keys()
            assert all(pl_module.get_parameter(n) is p for n, p in before["params"].items())
            assert all(pl_module.get_buffer(n) is b for n, b in before["buffers"].items())
            assert_same_state(state_copy(pl_module), before["state"])
            for name, param in pl_module.named_parameters():
                grad, value = before["grads"][name]
                assert param.grad is grad and (grad is None or torch.equal(grad, value)), name
            assert {n: m.training for n, m in pl_module.named_modules()} == before["training"]
            assert {n: p.requires_grad for n, p in pl_module.named_parameters()} == before["requires_grad"]
            assert_same_optimizer(optimizer, before["optimizer"])
            assert all(g["params"] is lst for g, lst in zip(optimizer.param_groups, before["group_lists"]))
            assert _hooks(pl_module) == before["hooks"]
            assert set(pl_module.__dict__) == before["attributes"]
            self.checked = True
            raise


@pytest.mark.parametrize("where", sorted(FAILURES))
def test_failed_pruning_changes_nothing(tmp_path, monkeypatch, where):
    inject, options, step, original_type = FAILURES[where]
    if inject is not None:
        inject(monkeypatch)
    if options.get("loss_fn") == "flaky":
        options = {**options, "loss_fn": FlakyLoss(fail_at=2)}
    model, dm = classifier(), datamodule()
    model.net.features[0][0].weight.requires_grad_(False)  # a frozen parameter stays frozen
    callback = Guarded(prune_at=0, tolerance=0.3, max_batches=3, **{**FAST, **options})
    fit = trainer(tmp_path, [callback], max_epochs=2, limit_train_batches=2)
    with pytest.raises(PruningError, match=f"lightning_fair: pruning failed while {step}.*left unchanged") as caught:
        fit.fit(model, datamodule=dm)
    assert getattr(callback, "checked", False), "the failure was not the pruning's"
    error = caught.value
    assert error is callback.error and isinstance(error, RuntimeError)
    assert type(error.__cause__) is original_type
    assert str(error.__cause__) in str(error) and ("boom" in str(error) or "flaky" in str(error))
    assert callback.events == [] and callback.last_result is None
    assert "_lightning_fair_pruning" not in model.__dict__
    # and after the Trainer gave up
    assert shapes(model) == shapes(classifier())
    assert fit.global_step == 2  # the two training steps of epoch 0, nothing more
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_keyboard_interrupt_restores_and_propagates_unchanged(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lightning_fair.pipeline.oneshot, "fold_mean_replacement", interrupted)
    model, dm = classifier(), datamodule()
    callback = Guarded(prune_at=0, tolerance=0.3, max_batches=3, compensate=True, **FAST)
    fit = trainer(tmp_path, [callback], max_epochs=2, limit_train_batches=2)
    with pytest.raises(SystemExit):  # Lightning shuts down gracefully on an interrupt, then exits
        fit.fit(model, datamodule=dm)
    assert type(callback.error) is KeyboardInterrupt and callback.checked  # not wrapped
    assert fit.interrupted and callback.events == []
    assert shapes(model) == shapes(classifier())


# ------------------------------------------------------------------ 7: bad options
@pytest.mark.parametrize(
    "kwargs",
    [
        {"tolerance": 2},
        {"tolerance": -0.1},
        {"prune_at": "sometimes"},
        {"prune_at": -1},
        {"prune_at": True},
        {"prune_at": 1.5},
        {"target_macs": 0},
        {"target_macs": 1.5},
        {"target_params": 0},
        {"target_macs": 0.5, "target_params": 0.5},
        {"ranking": "x"},
        {"observe": "x"},
        {"group_policy": "x"},
        {"max_batches": 0},
        {"max_batches": 1.5},
        {"samples_per_class": 0},
        {"num_projections": 0},
    ],
)
def test_bad_options_raise_at_construction(kwargs):
    with pytest.raises(ValueError):
        FairPruneCallback(**kwargs)


def test_good_options_construct():
    for kwargs in (
        {"prune_at": 0},
        {"prune_at": "validate"},
        {"target_macs": 0.5},
        {"target_params": 1.0},
        {"max_batches": 1},
        {"ranking": "l1"},
        {"tolerance": 0.0},
        {"tolerance": 1.0},
    ):
        FairPruneCallback(**kwargs)


def test_missing_calibration_data_is_a_misconfiguration(tmp_path):
    model, dm = classifier(), datamodule()
    dm.setup("fit")
    callback = FairPruneCallback(prune_at=0, **FAST)
    fit = trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2)
    before = state_copy(model)
    with pytest.raises(MisconfigurationException, match="dataloader"):
        fit.fit(model, train_dataloaders=dm.train_dataloader())  # no validation data
    assert callback.events == []
    # the model was not pruned (only trained for two steps)
    assert {k: v.shape for k, v in state_copy(model).items()} == {k: v.shape for k, v in before.items()}


# ------------------------------------------------------------------ 8: calibration data
def test_dataloader_option_overrides_the_validation_loader(tmp_path):
    model, dm = classifier(), datamodule()
    dm.setup("fit")
    x, y = dm.train_set.tensors
    calibration = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 150, 50)]  # 3 batches; val has 5
    callback = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, dataloader=calibration, **FAST)
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(model, datamodule=dm)
    assert callback.last_result.scores.config["num_batches"] == 3
    assert sum(callback.last_result.scores.class_counts) <= 150

    # max_batches limits the batches of the (default) validation loader
    model = classifier()
    callback = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, max_batches=2, **FAST)
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(model, datamodule=dm)
    assert callback.last_result.scores.config["num_batches"] == 2
    assert len(dm.val_dataloader()) > 2

    # without max_batches: the whole validation loader
    model = classifier()
    callback = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, **FAST)
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(model, datamodule=dm)
    assert callback.last_result.scores.config["num_batches"] == len(dm.val_dataloader())


def test_validation_loaders_given_to_fit_are_found_before_validation_ran(tmp_path):
    """prune_at=0 with validation every 2nd epoch and no sanity check: the loop has not run yet."""
    model, dm = classifier(), datamodule()
    dm.setup("fit")
    callback = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, **FAST)
    fit = trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2, check_val_every_n_epoch=2)
    fit.fit(model, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.val_dataloader())
    assert len(callback.events) == 1
    assert callback.last_result.scores.config["num_batches"] == len(dm.val_dataloader())


def test_ignored_layers_and_targets_reach_prune(tmp_path):
    dm = datamodule()
    model = classifier()
    callback = FairPruneCallback(prune_at=0, tolerance=0.5, ignored_layers=["net.features.0.0"], **FAST)
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(model, datamodule=dm)
    assert model.net.features[0][0].out_channels == 8  # never pruned
    assert callback.last_result.report.macs_after < callback.last_result.report.macs_before  # others were

    model = classifier()
    callback = FairPruneCallback(prune_at=0, target_macs=0.6, **FAST)
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(model, datamodule=dm)
    assert callback.events[0]["macs_ratio"] <= 0.6 + 1e-9
    event = callback.events[0]
    assert event["level"] == callback.last_result.level and event["level_name"] == "threshold"
    assert "tolerance" not in event  # a threshold is not called a tolerance


# ------------------------------------------------------------------ 9: callback state in checkpoints
def test_callback_state_round_trips_through_a_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    model, dm = classifier(), datamodule()
    callback = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, **FAST)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [callback, checkpoint], max_epochs=1, enable_checkpointing=True, limit_train_batches=2).fit(
        model, datamodule=dm
    )
    assert len(callback.events) == 1
    data = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    (key,) = [k for k in data["callbacks"] if k.startswith("FairPruneCallback")]
    assert key == callback.state_key
    assert data["callbacks"][key]["events"] == callback.events

    restored = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, **FAST)
    restored.load_state_dict(data["callbacks"][key])
    assert restored.events == callback.events
    assert restored.state_dict() == callback.state_dict()
    # the list is a copy: later events do not leak into the checkpointed dict
    restored.events.append({"stage": "fit", "epoch": 9})
    assert data["callbacks"][key]["events"] == callback.events
    # plain data only (weights_only=True above refuses anything else; checked here by type as well)
    assert _plain(data["callbacks"][key]) and _plain(data["lightning_fair"])
    # what state_dict gives is plain even if an event picked up tensors or numpy numbers
    numpy = pytest.importorskip("numpy")
    callback.events[0]["extra"] = {"ratio": numpy.float64(0.5), "kept": torch.tensor([1, 2]), "n": numpy.int64(3)}
    plain = callback.state_dict()
    assert _plain(plain) and plain["events"][0]["extra"] == {"ratio": 0.5, "kept": [1, 2], "n": 3}
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == plain


def _plain(value) -> bool:
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) in (list, tuple):
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


def _event(**changes):
    event = {
        "stage": "fit",
        "epoch": 1,
        "global_step": 20,
        "tolerance": 0.1,
        "macs_ratio": 0.5,
        "params_ratio": 0.6,
        "report": {"layers": [], "macs_before": 10},
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()

MALFORMED_STATES = {
    "not_a_dict": ([_event()], r"expected a dict, got list"),
    "no_events": ({}, r"no 'events' entry"),
    "events_not_a_list": ({"events": "fit@1"}, r"'events' must be a list, got str"),
    "event_not_a_dict": ({"events": [["fit", 1]]}, r"events\[0\] must be a dict, got list"),
    "event_missing_keys": ({"events": [_event(epoch=_DROP, report=_DROP)]}, r"events\[0\] lacks \['epoch', 'report'\]"),
    "unknown_stage": ({"events": [_event(), _event(stage="test")]}, r"events\[1\]\['stage'\] must be one of"),
    "epoch_a_string": ({"events": [_event(epoch="1")]}, r"events\[0\]\['epoch'\] must be an integer >= 0, got '1'"),
    "epoch_a_float": ({"events": [_event(epoch=1.0)]}, r"events\[0\]\['epoch'\] must be an integer >= 0, got 1.0"),
    "epoch_a_bool": ({"events": [_event(epoch=True)]}, r"events\[0\]\['epoch'\] must be an integer >= 0, got True"),
    "negative_step": ({"events": [_event(global_step=-5)]}, r"\['global_step'\] must be an integer >= 0, got -5"),
    "ratio_a_string": ({"events": [_event(macs_ratio="0.5")]}, r"\['macs_ratio'\] must be a finite number"),
    "ratio_nan": ({"events": [_event(params_ratio=float("nan"))]}, r"\['params_ratio'\] must be a finite number"),
    "report_not_a_dict": ({"events": [_event(report="table")]}, r"\['report'\] must be a dict, got str"),
    "object_inside": (
        {"events": [_event(report={"device": torch.device("cpu")})]},
        r"events.*\['device'\] is a device, not plain data",
    ),
    "tensor_inside": ({"events": [_event()], "extra": torch.zeros(2)}, r"\['extra'\] is a Tensor, not plain data"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_STATES))
def test_load_state_dict_refuses_a_malformed_state(case):
    state, message = MALFORMED_STATES[case]
    callback = FairPruneCallback(prune_at=1, tolerance=TOLERANCE, **FAST)
    callback.load_state_dict({"events": [_event()]})
    before = callback.state_dict()
    with pytest.raises(ValueError, match=message) as error:
        callback.load_state_dict(state)
    assert callback.state_key in str(error.value) and "edited or damaged" in str(error.value)
    assert callback.state_dict() == before  # nothing half-loaded


def test_load_state_dict_accepts_what_state_dict_wrote_and_extra_plain_keys():
    callback = FairPruneCallback(prune_at=1, tolerance=TOLERANCE, **FAST)
    state = {"events": [_event(), _event(stage="validate", epoch=0, tolerance=0, note=None)], "future": {"a": [1]}}
    callback.load_state_dict(state)
    assert callback.events == state["events"] and callback.events is not state["events"]
    callback.events[0]["report"]["macs_before"] = 0  # a deep copy: the loaded dict is not touched
    assert state["events"][0]["report"]["macs_before"] == 10


def test_progress_bar_follows_the_scoring_pass(tmp_path, monkeypatch):
    import tqdm.auto

    bars = []

    class RecordingBar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    model, dm = classifier(), datamodule()
    # every pass has a bar named by what it does: scoring, the refit's statistics, BatchNorm
    callback = FairPruneCallback(prune_at=0, target_macs=0.6, max_batches=3, **{**FAST, "progress": True})
    # Lightning's tqdm bar (with rich installed, Lightning's default is RichProgressBar: next test)
    from lightning.pytorch.callbacks import TQDMProgressBar

    trainer(tmp_path, [TQDMProgressBar(), callback], max_epochs=1, limit_train_batches=2, enable_progress_bar=True).fit(
        model, datamodule=dm
    )
    ours = [bar for bar in bars if bar.desc.startswith("lightning_fair")]
    assert callback.last_result.report.recalibrated, "the test model has BatchNorm: it is re-estimated"
    assert callback.last_result.report.refitted, "the refit ran: its pass has a bar"
    assert [bar.desc for bar in ours] == [
        "lightning_fair: scoring units",
        "lightning_fair: refitting consumers",
        "lightning_fair: re-estimating BatchNorm",
    ]
    assert all(bar.total == 3 for bar in ours)
    assert callback.last_result.scores.config["num_batches"] == 3
    assert all(bar.n == 3 for bar in ours), "the progress bars did not follow the three passes"

    # a Trainer without progress bars gets none from us either
    bars.clear()
    callback = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, **{**FAST, "progress": True})
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(classifier(), datamodule=datamodule())
    assert not [bar for bar in bars if bar.desc.startswith("lightning_fair")]


def test_under_a_rich_progress_bar_the_passes_are_tasks_of_its_display(tmp_path, monkeypatch):
    # a tqdm bar under Rich's live display prints a new line per update: the passes become tasks of
    # the Trainer's own display instead, removed when each pass ends
    pytest.importorskip("rich")
    import tqdm.auto
    from lightning.pytorch.callbacks import RichProgressBar

    class NoTqdm(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            if str(kwargs.get("desc", "")).startswith("lightning_fair"):
                raise AssertionError("a tqdm bar under RichProgressBar")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", NoTqdm)
    seen = []

    repaints = []

    class Watching(RichProgressBar):
        def refresh(self, hard: bool = False) -> None:
            # Lightning's display repaints only when its bar asks: ours must ask on every update
            if self.progress is not None:
                repaints.append([t.description for t in self.progress.tasks if t.description.startswith("lightning")])
            super().refresh(hard)

        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            display = self.progress
            original = display.update

            def update(task_id, **kwargs):
                task = display._tasks[task_id]
                if task.description.startswith("lightning_fair"):
                    seen.append((task.description, task.total, kwargs.get("advance")))
                return original(task_id, **kwargs)

            display.update = update

    bar = Watching()
    callback = FairPruneCallback(
        prune_at=0, tolerance=TOLERANCE, max_batches=3, refit=False, **{**FAST, "progress": True}
    )
    # the bar's callback runs before ours (callbacks run in list order), so its display is live
    trainer(tmp_path, [bar, callback], max_epochs=1, limit_train_batches=2, enable_progress_bar=True).fit(
        classifier(), datamodule=datamodule()
    )
    assert callback.last_result is not None
    scoring = [row for row in seen if row[0] == "lightning_fair: scoring units"]
    batchnorm = [row for row in seen if row[0] == "lightning_fair: re-estimating BatchNorm"]
    assert len(scoring) == 3 and len(batchnorm) == 3 and all(row[1] == 3 and row[2] == 1 for row in scoring)
    assert not [t for t in bar.progress.tasks if t.description.startswith("lightning_fair")], "tasks left behind"
    assert sum(["lightning_fair: scoring units"] == r for r in repaints) >= 3, "the display was not asked to repaint"
    assert [] in repaints[repaints.index(["lightning_fair: scoring units"]) :], "no repaint after the task went"


def test_two_callbacks_prune_at_two_epochs(tmp_path):
    model, dm = classifier(), datamodule()
    first = FairPruneCallback(prune_at=0, tolerance=TOLERANCE, **FAST)
    second = FairPruneCallback(prune_at=1, tolerance=TOLERANCE, **FAST)
    assert first.state_key != second.state_key
    trainer(tmp_path, [first, second], max_epochs=2, limit_train_batches=2).fit(model, datamodule=dm)
    assert [e["epoch"] for e in first.events] == [0] and [e["epoch"] for e in second.events] == [1]
    first_after = first.last_result.report.macs_after
    assert second.last_result.report.macs_before == first_after
    assert second.last_result.report.macs_after < first_after


def test_epoch_never_reached_warns(tmp_path):
    callback = FairPruneCallback(prune_at=5, tolerance=TOLERANCE, **FAST)
    with pytest.warns(UserWarning, match="cannot prune at epoch"):  # said at fit start (tests/test_early_errors.py)
        trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(classifier(), datamodule=datamodule())
    assert callback.events == []


def test_epoch_never_reached_for_another_reason_warns_at_fit_end(tmp_path):
    """max_epochs allows the epoch, but training stops early (max_steps): said when fit ends."""
    callback = FairPruneCallback(prune_at=3, tolerance=TOLERANCE, **FAST)
    with pytest.warns(UserWarning, match="did not prune"):
        trainer(tmp_path, [callback], max_epochs=5, max_steps=2, limit_train_batches=2).fit(
            classifier(), datamodule=datamodule()
        )
    assert callback.events == []
