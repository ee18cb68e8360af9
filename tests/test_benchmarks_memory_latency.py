"""Smoke tests for examples/benchmarks/memory.py and latency.py (tiny settings, a few seconds)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lightning_fair import prune
from lightning_fair.demos import zoo

BENCHMARKS = Path(__file__).resolve().parents[1] / "examples" / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def memory():
    return load("memory")


@pytest.fixture(scope="module")
def latency():
    return load("latency")


def tiny_cnn():
    torch.manual_seed(0)
    return zoo.small_cnn(width=4).eval()


def test_memory_buffers_flat_in_batches_linear_in_n(memory, tmp_path):
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = memory.run(
        quick=True,
        models={"tiny": (model, torch.zeros(1, 1, 8, 8))},
        batch_counts=(1, 3),
        samples_per_class=(2, 4),
        batch_size=16,
        num_projections=8,
        measure_rss=False,
    )
    rows = results["rows"]
    assert len(rows) == 4
    by_n = {}
    for row in rows:
        by_n.setdefault(row["samples_per_class"], set()).add(row["buffer_bytes"])
        assert row["buffer_bytes"] == row["predicted_bytes"]
    assert all(len(v) == 1 for v in by_n.values())  # identical across batch counts
    assert by_n[4].pop() > by_n[2].pop()
    summary = results["summary"]["tiny"]
    assert summary["buffers_constant_in_batches"] and summary["buffers_linear_in_n"] and summary["formula_matches"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    text = memory.to_markdown(results)
    assert text.startswith("### ") and "| tiny | 3 | 4 |" in text
    pytest.importorskip("matplotlib")
    paths = memory.plot(results, tmp_path / "img")
    assert paths and all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)


def test_memory_subprocess_peak(memory):
    results = memory.run(
        models={"tiny": (tiny_cnn(), torch.zeros(1, 1, 8, 8))},
        batch_counts=(2,),
        samples_per_class=(2,),
        batch_size=16,
        num_projections=8,
    )
    row = results["rows"][0]
    assert "rss_error" not in results["models"]["tiny"], results["models"]["tiny"]
    assert row["peak_delta_mib"] is not None and row["peak_delta_mib"] >= 0
    assert row["plain_peak_delta_mib"] is not None
    assert row["buffer_bytes"] == row["predicted_bytes"]
    if sys.platform.startswith("linux"):
        assert row["peak_source"] == "VmHWM" and len(row["rss_trace_mib"]) == 3
    if sys.platform.startswith("linux"):
        assert row["peak_source"] == "VmHWM" and len(row["rss_trace_mib"]) == 3


def test_latency_pruned_vs_original(latency, tmp_path):
    original = tiny_cnn()
    data = [(torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 10)]
    pruned = prune(original, data, tolerance=0.3, samples_per_class=4, num_projections=8, inplace=False).model
    results = latency.run(
        quick=True, models={"tiny": (original, pruned, torch.zeros(1, 1, 8, 8))}, threads=(1,), repeats={1: 3, 64: 2}
    )
    rows = results["rows"]
    assert [r["kind"] for r in rows] == ["structured", "unstructured"]
    for row in rows:
        for bs in (1, 64):
            assert row[f"b{bs}"]["original_ms"] > 0 and row[f"b{bs}"]["pruned_ms"] > 0
    assert rows[0]["macs_ratio"] < 1.0
    assert rows[1]["macs_ratio"] == 1.0 and rows[1]["nonzero_pruned"] < 0.75
    assert original.training is False and pruned.training is False

    text = latency.to_markdown(results)
    assert text.startswith("### ") and "| tiny |" in text and "unstructured" in text
    pytest.importorskip("matplotlib")
    paths = latency.plot(results, tmp_path)
    assert paths and all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)
