"""Models whose forward returns more than logits (issue 13 item 5): a tuple, a dict, an output object."""

from dataclasses import dataclass

import helpers
import lightning as L
import lightning_helpers as lh
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fair import FairPruneCallback, compute_scores, evaluate, prune, sweep
from lightning_fair.demos import zoo


def first(output):
    """For --prune.logits: the first element of a (logits, features) output."""
    return output[0]


class PlainNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = zoo.small_cnn(width=8)

    def forward(self, x):
        return self.body(x)


class TupleNet(PlainNet):
    def forward(self, x):
        logits = self.body(x)
        return logits, logits.detach().relu()  # (logits, features), as many models do


@dataclass
class Output:  # a Hugging Face-style model output object
    logits: torch.Tensor
    hidden: torch.Tensor


class ObjectNet(TupleNet):
    def forward(self, x):
        logits, features = super().forward(x)
        return Output(logits, features)


def test_tuple_output_needs_logits_and_then_prunes_like_the_plain_model():
    calib = helpers.calibration_loader(num=200)
    with pytest.raises(ValueError, match=r"logits=lambda out: out\[0\]"):
        prune(TupleNet(), calib, target_macs=0.6, **helpers.FAST)
    tuple_result = prune(TupleNet(), calib, target_macs=0.6, logits=first, **helpers.FAST)
    plain = prune(PlainNet(), calib, target_macs=0.6, **helpers.FAST)
    assert tuple_result.removed == plain.removed
    assert [r.after for r in tuple_result.report.layers] == [r.after for r in plain.report.layers]
    assert evaluate(tuple_result.model, calib, logits=first) == pytest.approx(evaluate(plain.model, calib))


def test_output_objects_and_dicts_with_logits_need_nothing():
    calib = helpers.calibration_loader(num=200)
    scores = compute_scores(ObjectNet(), calib, **helpers.FAST)
    reference = compute_scores(PlainNet(), calib, **helpers.FAST)
    assert scores.layers == reference.layers
    assert all(torch.equal(scores.utilization[n], reference.utilization[n]) for n in reference.layers)
    table = sweep(ObjectNet(), calib, targets=[0.7], **helpers.FAST)
    assert table.rows[0].status == "ok" and table.rows[0].accuracy is not None


class TupleClassifier(L.LightningModule):
    """A user's LightningModule whose forward returns (logits, features)."""

    def __init__(self):
        super().__init__()
        self.net = TupleNet()

    def forward(self, x):
        return self.net(x)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x)[0], y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_callback_with_logits_prunes_a_tuple_output_module(tmp_path):
    module = TupleClassifier()
    callback = FairPruneCallback(prune_at="validate", target_macs=0.6, logits=first, write_checkpoint=False, **lh.FAST)
    lh.trainer(tmp_path, [callback]).validate(module, datamodule=lh.datamodule())
    assert callback.last_result.report.macs_ratio <= 0.6


def test_cli_logits_flag_takes_an_import_path(tmp_path):
    from lightning_fair.lightning.cli import FairCLI

    cli = FairCLI(
        args=[
            "validate",
            "--model=test_logits.TupleClassifier",
            "--data=lightning_fair.demos.digits.DigitsDataModule",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--prune.prune_at=validate",
            "--prune.target_macs=0.6",
            "--prune.logits=test_logits.first",
            "--prune.samples_per_class=8",
            "--prune.num_projections=8",
            "--prune.verbose=false",
        ]
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.logits is first and callback.last_result.report.macs_ratio <= 0.6
