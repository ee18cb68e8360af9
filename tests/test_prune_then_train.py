"""Prune, then keep training: the pruned model must not lose in eval what it gains in training.

A user's model (residual adds, BatchNorm, ``F.relu``, SGD with momentum at a high learning rate)
pruned mid-fit by ``FairPruneCallback(target_macs=0.5, prune_at=1)``. BatchNorm's running
averages (momentum 0.1) lag weights that move fast after a pruning: without re-estimation the
validation accuracy collapses in some epochs while training accuracy rises; with
``recalibrate_each_epoch`` (the default) the statistics are re-estimated on training batches
before every validation after the pruning.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning_helpers import trainer
from torch import nn

import lightning_fair.lightning.callback
from lightning_fair import FairPruningMixin
from lightning_fair.demos.digits import DigitsDataModule
from lightning_fair.lightning.callback import RECALIBRATION_BATCHES, FairPruneCallback


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResidualNet(FairPruningMixin, L.LightningModule):
    """Written the way users write them: functional activations, residual adds, SGD + momentum."""

    def __init__(self, width: int = 16, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class ValAccuracy(L.Callback):
    def __init__(self):
        self.history = []

    def on_validation_end(self, trainer, pl_module):
        self.history.append(float(trainer.callback_metrics["val_acc"]))


def _fit(tmp_path, recalibrate_each_epoch: bool, seed: int = 0):
    torch.manual_seed(seed)
    record = ValAccuracy()
    callback = FairPruneCallback(
        target_macs=0.5,
        prune_at=1,
        samples_per_class=8,
        num_projections=16,
        progress=False,
        verbose=False,
        recalibrate_each_epoch=recalibrate_each_epoch,
    )
    fit = trainer(tmp_path, [record, callback], max_epochs=6)
    fit.fit(ResidualNet(), datamodule=DigitsDataModule(seed=seed))
    assert len(callback.events) == 1
    return record.history[2:], fit  # validations after the pruning at the end of epoch 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same seeded fit with and without re-estimation; the calls of the re-estimation recorded."""
    calls = []
    real = lightning_fair.lightning.callback.recalibrate_bn

    def spy(model, loader, **kwargs):
        calls.append((loader, kwargs))
        return real(model, loader, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lightning_fair.lightning.callback, "recalibrate_bn", spy)
        on, fit_on = _fit(tmp_path_factory.mktemp("on"), recalibrate_each_epoch=True)
        on_calls = list(calls)
        off, _ = _fit(tmp_path_factory.mktemp("off"), recalibrate_each_epoch=False)
    return {"on": on, "off": off, "calls": on_calls, "off_calls": calls[len(on_calls) :], "trainer": fit_on}


def test_pruned_model_keeps_its_eval_accuracy_while_training(runs):
    # without re-estimation some epoch collapses (lagging running statistics), with it none does
    assert min(runs["off"]) < 0.7, runs["off"]
    assert min(runs["on"]) > 0.85, runs["on"]
    assert runs["on"][-1] >= max(runs["on"][0] - 0.02, 0.9), runs["on"]


def test_statistics_are_re_estimated_on_training_batches_before_each_validation(runs):
    # the pruning's own re-estimation (calibration = validation data) is not a call of the callback's
    # module-level name; the 4 validations after it (epochs 2-5) each re-estimate on training batches
    assert len(runs["calls"]) == 4 and runs["off_calls"] == []
    for loader, kwargs in runs["calls"]:
        assert loader is runs["trainer"].train_dataloader
        assert kwargs["max_batches"] == RECALIBRATION_BATCHES


def test_no_re_estimation_before_any_pruning(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("lightning_fair.lightning.callback.recalibrate_bn", lambda *a, **k: calls.append(1) or [])
    callback = FairPruneCallback(
        target_macs=0.5, prune_at=2, samples_per_class=8, num_projections=16, progress=False, verbose=False
    )
    torch.manual_seed(0)
    trainer(tmp_path, [callback], max_epochs=2).fit(ResidualNet(), datamodule=DigitsDataModule())
    assert calls == []  # prune_at=2 is never reached: the model was never pruned


def test_recalibrate_each_epoch_must_be_a_bool():
    with pytest.raises(ValueError, match="recalibrate_each_epoch"):
        FairPruneCallback(recalibrate_each_epoch="yes")


def test_two_callbacks_re_estimate_once_per_validation(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(lightning_fair.lightning.callback, "recalibrate_bn", lambda *a, **k: calls.append(1) or [])
    first = FairPruneCallback(
        target_macs=0.7, prune_at=0, samples_per_class=8, num_projections=16, progress=False, verbose=False
    )
    second = FairPruneCallback(
        target_macs=0.7, prune_at=1, samples_per_class=8, num_projections=16, progress=False, verbose=False
    )
    torch.manual_seed(0)
    trainer(tmp_path, [first, second], max_epochs=3).fit(ResidualNet(), datamodule=DigitsDataModule())
    assert len(first.events) == len(second.events) == 1
    assert len(calls) == 2  # the validations of epochs 1 and 2, once each
