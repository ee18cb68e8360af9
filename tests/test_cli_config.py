"""The documented YAML / command-line forms of the pruning options (docs/lightning.md, section 3), run
as a user runs them: FairCLI(args=[...]) with config files written to disk.

tests/test_cli.py covers the ``--prune.*`` flags, a flat ``prune:`` section with tolerance and
prune_at, ``trainer.callbacks`` in class_path/init_args form and the ``prune`` subcommand; here:
a ``prune:`` section with a preset, a target and ``ignored_layers`` that runs a fit; the ``prune:``
section in class_path/init_args form; ``trainer.callbacks`` with ``preset: paper`` under FairCLI;
the subcommand's ``--preset``/``--ignored_layers``/``--target_macs`` flags; and ``--prune.help
FairPruneCallback`` listing every PruneConfig field with its description.
"""

import dataclasses
import json
import re

import pytest

pytest.importorskip("jsonargparse")
from lightning_fair import FairPruneCallback, PruneConfig  # noqa: E402
from lightning_fair.lightning.cli import FairCLI  # noqa: E402

MODEL = [
    "--model=lightning_fair.demos.digits.ImageClassifier",
    "--model.width=8",
    "--data=lightning_fair.demos.digits.DigitsDataModule",
]
FIRST_CONV = "net.features.0.0"


from lightning_helpers import trainer_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_cli")


def the_callback(cli) -> FairPruneCallback:
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    return callback


def test_prune_section_with_preset_target_and_ignored_layers_runs_a_fit(tmp_path):
    config = tmp_path / "pruning.yaml"
    config.write_text(
        "prune:\n"
        "  target_macs: 0.6\n"
        "  prune_at: 0\n"
        "  preset: paper\n"
        f"  ignored_layers: [{FIRST_CONV}]\n"
        "  samples_per_class: 8\n"
        "  num_projections: 8\n"
        "  progress: false\n"
        "  verbose: false\n"
    )
    cli = FairCLI(args=["fit", *MODEL, "-c", str(config), *trainer_args(tmp_path)])
    callback = the_callback(cli)
    assert callback.config == PruneConfig.paper(
        target_macs=0.6, ignored_layers=[FIRST_CONV], samples_per_class=8, num_projections=8
    )
    assert callback.prune_at == 0 and not callback.progress and not callback.verbose
    assert [event["epoch"] for event in callback.events] == [0]
    report = callback.last_result.report
    assert report.macs_ratio <= 0.6
    # the paper preset: U on the layer output, ToD counts, nothing after removal
    assert {key: report.options[key] for key in ("preset", "observe", "allocation", "compensate", "recalibrate")} == {
        "preset": "paper",
        "observe": "output",
        "allocation": "tod",
        "compensate": False,
        "recalibrate": False,
    }
    assert report.options["ignored_layers"] == [FIRST_CONV]
    assert cli.model.net.features[0][0].out_channels == 8  # the ignored layer kept all its channels
    assert callback.last_result.level_name == "tolerance"


def test_prune_section_in_class_path_init_args_form(tmp_path):
    config = tmp_path / "pruning.yaml"
    config.write_text(
        "prune:\n  class_path: lightning_fair.FairPruneCallback\n"
        "  init_args:\n    tolerance: 0.1\n    prune_at: 3\n    criterion: screening\n"
    )
    callback = the_callback(FairCLI(args=[*MODEL, "-c", str(config), *trainer_args(tmp_path)], run=False))
    assert callback.prune_at == 3 and callback.config == PruneConfig(tolerance=0.1, criterion="screening")


def test_trainer_callbacks_with_a_preset_under_faircli(tmp_path):
    config = tmp_path / "pruning.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_fair.FairPruneCallback\n"
        "      init_args:\n        preset: paper\n        target_params: 0.5\n"
        "        ignored_layers: [net.head.0]\n        prune_at: validate\n"
    )
    cli = FairCLI(args=[*MODEL, "-c", str(config), *trainer_args(tmp_path)], run=False)
    callback = the_callback(cli)
    assert cli.config.prune is None  # trainer.callbacks, not the --prune group
    assert callback.prune_at == "validate"
    assert callback.config == PruneConfig.paper(target_params=0.5, ignored_layers=["net.head.0"])


