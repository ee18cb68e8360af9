"""What the least-squares refit costs beside the scoring pass, measured side by side in one run.

For each model (the four standard CNNs of standard.py and the ViT of vit.py, trained seed 0, cached;
the calibration split of 500 images in batches of 100, one torch thread): the time of
``compute_scores`` (the statistics pass: one forward and one backward per batch, then the
distances), of the refit's extra pass (``collect_refit_statistics``: one forward of the unpruned
model with the consumers' products accumulated) and of the solves (``refit_consumers``), for the
consumers that the default pipeline cuts at kept MACs 0.3; and the bytes of the refit's statistics
(:func:`lightning_fair.repair.refit.refit_bytes`) beside those of the scoring statistics
(``estimate_memory(...).total_bytes``). Ratios are to the scoring pass, measured in the same run.

Run:  python examples/benchmarks/refit_cost.py [--models vgg11_bn,resnet20,resnet56,mobilenet_v2,vit]
"""

from __future__ import annotations

import argparse
import copy
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


def setup(name: str):
    if name == "vit":
        run = vit.Run(vit.task(False), False, 0)
        return run.model, run.calib, run.example
    run = standard.ModelRun(standard.tasks()[name], 0, standard.settings(False), defaultdict(float))
    return run.model, run.calib, run.example


def measure(name: str, target: float = 0.3) -> dict:
    model, calib, example = setup(name)
    start = time.perf_counter()
    scores = lightning_fair.compute_scores(model, calib, seed=0)
    scoring = time.perf_counter() - start
    pruned = lightning_fair.prune(common.clone(model), calib, target_macs=target, scores=scores, seed=0)
    followers = {n: c.follower for n, c in capture_consumers(model, build_graph(model, example)).items()}
    targets, _ = refit.refit_targets(model, pruned.kept, followers)
    start = time.perf_counter()
    stats = refit.collect_refit_statistics(model, targets, calib)
    gather = time.perf_counter() - start
    copy_of_pruned = copy.deepcopy(pruned.model)
    start = time.perf_counter()
    done, _ = refit.refit_consumers(copy_of_pruned, targets, stats)
    solve = time.perf_counter() - start
    memory = estimate_memory(model, example)
    return {
        "scoring": scoring,
        "gather": gather,
        "solve": solve,
        "consumers": len(done),
        "refit_bytes": refit.refit_bytes(model, targets),
        "statistics_bytes": memory.total_bytes,
        "largest": max((targets[n].columns(dict(model.named_modules())[n]) for n in targets), default=0),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(LABEL))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "| model | scoring pass s | refit pass s (ratio) | solves s | consumers refitted | largest D | "
        "refit statistics | scoring statistics |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        r = measure(name)
        print(
            f"| {LABEL[name]} | {r['scoring']:.1f} | {r['gather']:.1f} ({r['gather'] / r['scoring']:.2f}) | "
            f"{r['solve']:.2f} | {r['consumers']} | {r['largest']} | {r['refit_bytes'] / 2**20:.1f} MiB | "
            f"{r['statistics_bytes'] / 2**20:.1f} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
