"""Loss and accuracy across processes: ``evaluate(..., distributed=True)`` (torchmetrics' sync) and the
calibration loss/accuracy that ``FairPruneCallback`` logs after pruning under DDP, on 2 CPU processes
(gloo) with shards of different sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.distributed


def run_worker(mode: str, out: Path) -> list:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_evaluate_worker.py"), mode, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"{mode}_rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_evaluate_distributed_is_the_single_process_result_on_all_shards(tmp_path):
    r0, r1 = run_worker("plain", tmp_path)
    for rank in (r0, r1):
        assert rank["synced"] == r0["synced"]  # every rank gets the same numbers
        assert rank["synced"]["loss"] == pytest.approx(rank["single"]["loss"], rel=1e-12)
        assert rank["synced"]["accuracy"] == pytest.approx(rank["single"]["accuracy"], rel=1e-12)
        assert rank["training"]  # train/eval flags put back
    # the shards differ in size: pooling is not the mean of the two ranks' results
    mean_of_ranks = (r0["local"]["accuracy"] + r1["local"]["accuracy"]) / 2
    assert abs(mean_of_ranks - r0["synced"]["accuracy"]) > 1e-4


def test_callback_logs_the_after_pruning_metrics_over_all_ranks(tmp_path):
    r0, r1 = run_worker("lightning", tmp_path)
    assert r0["logged"] == r1["logged"]
    for key in ("loss", "accuracy"):
        assert r0["logged"][f"fair/calibration_{key}_after"] == pytest.approx(r0["single"][key], rel=1e-12), key
    mean_of_ranks = (r0["local"]["accuracy"] + r1["local"]["accuracy"]) / 2
    assert abs(mean_of_ranks - r0["logged"]["fair/calibration_accuracy_after"]) > 1e-4
