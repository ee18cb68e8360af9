"""ranking="utilization" (FAIR's U) vs ranking="utilization_x_consumers" (U times how strongly the
consumers read each unit), on the benchmark's cached trained models only (issue 11).

Both rankings use the same per-layer counts (the default pipeline: global U threshold searched to
the kept-MACs target, mean-replacement compensation, BatchNorm re-estimation on the calibration
split); only which units go differs. Per model, seed and target it records held-out top-1 after
one-shot pruning (no fine-tuning) for both, and checks that the pruned models have the same shapes.

* ``quality``: the small models of quality.py (``common.tasks()``: LeNet-300-100, VGG-BN, ResNet,
  small CNN), seeds 0, 1, 2 (the training seed is the scores' and the pruning's seed, as in
  quality.py's ``fair`` row, whose "recal" column is this default pipeline);
* ``standard``: the four standard models of standard.py (``ModelRun``, training and pruning seed 0;
  ``--score-seed`` seeds the scores' random projections, 0 as in standard.py).

A model missing from the cache is an error: this never trains.

Run:  python examples/benchmarks/consumer_ranking.py quality [--models lenet,resnet] [--seeds 0,1,2]
      python examples/benchmarks/consumer_ranking.py standard [--models resnet20,mobilenet_v2] [--score-seed 1]
      [--targets 0.5,0.3] [--cache DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair import compute_scores  # noqa: E402

RANKINGS = ("utilization", "utilization_x_consumers")
TARGETS = (0.5, 0.3)


def cached(task, seed: int) -> None:
    path = common.CACHE_DIR / f"{task.name}-seed{seed}-{task.config_hash()}.pt"
    if not path.exists():
        raise SystemExit(f"no cached model at {path}: this script never trains (run quality.py / standard.py first)")


def compare(model, calib, scores, seed: int, targets, accuracy) -> dict:
    """``{target: {ranking: accuracy, "kept": kept MACs}}``; the two rankings' pruned shapes must agree."""
    out = {}
    for t in targets:
        row, shapes = {}, []
        for ranking in RANKINGS:
            result = lightning_fair.prune(
                common.clone(model), calib, target_macs=t, scores=scores, seed=seed, ranking=ranking
            )
            shapes.append([tuple(p.shape) for p in result.model.parameters()])
            row[ranking] = round(accuracy(result.model.eval()), 2)
            row["kept"] = round(result.report.macs_ratio, 4)
        assert shapes[0] == shapes[1], "the rankings removed different counts"
        out[t] = row
    return out


def quality_rows(models, seeds, targets) -> dict:
    all_tasks = common.tasks()
    rows = {}
    for name in models or list(all_tasks):
        task = all_tasks[name]
        for seed in seeds:
            cached(task, seed)
            data = common.load_data(task.data)
            model = common.trained_model(task, seed, verbose=False)
            calib = common.loader(data.calib, batch_size=100)
            start = time.perf_counter()
            scores = compute_scores(model, calib, observe="activation", seed=seed)
            rows[name, seed] = compare(model, calib, scores, seed, targets, lambda m: common.accuracy(m, data.test))
            print(
                f"{name} seed {seed}: {json.dumps(rows[name, seed])} ({time.perf_counter() - start:.0f}s)", flush=True
            )
    return rows


def standard_rows(models, targets, score_seed: int = 0) -> dict:
    import standard

    st = standard.settings(False)
    rows = {}
    for name in models or list(standard.tasks()):
        task = standard.tasks()[name]
        cached(task, 0)
        run = standard.ModelRun(task, 0, st, defaultdict(float))
        start = time.perf_counter()
        scores = compute_scores(run.model, run.calib, seed=score_seed)  # standard.py: score_seed = run.seed = 0
        rows[name, score_seed] = compare(run.model, run.calib, scores, run.seed, targets, run.accuracy)
        print(
            f"{name} score seed {score_seed}: {json.dumps(rows[name, score_seed])} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return rows


def table(rows: dict, targets) -> str:
    """Markdown: mean ± std over seeds per model and target, both rankings and their difference."""
    by_model = defaultdict(list)
    for (name, seed), row in rows.items():
        by_model[name].append(row)

    def fmt(values):
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    lines = [
        "| model | kept MACs | seeds | utilization | utilization_x_consumers | difference (per seed) |",
        "|---|---|---|---|---|---|",
    ]
    for name, seed_rows in by_model.items():
        for t in targets:
            u = [r[t]["utilization"] for r in seed_rows]
            x = [r[t]["utilization_x_consumers"] for r in seed_rows]
            diff = [b - a for a, b in zip(u, x)]
            lines.append(
                f"| {name} | {t} | {len(seed_rows)} | {fmt(u)} | {fmt(x)} | {fmt(diff)} "
                f"({', '.join(f'{d:+.1f}' for d in diff)}) |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=("quality", "standard"))
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--seeds", default="0,1,2", help="quality suite: comma-separated seeds")
    parser.add_argument("--score-seed", type=int, default=0, help="standard suite: the projections' seed")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    parser.add_argument("--cache", default=None, help="the trained-model cache (default: examples/benchmarks/.cache)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.cache:
        common.CACHE_DIR = Path(args.cache)
    models = args.models.split(",") if args.models else None
    targets = tuple(float(t) for t in args.targets.split(","))
    if args.suite == "quality":
        rows = quality_rows(models, [int(s) for s in args.seeds.split(",")], targets)
    else:
        rows = standard_rows(models, targets, args.score_seed)
    print(table(rows, targets))
    if args.json:
        Path(args.json).write_text(
            json.dumps([{"model": n, "seed": s, "rows": r} for (n, s), r in rows.items()], indent=1)
        )


if __name__ == "__main__":
    main()
