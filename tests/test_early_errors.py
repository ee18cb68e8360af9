"""Mistakes caught before anything runs, with a message that names the fix (issue 24): two budgets at
once, scores computed on another model, the console script importing the user's own module."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_fair import PruneConfig, compute_scores, prune
from lightning_fair.demos import zoo

FAST = dict(samples_per_class=8, num_projections=8)


def batches(n: int = 3, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(40, 1, 8, 8, generator=generator), torch.arange(40) % 10) for _ in range(n)]


@pytest.mark.parametrize("budget", [dict(target_macs=0.5), dict(target_params=0.5), dict(ratio=0.3)])
def test_a_tolerance_beside_another_budget_is_an_error(budget):
    with pytest.raises(ValueError, match="two budgets; give one"):
        PruneConfig(tolerance=0.1, **budget)
    with pytest.raises(ValueError, match="two budgets"):
        prune(zoo.small_cnn(), batches(), tolerance=0.1, **budget)
    assert PruneConfig(**budget).resolved()  # the default tolerance beside it is no conflict


def test_a_tolerance_that_leaves_little_is_warned_about():
    import warnings

    import helpers

    model = helpers.trained_small_cnn()
    scores = compute_scores(model, helpers.calibration_loader(), **FAST)
    with pytest.warns(UserWarning, match=r"tolerance=1 kept \d+\.\d % of the MACs .*target_macs=") as record:
        result = prune(copy.deepcopy(model), helpers.calibration_loader(), scores=scores, tolerance=1.0, **FAST)
    assert result.report.macs_after / result.report.macs_before < 0.2
    assert len([w for w in record if "kept" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*kept .* of the MACs")
        prune(copy.deepcopy(model), helpers.calibration_loader(), scores=scores, tolerance=0.1, **FAST)
        prune(copy.deepcopy(model), helpers.calibration_loader(), scores=scores, target_macs=0.1, **FAST)


def test_scores_of_another_model_are_refused_before_anything_changes():
    torch.manual_seed(0)
    model = zoo.small_cnn()
    scores = compute_scores(model, batches(), **FAST)
    prune(model, batches(), scores=scores, target_macs=0.6, **FAST)  # pruned in place: the scores are stale
    widths = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="computed on a model of other widths .*compute them on this model"):
        prune(model, batches(), scores=scores, target_macs=0.6, **FAST)
    assert [p.shape for p in model.parameters()] == widths


def test_console_script_imports_from_the_working_folder(tmp_path):
    script = shutil.which("lightning-fair", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the lightning-fair console script is not installed beside this Python")
    (tmp_path / "mymod.py").write_text(
        "from lightning_fair.demos.digits import ImageClassifier\n\nclass MyModel(ImageClassifier):\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [
            script,
            "fit",
            "--model=mymod.MyModel",
            "--data=lightning_fair.demos.digits.DigitsDataModule",
            "--print_config",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "mymod.MyModel" in run.stdout


# ---------------------------------------------------------------------- the callback, at fit start
class Counting:
    """Counts the training steps a module ran (the checks must come before the first)."""

    steps = 0


def counted(module_class):
    class Module(module_class):
        def training_step(self, batch, batch_idx):
            Counting.steps += 1
            return super().training_step(batch, batch_idx)

    return Module


def fit_start(tmp_path, callback, module=None, val=None, max_epochs=3, **trainer_options):
    import lightning_helpers as lh

    Counting.steps = 0
    model = module if module is not None else counted(lh.ImageClassifier)(width=8)
    trainer = lh.trainer(tmp_path, [callback], max_epochs=max_epochs, **trainer_options)
    data = lh.datamodule()
    if val is None:
        trainer.fit(model, datamodule=data)
    else:
        data.setup("fit")
        trainer.fit(model, train_dataloaders=data.train_dataloader(), val_dataloaders=val)
    return trainer


def test_unlabelled_calibration_batches_fail_before_training(tmp_path):
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_fair import FairPruneCallback

    unlabelled = [torch.randn(16, 1, 8, 8) for _ in range(2)]  # images only
    callback = FairPruneCallback(target_macs=0.5, prune_at=1, dataloader=unlabelled, progress=False)
    with pytest.raises(MisconfigurationException, match="does not unpack into \\(inputs, labels\\)"):
        fit_start(tmp_path, callback)
    assert Counting.steps == 0


def test_nan_in_calibration_data_fails_before_training(tmp_path):
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_fair import FairPruneCallback

    x = torch.randn(32, 1, 8, 8)
    x[3, 0, 2, 2] = float("nan")
    callback = FairPruneCallback(target_macs=0.5, prune_at=1, dataloader=[(x, torch.arange(32) % 10)], progress=False)
    with pytest.raises(MisconfigurationException, match="NaN or inf"):
        fit_start(tmp_path, callback)
    assert Counting.steps == 0


@pytest.mark.parametrize("prune_at", [5, [1, 2, 3]])
def test_a_schedule_beyond_max_epochs_is_said_at_fit_start(tmp_path, prune_at):
    from lightning_fair import FairPruneCallback

    callback = FairPruneCallback(
        target_macs=0.5, prune_at=prune_at, samples_per_class=8, num_projections=8, progress=False, verbose=False
    )
    with pytest.warns(UserWarning, match="max_epochs=3 ends training at epoch 2") as record:
        fit_start(tmp_path, callback, max_epochs=3, limit_train_batches=1, limit_val_batches=1)
    first = next(w for w in record if "max_epochs=3" in str(w.message))
    assert "epoch(s) [5]" in str(first.message) if prune_at == 5 else "[3]" in str(first.message)
    assert sum("max_epochs" in str(w.message) for w in record) == 1  # not again when fit ends


def test_a_module_without_the_mixin_is_warned_about_at_fit_start(tmp_path):
    import lightning as L

    from lightning_fair import FairPruneCallback

    class Plain(L.LightningModule):  # no FairPruningMixin
        def __init__(self):
            super().__init__()
            self.net = zoo.small_cnn(width=8)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            Counting.steps += 1
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    callback = FairPruneCallback(
        target_macs=0.5,
        prune_at=0,
        samples_per_class=8,
        num_projections=8,
        progress=False,
        verbose=False,
        write_checkpoint=False,
    )
    with pytest.warns(UserWarning, match="does not use FairPruningMixin.*load_from_checkpoint") as record:
        fit_start(tmp_path, callback, module=Plain(), max_epochs=1, limit_train_batches=2, enable_checkpointing=True)
    messages = [str(w.message) for w in record]
    assert any("FairPruningMixin" in m for m in messages)


# ---------------------------------------------------------------------- names that say what they hold
def test_logged_level_is_named_by_its_kind_and_rows_carry_the_epoch(tmp_path):
    import csv

    import lightning_helpers as lh
    from lightning.pytorch.loggers import CSVLogger

    from lightning_fair import FairPruneCallback

    callback = FairPruneCallback(
        target_macs=0.6, prune_at=0, samples_per_class=8, num_projections=8, progress=False, verbose=False
    )
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = lh.trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2, logger=logger)
    trainer.fit(lh.classifier(), datamodule=lh.datamodule())
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("fair/macs_ratio")]
    assert len(rows) == 1
    row = rows[0]
    assert row["epoch"] == "0"
    assert float(row["fair/threshold"]) == pytest.approx(callback.last_result.level)  # a threshold, so named
    assert not row.get("fair/tolerance")
    event = callback.events[0]
    assert event["level_name"] == "threshold" and "tolerance" not in event


def test_a_misspelt_prune_flag_is_said_first_and_alone(capsys):
    from lightning_fair.lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model=lightning_fair.demos.digits.ImageClassifier", "--prune.target_mac=0.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "lightning-fair: error: unknown option --prune.target_mac (did you mean --prune.target_macs?)"
    )
    assert "usage:" not in err


def test_sweep_says_its_progress(capsys):
    from lightning_fair import sweep

    torch.manual_seed(0)
    sweep(zoo.small_cnn(), batches(), targets=[0.7, 0.5], verbose=True, **FAST)
    out = capsys.readouterr().out
    assert "sweep: scoring once on the calibration data, then 2 target(s)" in out
    assert "sweep 1/2: target_macs=0.7" in out and "sweep 2/2: target_macs=0.5" in out


def test_a_target_that_keeps_everything_returns_at_once(monkeypatch):
    import lightning_fair.pipeline.oneshot as oneshot

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored although nothing is to be removed")

    monkeypatch.setattr(oneshot, "compute_scores", no_scoring)
    model = zoo.small_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    result = prune(model, batches(), target_macs=1.0, **FAST)
    assert result.model is model and result.report.macs_ratio == 1.0 and result.level_name == "none"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "keeps everything" in str(result.report)