def test_prune_subcommand_preset_target_and_ignored_layers_flags(tmp_path):
    fit = FairCLI(args=["fit", *MODEL, *trainer_args(tmp_path / "fit")])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "out"
    cli = FairCLI(
        args=[
            "prune",
            *MODEL,
            *trainer_args(tmp_path),
            f"--ckpt_path={ckpt}",
            f"--output_dir={out}",
            "--preset=paper",
            "--target_macs=0.7",
            f"--ignored_layers=[{FIRST_CONV}]",
            "--num_projections=8",
            "--samples_per_class=8",
            "--max_batches=2",
        ]
    )
    report = json.loads((out / "report.json").read_text())
    options = report["options"]
    assert options["preset"] == "paper" and options["target_macs"] == 0.7
    assert options["ignored_layers"] == [FIRST_CONV] and options["max_batches"] == 2
    assert report["report"]["macs_ratio"] <= 0.7
    assert report["level_name"] == "tolerance" and report["level"] == report["tolerance"]  # the paper's ToD
    # counts: the units each layer lost, as the report's rows say (coupled layers reconciled)
    rows = {row["name"]: row["before"] - row["after"] for row in report["report"]["layers"]}
    assert report["counts"] == {name: removed for name, removed in rows.items() if removed}
    assert FIRST_CONV not in report["counts"]
    assert cli.model.net.features[0][0].out_channels == 8


def _descriptions():
    """``{field: first words of its description}`` from PruneConfig's docstring (the Args section)."""
    text = PruneConfig.__doc__.split("Args:")[1].split("Raises:")[0]
    found = dict(re.findall(r"^ {8}(\w+): (.+)$", text, flags=re.MULTILINE))
    return {name: " ".join(found[name].split()[:4]) for name in found}


def _normalised(text: str) -> str:
    text = re.sub(r"-\s*\n\s*", "-", text)  # argparse wraps lines at hyphens
    return " ".join(text.split())


def test_prune_help_lists_every_config_field_with_its_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        FairCLI(args=["fit", "--prune.help", "FairPruneCallback"])
    assert exit_.value.code == 0
    printed = _normalised(capsys.readouterr().out)
    descriptions = _descriptions()
    fields = [field.name for field in dataclasses.fields(PruneConfig)]
    assert sorted(descriptions) == sorted(fields)  # every field is documented
    for name in [*fields, "prune_at", "progress", "verbose", "recalibrate_each_epoch", "unpack", "loss_fn"]:
        assert f"--prune.{name}" in printed, name
    for name, words in descriptions.items():
        assert _normalised(words) in printed, (name, words)


def test_example_prune_section_file_and_flag_override(tmp_path):
    """examples/lightning/prune_section.yaml (docs/lightning.md) parses, and a flag overrides one of its keys."""
    from pathlib import Path

    example = str(Path(__file__).resolve().parents[1] / "examples" / "lightning" / "prune_section.yaml")
    callback = the_callback(FairCLI(args=["-c", example, *trainer_args(tmp_path)], run=False))
    assert callback.prune_at == 5 and not callback.progress
    assert callback.config == PruneConfig.paper(target_macs=0.5, ignored_layers=[FIRST_CONV])
    callback = the_callback(
        FairCLI(args=["-c", example, "--prune.target_macs=0.4", *trainer_args(tmp_path)], run=False)
    )
    assert callback.config == PruneConfig.paper(target_macs=0.4, ignored_layers=[FIRST_CONV])
    with pytest.raises(ValueError, match="tolerance"):  # out of range: PruneConfig refuses it before any fit
        FairCLI(
            args=["-c", example, "--prune.target_macs=null", "--prune.tolerance=2", *trainer_args(tmp_path)], run=False
        )
    with pytest.raises(SystemExit):  # a misspelt option: the parser refuses it
        FairCLI(args=["-c", example, "--prune.tolerence=0.1", *trainer_args(tmp_path)], run=False)


def test_num_projections_auto_and_an_integer_from_the_command_line(tmp_path):
    """``num_projections`` is ``Union[int, Literal["auto"]]``: both forms parse, anything else is refused."""
    auto = the_callback(FairCLI(args=[*MODEL, "--prune.num_projections=auto", *trainer_args(tmp_path)], run=False))
    assert auto.config.num_projections == "auto" and auto.config == PruneConfig()
    fixed = the_callback(FairCLI(args=[*MODEL, "--prune.num_projections=64", *trainer_args(tmp_path)], run=False))
    assert fixed.config.num_projections == 64
    with pytest.raises(SystemExit):
        FairCLI(args=[*MODEL, "--prune.num_projections=many", *trainer_args(tmp_path)], run=False)
