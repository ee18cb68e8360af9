"""A pruning at fit end or during validate reaches disk (issue 13 item 3), and its metrics reach
``trainer.callback_metrics``; the user's steps: fit or validate, then load_from_checkpoint."""

import os

import lightning as L
import lightning_helpers as lh
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fair import FairPruneCallback
from lightning_fair.demos.digits import ImageClassifier
from lightning_fair.lightning.cli import FairCLI

FAST = dict(lh.FAST, target_macs=0.6)


def widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_fit_end_pruning_writes_pruned_ckpt_and_rewrites_last(tmp_path):
    model = lh.classifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    callback = FairPruneCallback(**FAST)  # prune_at="fit_end"
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[callback, checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=lh.datamodule())
    path = str(tmp_path / "ckpts" / "pruned.ckpt")
    assert callback.events[-1]["checkpoint"] == path and os.path.isfile(path)
    for saved in (path, str(tmp_path / "ckpts" / "last.ckpt")):
        restored = ImageClassifier.load_from_checkpoint(saved)
        assert widths(restored) == widths(model) and widths(model) != widths(lh.classifier())
        x = torch.randn(2, 1, 8, 8)
        assert torch.allclose(restored.eval()(x), model.eval()(x), atol=1e-6)
    assert torch.load(path, weights_only=True)["lightning_fair"]["history"]  # plain data at rest
    assert float(trainer.callback_metrics["fair/macs_ratio"]) <= 0.6


def test_validate_pruning_writes_pruned_ckpt(tmp_path):
    model = lh.classifier()
    callback = FairPruneCallback(prune_at="validate", **FAST)
    trainer = lh.trainer(tmp_path, [callback])  # no logger, no ModelCheckpoint
    trainer.validate(model, datamodule=lh.datamodule())
    path = os.path.join(tmp_path, "checkpoints", "pruned.ckpt")
    assert callback.events[-1]["checkpoint"] == path
    assert widths(ImageClassifier.load_from_checkpoint(path)) == widths(model)
    assert "fair/calibration_accuracy_after" in trainer.callback_metrics


def test_write_checkpoint_false_writes_nothing(tmp_path):
    callback = FairPruneCallback(prune_at="validate", write_checkpoint=False, **FAST)
    lh.trainer(tmp_path, [callback]).validate(lh.classifier(), datamodule=lh.datamodule())
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints")) and "checkpoint" not in callback.events[-1]
    with pytest.raises(ValueError, match="write_checkpoint"):
        FairPruneCallback(write_checkpoint="yes")


def test_cli_validate_with_prune_at_validate_saves_the_pruned_model(tmp_path):
    """0.1: `lightning-fair validate --prune.prune_at=validate` printed a report and saved nothing."""
    args = [
        "--model=lightning_fair.demos.digits.ImageClassifier",
        "--model.width=8",
        "--data=lightning_fair.demos.digits.DigitsDataModule",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--prune.prune_at=validate",
        "--prune.target_macs=0.6",
        "--prune.samples_per_class=8",
        "--prune.num_projections=8",
        "--prune.verbose=false",
    ]
    cli = FairCLI(args=["validate", *args])
    path = os.path.join(tmp_path, "checkpoints", "pruned.ckpt")
    assert os.path.isfile(path)
    assert widths(ImageClassifier.load_from_checkpoint(path)) == widths(cli.model)


def test_report_prints_through_the_progress_bar_and_our_bars_stay_off_a_log(tmp_path, capsys):
    """0.1: our tqdm bars and the printed report interleaved with Lightning's bars ('[A' in logs)."""
    callback = FairPruneCallback(
        prune_at="validate", target_macs=0.6, samples_per_class=8, num_projections=16, write_checkpoint=False
    )  # verbose and progress on, as users have them
    trainer = lh.trainer(tmp_path, [callback], enable_progress_bar=True)
    trainer.validate(lh.classifier(), datamodule=lh.datamodule())
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("lightning_fair: pruned at epoch 0 (validate)") == 1
    assert "lightning_fair: scoring units" not in text and "\x1b[A" not in text  # not a terminal: no bars of ours


def test_no_checkpoint_directory_writes_nothing_into_the_current_directory(tmp_path, monkeypatch):
    # no ModelCheckpoint, no logger, default_root_dir unset: Lightning writes nothing here, and neither do we
    monkeypatch.chdir(tmp_path)
    callback = FairPruneCallback(prune_at="validate", **FAST)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    model = lh.classifier()
    trainer.validate(model, datamodule=lh.datamodule())
    assert callback.events[-1].get("checkpoint") is None
    assert widths(model) != widths(lh.classifier())  # pruned all the same
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_the_checkpoint_line_goes_through_the_progress_bar(tmp_path, bar):
    """The "pruned checkpoint written" line was a log record under a live bar (cut at the terminal's
    width); it is printed by the bar, with each path on a line of its own."""
    pytest.importorskip("rich") if bar == "rich" else None
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    printed = []
    base = TQDMProgressBar if bar == "tqdm" else RichProgressBar

    class Recording(base):
        def print(self, *args, **kwargs):
            printed.append(" ".join(map(str, args)))

    callback = FairPruneCallback(prune_at="validate", **FAST)
    trainer = lh.trainer(tmp_path, [Recording(), callback], enable_progress_bar=True)
    trainer.validate(lh.classifier(), datamodule=lh.datamodule())
    written = [text for text in printed if "pruned checkpoint written" in text]
    assert len(written) == 1
    assert written[0].splitlines()[1].strip() == callback.events[-1]["checkpoint"]
