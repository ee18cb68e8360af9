"""The README's demo and the plain-API example run end to end (small settings)."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, args, capsys):
    old_argv = sys.argv
    sys.argv = [name, *args]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = old_argv
    return capsys.readouterr().out


def test_lightning_demo_prints_report_and_accuracies(capsys):
    out = run_example("demo.py", ["--epochs", "5", "--finetune-epochs", "1"], capsys)
    assert "MACs" in out and "net.features.0.0" in out
    line = next(text for text in out.splitlines() if text.startswith("held-out test accuracy"))
    trained = float(line.split("trained ")[1].split("%")[0])
    assert trained > 80.0, line


def test_plain_api_demo(capsys):
    out = run_example("prune_digits.py", ["--width", "8", "--target-macs", "0.8"], capsys)
    assert "held-out accuracy" in out
    kept = float(out.split("MACs kept ")[1].split("%")[0])
    assert kept <= 80.0 + 1e-6, out


@pytest.mark.parametrize("args", [["--quick", "--no-reference"]])
def test_benchmark_smoke(args, capsys):
    out = run_example("benchmarks/score_speed.py", args, capsys)
    assert "small_cnn" in out and "ours/plain" in out


def test_class_pairs_benchmark_smoke(capsys):
    """class_pairs.py --quick: max against mean over the class pairs, both allocations, on two tiny models."""
    pytest.importorskip("mlxtend")
    out = run_example("benchmarks/class_pairs.py", ["--quick", "--parts", "standard"], capsys)
    assert "| model (unpruned %) | kept MACs | `max`, global | `max`, standardised | `mean`, global |" in out
    assert out.count("| VGG-BN, 1/8 width, 7 layers") == 2 and '`pairs="mean"` against the default' in out


def test_benchmark_suite_quick_writes_page(tmp_path, capsys):
    """run_all.py --quick: the docs page and its plots are written, with the FAIR row and every section."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    run_example("benchmarks/run_all.py", ["--quick", "--out", str(tmp_path)], capsys)
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| FAIR (ours, default pipeline) |" in page
    assert "## Accuracy after pruning" in page and "## Score-collection speed" in page
    assert "### Variant study" in page and "best torch-pruning baseline (+ BatchNorm re-estimation)" in page
    # standard architectures (standard.py): per-model tables with fine-tuning columns, gradual vs one step
    assert "## Standard architectures, with fine-tuning" in page and "#### FAIR minus the best baseline" in page
    assert "| method | one-shot 0.5 | one-shot 0.3 | (a) 0.5 |" in page and "#### Gradual vs one step" in page
    # the ViT (vit.py): FAIR and torch-pruning's head pruning, one-shot and fine-tuned
    assert "## A small Vision Transformer" in page and "| uniform L2 magnitude, heads |" in page
    assert "| FAIR (ours, default pipeline) | failed" not in page
    # the tiny BERT (bert.py): Hugging Face batches, heads and feed-forward neurons
    assert (
        "## A tiny BERT on a sequence task" in page
        and "heads per layer; feed-forward neurons per layer; pooler" in page
    )
    images = list((tmp_path / "img").glob("*.png"))
    assert images, "no plot written"
    for image in images:
        assert f"img/{image.name}" in page


def test_zoo_sweep_exits_cleanly_without_torchvision(capsys):
    """examples/benchmarks/zoo_sweep.py tries the issue-14 zoo where torchvision/timm exist; here it skips."""
    out = run_example("benchmarks/zoo_sweep.py", ["--only", "no_such_model"], capsys)
    assert out.startswith("skipped:"), out
