"""sweep(): one scoring pass, several targets, the full pipeline on copies, a table users can keep."""

import copy
import csv

import helpers
import pytest
import torch

from lightning_fair import PruneConfig, compute_scores, prune, sweep


def test_sweep_rows_are_the_full_pipeline_at_each_target(tmp_path):
    model = helpers.trained_small_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calib = helpers.calibration_loader()
    _, _, x_test, y_test = helpers.digits()
    held_out = [(x_test[i : i + 100], y_test[i : i + 100]) for i in range(0, len(y_test), 100)]
    table = sweep(model, calib, targets=[0.7, 0.4, 0.001], eval_loader=held_out, **helpers.FAST)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is not changed
    ok = [row for row in table.rows if row.status == "ok"]
    assert [row.target for row in ok] == [0.7, 0.4]
    assert table.rows[2].status == "unreachable" and "cannot be reached" in table.rows[2].note
    # the same numbers as pruning a copy by hand with the same scores and the loader (re-estimation included)
    scores = compute_scores(model, calib, **helpers.FAST)
    for row in ok:
        by_hand = prune(copy.deepcopy(model), calib, scores=scores, target_macs=row.target, **helpers.FAST)
        assert by_hand.report.recalibrated
        assert row.macs_ratio == pytest.approx(by_hand.report.macs_ratio) and row.macs_ratio <= row.target
        assert row.accuracy == pytest.approx(helpers.accuracy(by_hand.model, x_test, y_test), abs=1e-6)
    assert ok[0].accuracy > 0.8 and ok[0].accuracy >= ok[1].accuracy - 0.02
    assert table.original["accuracy"] == pytest.approx(helpers.accuracy(model, x_test, y_test), abs=1e-6)
    text = str(table)
    assert "target" in text and "unreachable" in text and f"{ok[0].accuracy:.2%}" in text
    table.to_csv(tmp_path / "sweep.csv")
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [float(r["target"]) for r in rows] == [0.7, 0.4, 0.001] and float(rows[0]["accuracy"]) == ok[0].accuracy


def test_sweep_plots_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    table = sweep(
        helpers.trained_small_cnn(),
        helpers.calibration_loader(),
        targets=[0.8, 0.5],
        config=PruneConfig(samples_per_class=8, num_projections=8),
    )
    table.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"targets": []}, "targets is empty"),
        ({"targets": [0.5, 1.5]}, r"in \(0, 1\]"),
        ({"targets": [0.5], "budget": "flops"}, "budget must be one of"),
        ({"targets": [0.5], "tolerence": 0.1}, "unknown pruning option"),
    ],
)
def test_bad_sweep_arguments_fail_before_any_data_pass(kwargs, match):
    def never():
        raise AssertionError("the data was touched")
        yield

    with pytest.raises((ValueError, TypeError), match=match):
        sweep(helpers.trained_small_cnn(), never(), **kwargs)


def test_sweep_subcommand_on_a_trained_checkpoint(tmp_path):
    """`lightning-fair sweep --ckpt_path=... --targets=[...]`: the table printed and in sweep.csv."""
    from lightning_fair.lightning.cli import FairCLI

    model = [
        "--model=lightning_fair.demos.digits.ImageClassifier",
        "--model.width=8",
        "--data=lightning_fair.demos.digits.DigitsDataModule",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    fit = FairCLI(args=["fit", *model, "--trainer.max_epochs=2"])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    before = open(ckpt, "rb").read()
    cli = FairCLI(
        args=[
            "sweep",
            *model,
            f"--ckpt_path={ckpt}",
            "--targets=[0.8,0.5]",
            "--samples_per_class=8",
            "--num_projections=8",
            f"--output_dir={tmp_path / 'out'}",
        ]
    )
    rows = list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))
    assert [float(r["target"]) for r in rows] == [0.8, 0.5] and all(r["status"] == "ok" for r in rows)
    assert float(rows[1]["macs_ratio"]) <= 0.5 < float(rows[0]["macs_ratio"]) <= 0.8
    assert 0 <= float(rows[1]["accuracy"]) <= float(rows[0]["accuracy"]) + 0.05 <= 1.05
    assert open(ckpt, "rb").read() == before  # the checkpoint is not changed
    assert widths_of(cli.model) == widths_of(fit.model)  # nor is the model


def widths_of(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
