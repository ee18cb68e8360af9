"""Statistics across processes: 2 CPU processes (gloo) get the scores of one process on all data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)], torch.load(
        out / "single.pt", weights_only=True
    )


def test_every_rank_gets_the_single_process_scores(ranks):
    (r0, r1), single = ranks
    for field in ("utilization", "reconstruction", "taylor_sum", "f_statistic", "filter_norm"):
        assert len(r0["scores"][field]) == len(single["scores"][field]) > 0, field
        for a, b, c in zip(r0["scores"][field], r1["scores"][field], single["scores"][field]):
            assert torch.equal(a, b), field  # ranks agree bitwise
            torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-9)  # = one process on all the data
    assert r0["scores"]["class_counts"] == r1["scores"]["class_counts"] == single["scores"]["class_counts"]
    assert r0["scores"]["config"]["num_batches"] == single["scores"]["config"]["num_batches"] == 9
    for name, mean in single["scores"]["input_means"].items():
        assert torch.equal(r0["scores"]["input_means"][name], r1["scores"]["input_means"][name])
        torch.testing.assert_close(r0["scores"]["input_means"][name], mean, rtol=1e-9, atol=1e-12)
    assert r0["scores"]["input_f_statistic"].keys() == single["scores"]["input_f_statistic"].keys()
    for name, f in single["scores"]["input_f_statistic"].items():  # screening sums merged across ranks
        assert torch.equal(r0["scores"]["input_f_statistic"][name], r1["scores"]["input_f_statistic"][name])
        torch.testing.assert_close(r0["scores"]["input_f_statistic"][name], f, rtol=1e-6, atol=1e-9)
    for key in ("calibration_loss", "calibration_accuracy"):
        assert r0["scores"]["config"][key] == pytest.approx(single["scores"]["config"][key], rel=1e-6)


def test_every_rank_prunes_the_same_channels_as_one_process(ranks):
    (r0, r1), single = ranks
    assert r0["removed"] == r1["removed"] == single["removed"] and r0["removed"]
    assert r0["state"].keys() == single["state"].keys()
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key  # weights, compensated biases, BatchNorm statistics
        torch.testing.assert_close(value.double(), single["state"][key].double(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- FairPruneCallback under Lightning DDP
@pytest.fixture(scope="module")
def lightning_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_lightning")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_lightning_worker.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"lightning_rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_ddp_validate_scores_equal_one_process_on_all_the_validation_data(lightning_ranks):
    from lightning_fair import compute_scores
    from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier

    r0, r1 = lightning_ranks
    assert r0["world_size"] == 2
    model = ImageClassifier(width=8)
    model.load_state_dict(r0["initial"])
    data = DigitsDataModule(batch_size=64, val_size=256)
    data.setup("validate")
    single = compute_scores(model, data.val_dataloader(), samples_per_class=64, num_projections=16, seed=5)
    assert r0["scores"]["config"]["num_batches"] == single.config["num_batches"] == 4  # 2 per rank
    for i, name in enumerate(single.layers):
        for field in ("utilization", "reconstruction"):
            assert torch.equal(r0["scores"][field][i], r1["scores"][field][i]), (field, name)
            torch.testing.assert_close(r0["scores"][field][i], getattr(single, field)[name], rtol=1e-5, atol=1e-8)
    assert r0["removed"] == r1["removed"] and r0["removed"]
    for key, value in r0["pruned_state"].items():  # each rank's own pruning, before DDP re-wraps
        assert torch.equal(value, r1["pruned_state"][key]), key


def test_ddp_fit_prunes_the_same_channels_then_keeps_training(lightning_ranks):
    r0, r1 = lightning_ranks
    assert r0["fit_removed"] == r1["fit_removed"] and r0["fit_removed"]
    assert [e["epoch"] for e in r0["fit_events"]] == [0]
    for key, value in r0["fit_pruned_state"].items():
        assert torch.equal(value, r1["fit_pruned_state"][key]), key
    # two more epochs under DDP: the ranks stay identical, and the weights moved
    moved = False
    for key, value in r0["fit_final_state"].items():
        assert torch.equal(value, r1["fit_final_state"][key]), key
        assert value.shape == r0["fit_pruned_state"][key].shape
        moved |= value.is_floating_point() and not torch.equal(value, r0["fit_pruned_state"][key])
    assert moved
    # the optimizer and the new DDP wrapper hold exactly the pruned model's parameters
    assert r0["optimizer_params"] == r0["model_params"] == r0["wrapped_params"]
