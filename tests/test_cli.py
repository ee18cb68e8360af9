"""LightningCLI integration: the plain LightningCLI callback forms, FairCLI's --prune.* group and its
``prune`` subcommand (in-process and through the console script)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("jsonargparse")
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.utilities.exceptions import MisconfigurationException  # noqa: E402

from lightning_fair import FairPruneCallback  # noqa: E402
from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier
from lightning_fair.lightning.cli import FairCLI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = [
    "--model=lightning_fair.demos.digits.ImageClassifier",
    "--model.width=8",
    "--data=lightning_fair.demos.digits.DigitsDataModule",
]
FAST_PRUNE = [
    "--prune.progress=false",
    "--prune.verbose=false",
    "--prune.samples_per_class=8",
    "--prune.num_projections=8",
]
WIDTHS = [8, 8, 16, 64]  # small_cnn(width=8): units of net.features.0.0, .1.0, .3.0, net.head.0


from helpers import single_thread  # noqa: E402
from lightning_helpers import trainer_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_cli")


def widths(model):
    net = model.net
    return [
        net.features[0][0].out_channels,
        net.features[1][0].out_channels,
        net.features[3][0].out_channels,
        net.head[0].out_features,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """FairCLI ``fit`` without any --prune flag (2 epochs) and its checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    with single_thread(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", sys.argv[:1])
        cli = FairCLI(args=["fit", *MODEL, *trainer_args(root, epochs=2)])
    return cli, cli.trainer.checkpoint_callback.best_model_path


def test_fit_without_prune_flags_adds_nothing(trained):
    cli, ckpt = trained
    assert cli.config.fit.prune is None
    assert not any(c is None or isinstance(c, FairPruneCallback) for c in cli.trainer.callbacks)
    assert widths(cli.model) == WIDTHS
    assert "lightning_fair" not in torch.load(ckpt, weights_only=True)


def test_fit_with_prune_flags_prunes(tmp_path):
    cli = FairCLI(
        args=[
            "fit",
            *MODEL,
            *trainer_args(tmp_path, epochs=2),
            "--prune.tolerance=0.05",
            "--prune.prune_at=0",
            *FAST_PRUNE,
        ]
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.prune_at == 0 and callback.config.tolerance == 0.05
    assert callback.last_result.report.options["preset"] == "default" and callback.last_result.report.recalibrated
    assert [e["epoch"] for e in callback.events] == [0]  # pruned once, then fine-tuned an epoch
    assert sum(widths(cli.model)) < sum(WIDTHS)
    # the epoch-1 checkpoint holds the pruned model and its history
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert torch.load(ckpt, weights_only=True)["lightning_fair"]["history"]
    assert widths(ImageClassifier.load_from_checkpoint(ckpt)) == widths(cli.model)


@pytest.mark.parametrize("flag", ["--prune=FairPruneCallback", "--prune={}"])
def test_prune_group_with_defaults(tmp_path, flag):
    cli = FairCLI(args=[*MODEL, *trainer_args(tmp_path), flag], run=False)  # run=False: no subcommand
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.prune_at == "fit_end" and callback.config.tolerance == 0.05


def test_prune_at_takes_a_list_of_epochs(tmp_path):
    """Gradual pruning from the command line and from YAML; a single epoch and 'fit_end' still parse."""
    args = [*MODEL, *trainer_args(tmp_path), "--prune.target_macs=0.5"]
    cli = FairCLI(args=[*args, "--prune.prune_at=[1,2]"], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.prune_at == (1, 2) and callback.state_key == FairPruneCallback(prune_at=[1, 2]).state_key
    section = tmp_path / "prune.yaml"
    section.write_text("prune:\n  target_macs: 0.5\n  prune_at: [0, 3, 6]\n")
    cli = FairCLI(args=[*MODEL, "-c", str(section), *trainer_args(tmp_path)], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.prune_at == (0, 3, 6)
    for flag, value in (("2", 2), ("fit_end", "fit_end")):
        cli = FairCLI(args=[*args, f"--prune.prune_at={flag}"], run=False)
        (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
        assert callback.prune_at == value
    with pytest.raises(ValueError, match="strictly increasing"):  # the callback's own check, before any fit
        FairCLI(args=[*args, "--prune.prune_at=[2,1]"], run=False)


def test_plain_lightningcli_callback_flags(tmp_path):
    cli = LightningCLI(
        ImageClassifier,
        DigitsDataModule,
        args=[
            "fit",
            "--model.width=8",
            *trainer_args(tmp_path),
            "--trainer.callbacks+=lightning_fair.FairPruneCallback",
            "--trainer.callbacks.tolerance=0.05",
            "--trainer.callbacks.progress=false",
            "--trainer.callbacks.verbose=false",
            "--trainer.callbacks.num_projections=8",
            "--trainer.callbacks.samples_per_class=8",
            "--trainer.callbacks.loss_fn=torch.nn.functional.cross_entropy",
        ],
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.loss_fn is torch.nn.functional.cross_entropy
    assert callback.events and callback.events[0]["stage"] == "fit"  # pruned at fit end
    assert sum(widths(cli.model)) < sum(WIDTHS)


def test_yaml_config_class_path_init_args(tmp_path):
    config = tmp_path / "callback.yaml"
    config.write_text(
        "model:\n  width: 8\n"
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning_fair.FairPruneCallback\n"
        "      init_args:\n        tolerance: 0.1\n        prune_at: 0\n        progress: false\n"
        "        verbose: false\n        num_projections: 8\n        samples_per_class: 8\n"
    )
    cli = LightningCLI(ImageClassifier, DigitsDataModule, args=["fit", "-c", str(config), *trainer_args(tmp_path)])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.config.tolerance == 0.1 and [e["epoch"] for e in callback.events] == [0]
    assert sum(widths(cli.model)) < sum(WIDTHS)


def test_example_config_and_prune_section(tmp_path):
    """examples/lightning/config.yaml parses under FairCLI, and a ``prune:`` section is a second way in."""
    example = str(ROOT / "examples" / "lightning" / "config.yaml")
    cli = FairCLI(args=["-c", example, *trainer_args(tmp_path)], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.prune_at == 5 and isinstance(cli.model, ImageClassifier) and cli.config.prune is None

    section = tmp_path / "prune.yaml"
    section.write_text("prune:\n  tolerance: 0.2\n  prune_at: 3\n")
    cli = FairCLI(args=[*MODEL, "-c", str(section), *trainer_args(tmp_path)], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.config.tolerance == 0.2 and callback.prune_at == 3
    cli = FairCLI(args=[*MODEL, "-c", str(section), "--prune=null", *trainer_args(tmp_path)], run=False)
    assert not any(isinstance(c, FairPruneCallback) for c in cli.trainer.callbacks)
    with pytest.raises(MisconfigurationException, match="same moment"):
        FairCLI(args=["-c", example, "--prune.prune_at=5", *trainer_args(tmp_path)], run=False)
    # at different moments, both act (e.g. prune at epoch 5 and again at the end of fit)
    cli = FairCLI(args=["-c", example, "--prune.tolerance=0.1", *trainer_args(tmp_path)], run=False)
    assert sorted(str(c.prune_at) for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)) == [
        "5",
        "fit_end",
    ]


def test_prune_subcommand(trained, tmp_path, capsys):
    _, ckpt = trained
    out = tmp_path / "out"
    cli = FairCLI(
        args=[
            "prune",
            *MODEL,
            *trainer_args(tmp_path),
            f"--ckpt_path={ckpt}",
            f"--output_dir={out}",
            "--tolerance=0.1",
            "--num_projections=8",
            "--samples_per_class=8",
            "--max_batches=3",
        ]
    )
    printed = capsys.readouterr().out
    assert "MACs" in printed and "validation loss" in printed

    pruned = cli.model.eval()
    assert sum(widths(pruned)) < sum(WIDTHS)
    path = out / "pruned.ckpt"
    data = torch.load(path, weights_only=True)  # plain data only
    assert data["lightning_fair"]["history"] and data["hyper_parameters"]["width"] == 8
    restored = ImageClassifier.load_from_checkpoint(path).eval()
    assert widths(restored) == widths(pruned)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(restored(x), pruned(x))

    report = json.loads((out / "report.json").read_text())
    assert report["options"]["tolerance"] == 0.1 and report["options"]["max_batches"] == 3
    assert report["report"]["macs_after"] < report["report"]["macs_before"]
    assert report["checkpoint"] == str(path.resolve())
    assert set(report["validation"]["after"]) == {"loss", "accuracy"}
    assert "net.head.0" in (out / "report.txt").read_text()
    # the default pipeline: consumers refitted, BatchNorm re-estimated
    assert report["report"]["recalibrated"] and report["report"]["refitted"]
    assert report["report"]["options"]["preset"] == "default"


def test_prune_subcommand_pipeline_flags(trained, tmp_path):
    _, ckpt = trained
    out = tmp_path / "out"
    FairCLI(
        args=[
            "prune",
            *MODEL,
            *trainer_args(tmp_path),
            f"--ckpt_path={ckpt}",
            f"--output_dir={out}",
            "--tolerance=0.1",
            "--num_projections=8",
            "--samples_per_class=8",
            "--max_batches=3",
            "--preset=paper",
            "--recalibrate=true",
        ]
    )
    report = json.loads((out / "report.json").read_text())["report"]
    pipeline = {
        "preset": "paper",
        "observe": "output",
        "reconstruction": "abs_of_sum",
        "group_policy": "min_count",
        "allocation": "tod",
        "recalibrate": True,
        "compensate": False,
        "criterion": "fair",
    }
    assert {key: report["options"][key] for key in pipeline} == pipeline  # options: the whole config
    assert report["recalibrated"] and not report["compensated"]
    with pytest.raises(SystemExit):  # a bad value is refused by the parser, before anything runs
        FairCLI(args=["prune", *MODEL, *trainer_args(tmp_path), f"--ckpt_path={ckpt}", "--allocation=layerwise"])


def test_prune_subcommand_on_pruned_checkpoint_with_fit_config(trained, tmp_path):
    """A config written by ``fit`` (callback section, ckpt_path, weights_only) is reused; pruning a pruned
    checkpoint replays its history first and prunes further."""
    cli, _ = trained
    fit = FairCLI(args=["fit", *MODEL, *trainer_args(tmp_path / "fit"), "--prune.tolerance=0.05", *FAST_PRUNE])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    config = tmp_path / "fit" / "config.yaml"
    assert "prune:" in config.read_text()
    with pytest.warns(UserWarning, match="ignored by the prune subcommand"):
        cli = FairCLI(
            args=[
                "prune",
                "-c",
                str(config),
                f"--ckpt_path={ckpt}",
                f"--output_dir={tmp_path / 'out'}",
                "--tolerance=0.2",
                "--num_projections=8",
                "--samples_per_class=8",
            ]
        )
    assert sum(widths(cli.model)) < sum(widths(fit.model))
    restored = ImageClassifier.load_from_checkpoint(tmp_path / "out" / "pruned.ckpt")
    assert widths(restored) == widths(cli.model)


def test_help_documents_the_prune_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        FairCLI(args=["fit", "--help"])
    assert exit_.value.code == 0
    fit_help = capsys.readouterr().out
    for option in (
        "--prune.tolerance",
        "--prune.prune_at",
        "--prune.target_macs",
        "--prune.ignored_layers",
        "--prune=FairPruneCallback",
        "--prune.help",
    ):
        assert option in fit_help

    with pytest.raises(SystemExit):
        FairCLI(args=["prune", "--help"])
    prune_help = capsys.readouterr().out
    for option in (
        "--ckpt_path",
        "--output_dir",
        "--tolerance",
        "--target_macs",
        "--target_params",
        "--samples_per_class",
        "--num_projections",
        "--observe",
        "--pairs",
        "--seed",
        "--ranking",
        "--group_policy",
        "--ignored_layers",
        "--max_batches",
        "tolerance of difference",
    ):
        assert option in prune_help

    with pytest.raises(SystemExit):
        FairCLI(args=["fit", "--prune.help", "FairPruneCallback"])
    assert "tolerance of difference" in capsys.readouterr().out


def test_console_script(trained, tmp_path):
    _, ckpt = trained
    script = shutil.which("lightning-fair", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "lightning_fair.lightning.cli"]
    out = tmp_path / "out"
    run = subprocess.run(
        [
            *command,
            "prune",
            *MODEL,
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--ckpt_path={ckpt}",
            f"--output_dir={out}",
            "--target_macs=0.7",
            "--num_projections=8",
            "--samples_per_class=8",
            "--pairs=mean",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "MACs" in run.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["report"]["macs_ratio"] <= 0.7 and (out / "pruned.ckpt").is_file()
    assert report["options"]["pairs"] == "mean"


def test_import_lightning_fair_does_not_import_the_cli():
    code = "import sys, lightning_fair; lightning_fair.FairPruneCallback; print('jsonargparse' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stderr
