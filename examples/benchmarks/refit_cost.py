"""What the least-squares refit costs beside the scoring pass, measured side by side in one run.

For each model (the four standard CNNs of standard.py and the ViT of vit.py, trained seed 0, cached;
the calibration split of 500 images in batches of 100, one torch thread): the time of
``compute_scores`` (the statistics pass: one forward and one backward per batch, then the
distances), of the refit's extra pass (``collect_refit_statistics``: one forward of the unpruned
model with the consumers' products accumulated) and of the solves (``refit_consumers``), for the
consumers that the default pipeline cuts at kept MACs 0.3; and the bytes of the refit's statistics
(:func:`lightning_fair.repair.refit.refit_bytes`) beside those of the scoring statistics
(``estimate_memory(...)``: U's samples, R's sums, the mean inputs; and its peak with the distances' work buffer). Ratios are to the scoring pass, measured in the same run.

Run:  python examples/benchmarks/refit_cost.py [--models vgg11_bn,resnet20,resnet56,mobilenet_v2,vit]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import standard  # noqa: E402
import vit  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair.collect.memory import estimate_memory  # noqa: E402
from lightning_fair.removal.graph import build_graph  # noqa: E402
from lightning_fair.repair import refit  # noqa: E402
from lightning_fair.repair.compensation import capture_consumers  # noqa: E402

LABEL = {
    "vgg11_bn": "VGG-11-BN",
    "resnet20": "ResNet-20",
    "resnet56": "ResNet-56",
    "mobilenet_v2": "MobileNetV2",
    "vit": "ViT (vit.py)",
}


def setup(name: str, quick: bool = False):
    if name == "vit":
        run = vit.Run(vit.task(quick), quick, 0)
        return run.model, run.calib, run.example
    run = standard.ModelRun(standard.tasks(quick)[name], 0, standard.settings(quick), defaultdict(float))
    return run.model, run.calib, run.example


def measure(name: str, target: float = 0.3, quick: bool = False) -> dict:
    model, calib, example = setup(name, quick)
    start = time.perf_counter()
    scores = lightning_fair.compute_scores(model, calib, seed=0)
    scoring = time.perf_counter() - start
    pruned = lightning_fair.prune(common.clone(model), calib, target_macs=target, scores=scores, seed=0)
    followers = {n: c.follower for n, c in capture_consumers(model, build_graph(model, example)).items()}
    targets, _ = refit.refit_targets(model, pruned.kept, followers)
    start = time.perf_counter()
    stats = refit.collect_refit_statistics(model, targets, calib)
    gather = time.perf_counter() - start
    start = time.perf_counter()
    for name_, stat in stats.items():
        stat.solve(intercept=targets[name_].intercept != "none")
    solve = time.perf_counter() - start
    memory = estimate_memory(model, example)
    return {
        "scoring": scoring,
        "gather": gather,
        "solve": solve,
        "consumers": len(stats),
        "refit_bytes": refit.refit_bytes(model, targets),
        "statistics_bytes": memory.samples_bytes + memory.reconstruction_bytes + memory.input_bytes,
        "peak_bytes": memory.total_bytes,
        "largest": max((targets[n].columns(dict(model.named_modules())[n]) for n in targets), default=0),
    }


def run(quick: bool = False, models=tuple(LABEL), threads: int = 1) -> dict:
    """The cost table of every model (quick: the tiny versions of standard.py and vit.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    names = [m for m in models if m == "vit" or m in standard.tasks(quick)]
    lines = [
        "| model | scoring pass s | refit pass s (ratio to scoring) | solves s | consumers refitted | largest D | "
        "refit statistics | scoring statistics (peak with the distances' work buffer) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    try:
        for name in names:
            r = measure(name, quick=quick)
            lines.append(
                f"| {LABEL[name]} | {r['scoring']:.1f} | {r['gather']:.1f} ({r['gather'] / r['scoring']:.2f}) | "
                f"{r['solve']:.2f} | {r['consumers']} | {r['largest']} | {r['refit_bytes'] / 2**20:.1f} MiB | "
                f"{r['statistics_bytes'] / 2**20:.1f} MiB ({r['peak_bytes'] / 2**20:.0f} MiB) |"
            )
            print(lines[-1], flush=True)
    finally:
        torch.set_num_threads(previous)
    return {"table": "\n".join(lines), "quick": quick}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(LABEL))
    parser.add_argument("--quick", action="store_true", help="the tiny models (smoke test)")
    args = parser.parse_args(argv)
    run(args.quick, tuple(args.models.split(",")))


if __name__ == "__main__":
    main()
