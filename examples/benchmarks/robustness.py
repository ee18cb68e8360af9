"""One-shot quality across training seeds and recipes: FAIR vs every torch-pruning baseline on the
standard architectures, each trained with several seeds and two recipes (issue 21).

A single trained model per architecture cannot tell a method from noise: the one-shot accuracy of
the same architecture pruned the same way spreads by tens of points across training seeds. Here
each model of standard.py (VGG-11-BN, ResNet-20, ResNet-56, MobileNetV2) is trained with
``--seeds`` (default 0, 1, 2) under each recipe of :data:`RECIPES`:

* ``sgd``: standard.py's own (SGD, momentum 0.9, Nesterov, weight decay 5e-4, one-cycle lr peaking
  at 0.05, batch 64, 3 or 4 epochs);
* ``adamw``: AdamW (weight decay 0.05), one-cycle lr peaking at 2e-3, the same epochs and batch.

Each trained model is pruned one-shot to kept MACs 0.5 and 0.3 by every method of :data:`METHODS`:
FAIR's variants (``lightning_fair.prune`` from one ``compute_scores`` per model, seeded by the
training seed as standard.py does) and the four baselines of standard.py (torch-pruning uniform L2
/ uniform Taylor / global L2 / LAMP, each followed by BatchNorm re-estimation on the calibration
split). FAIR's default and the best baseline of each cell are then fine-tuned with standard.py's
schedule (a) (SGD, 16 steps over 1000 training images, lr 0.01 cosine to 0), and reported as
"ft / ft + BatchNorm re-estimated".

One JSON per (model, recipe, seed) in ``--out``, filled incrementally: a method already recorded
is not run again, so adding a variant costs only that variant. ``--summary`` prints the tables
(mean ± std, worst model, wins per cell) that docs/benchmarks.md shows.

Run:  python examples/benchmarks/robustness.py --train            # trains what the cache lacks
      python examples/benchmarks/robustness.py [--models resnet20] [--recipes sgd] [--seeds 0,1,2]
                                               [--methods fair,l2] [--no-finetune]
      python examples/benchmarks/robustness.py --summary
Cost on the 2-core development machine, one torch thread: training about 40 s (VGG-11-BN), 25 s
(ResNet-20), 60 s (ResNet-56) and 90 s (MobileNetV2) per model; pruning and evaluation with every
method about 1 to 4 min per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import quality  # noqa: E402
import standard  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair import compute_scores  # noqa: E402

OUT = HERE / ".cache" / "robustness"
MODELS = ("vgg11_bn", "resnet20", "resnet56", "mobilenet_v2")
LABEL = {"vgg11_bn": "VGG-11-BN", "resnet20": "ResNet-20", "resnet56": "ResNet-56", "mobilenet_v2": "MobileNetV2"}
TARGETS = standard.TARGETS

#: recipe name -> how standard.py's task changes
RECIPES: Dict[str, Callable[[standard.StandardTask], standard.StandardTask]] = {
    "sgd": lambda task: task,
    "adamw": lambda task: replace(task, optimizer="adamw", lr=2e-3),
}

#: FAIR's variants: name -> options of lightning_fair.prune (the default pipeline plus these)
FAIR_VARIANTS: Dict[str, dict] = {
    "fair": {"refit": False},  # the default pipeline of 0.2
    "fair_refit": {"refit": True},  # the default pipeline now
    "fair_refit_group": {"refit": True, "ranking": "utilization_x_group"},
    "fair_group": {"refit": False, "ranking": "utilization_x_group"},
    # a control, not FAIR: the refit under magnitude selection (uniform counts, smallest L1 filters go)
    "l1_refit": {"allocation": "uniform", "ranking": "l1", "refit": True},
}
BASELINES = ("l2", "taylor", "global_l2", "lamp")
SHORT = {"l2": "uniform L2", "taylor": "uniform Taylor", "global_l2": "global L2", "lamp": "LAMP"}
METHODS = list(FAIR_VARIANTS) + list(BASELINES)
FINETUNED = ("fair", "fair_refit")  # plus the best baseline of each cell


def task(name: str, recipe: str) -> standard.StandardTask:
    return RECIPES[recipe](standard.tasks()[name])


def train(models: List[str], recipes: List[str], seeds: List[int]) -> None:
    for name in models:
        for recipe in recipes:
            for seed in seeds:
                start = time.perf_counter()
                model = common.trained_model(task(name, recipe), seed)
                acc = common.accuracy(model, common.load_data("mnist").test)
                print(f"{name} {recipe} seed {seed}: {acc:.1f}% ({time.perf_counter() - start:.0f} s)", flush=True)


def baselines(run: standard.ModelRun, wanted: List[str], put) -> None:
    """The baselines of standard.oneshot (same functions, same searches), those in ``wanted`` only."""
    uniform = [m for m in ("l2", "taylor") if m in wanted]
    if uniform:
        ratios, _ = quality.uniform_ratios(run.model, run.example, TARGETS, run.base_macs)
        for method in uniform:
            for t in TARGETS:
                if ratios[t] is not None:
                    put(method, t, run.uniform(run.model, method, t, ratios[t])[0])
    for method in [m for m in ("global_l2", "lamp") if m in wanted]:
        make = quality.GLOBAL[method]
        (ratios_g, _), source = quality.global_ratios(run.model, run.example, TARGETS, run.base_macs, make, run.calib)
        for t in TARGETS:
            if ratios_g[t] is not None:
                pruned = quality.clone_with_grads(source)
                quality.tp_global(pruned, run.example, make(), ratios_g[t])
                put(method, t, common.recalibrate_batchnorm(pruned, run.data.calib))


def measure(name: str, recipe: str, seed: int, methods: List[str], finetune: bool, out_dir: Path) -> dict:
    path = out_dir / f"{name}-{recipe}-seed{seed}.json"
    record = json.loads(path.read_text()) if path.exists() else {"model": name, "recipe": recipe, "seed": seed}
    results = record.setdefault("methods", {})
    todo = [m for m in methods if m not in results]
    need_ft = finetune and any(
        "ft_a" not in results.get(m, {}).get(str(t), {"ft_a": 0}) for m in FINETUNED for t in TARGETS
    )
    if not todo and not need_ft and "unpruned" in record:
        return record
    st = standard.settings(False)
    run = standard.ModelRun(task(name, recipe), seed, st, defaultdict(float))
    record["unpruned"] = run.accuracy(run.model)
    models = {}

    def put(method, t, pruned):
        models[method, t] = pruned
        results.setdefault(method, {})[str(t)] = {"kept": run.kept(pruned), "oneshot": run.accuracy(pruned)}

    fair_todo = [m for m in todo if m in FAIR_VARIANTS]
    if fair_todo:
        start = time.perf_counter()
        scores = compute_scores(run.model, run.calib, seed=seed)
        record.setdefault("seconds", {})["scores"] = time.perf_counter() - start
        for method in fair_todo:
            start = time.perf_counter()
            for t in TARGETS:
                result = lightning_fair.prune(
                    common.clone(run.model), run.calib, target_macs=t, scores=scores, seed=seed, **FAIR_VARIANTS[method]
                )
                put(method, t, result.model.eval())
            record["seconds"][method] = time.perf_counter() - start
    baselines(run, [m for m in todo if m in BASELINES], put)
    if finetune:
        for t in map(str, TARGETS):
            scored = {b: results[b][t]["oneshot"] for b in BASELINES if t in results.get(b, {})}
            best = max(scored, key=scored.get)
            for method in (*FINETUNED, best):
                if method not in results:
                    continue
                cell = results[method][t]
                if "ft_a" in cell:
                    continue
                pruned = models.get((method, float(t)))
                if pruned is None:  # recorded by an earlier run: prune it again (deterministic)
                    return measure_again(name, recipe, seed, method, methods, finetune, out_dir, record, path)
                tuned = run.finetune(common.clone(pruned), "a")
                cell["ft_a"], cell["ft_a_bn"] = run.accuracies(tuned)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def measure_again(name, recipe, seed, method, methods, finetune, out_dir, record, path) -> dict:
    """Forgets ``method``'s one-shot record so the next measure prunes it again and fine-tunes it."""
    del record["methods"][method]
    path.write_text(json.dumps(record, indent=1))
    return measure(name, recipe, seed, methods, finetune, out_dir)


# ---------------------------------------------------------------------------------- summary
def load(out_dir: Path) -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("*-seed*.json"))]


def best_baseline(record: dict, t: str) -> str:
    scored = {b: record["methods"][b][t]["oneshot"] for b in BASELINES if t in record["methods"].get(b, {})}
    return max(scored, key=scored.get)


def spread(values: List[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summary(out_dir: Path, methods: List[str], fair: str = "fair_refit") -> str:
    records = load(out_dir)
    if not records:
        return f"nothing recorded in {out_dir}"
    by_cell = defaultdict(list)  # (model, recipe) -> records
    for r in records:
        by_cell[r["model"], r["recipe"]].append(r)
    lines = []
    shown = [m for m in methods if any(m in r["methods"] for r in records)]
    for t in map(str, TARGETS):
        lines += [
            f"\n#### Kept MACs {t}: one-shot held-out top-1 % (mean ± std over the seeds)\n",
            "| model | recipe | seeds | unpruned | "
            + " | ".join(FAIR_LABEL.get(m, SHORT.get(m, m)) for m in shown)
            + f" | {FAIR_LABEL[fair]} − best baseline, per model | worst gap |",
            "|---|---|---:|---:|" + "---:|" * len(shown) + "---|---:|",
        ]
        for (model, recipe), rs in sorted(by_cell.items(), key=lambda kv: (MODELS.index(kv[0][0]), kv[0][1])):
            cols = [spread([r["methods"][m][t]["oneshot"] for r in rs if t in r["methods"].get(m, {})]) for m in shown]
            gaps = [
                r["methods"][fair][t]["oneshot"] - r["methods"][best_baseline(r, t)][t]["oneshot"]
                for r in rs
                if fair in r["methods"]
            ]
            lines.append(
                f"| {LABEL[model]} | {recipe} | {len(rs)} | {spread([r['unpruned'] for r in rs])} | "
                + " | ".join(cols)
                + f" | {', '.join(f'{g:+.1f}' for g in gaps)} | {min(gaps, default=float('nan')):+.1f} |"
            )
    lines += [
        "\n#### After fine-tune (a): FAIR and the best one-shot baseline of each model, ft / ft + BN re-estimated "
        "(mean over seeds)\n",
        "| model | recipe | kept MACs | "
        + " | ".join(FAIR_LABEL[m] for m in FINETUNED)
        + f" | best baseline | {FAIR_LABEL[fair]} − baseline: ft / ft + BN | wins (ft + BN) |",
        "|---|---|---:|" + "---:|" * (len(FINETUNED) + 3),
    ]
    for (model, recipe), rs in sorted(by_cell.items(), key=lambda kv: (MODELS.index(kv[0][0]), kv[0][1])):
        for t in map(str, TARGETS):
            done = [
                r
                for r in rs
                if all("ft_a" in r["methods"].get(m, {}).get(t, {}) for m in (*FINETUNED, best_baseline(r, t)))
            ]
            if not done:
                continue

            def ft(method_of):
                a = [r["methods"][method_of(r)][t]["ft_a"] for r in done]
                b = [r["methods"][method_of(r)][t]["ft_a_bn"] for r in done]
                return a, b

            cols = [ft(lambda r, m=m: m) for m in FINETUNED]
            base = ft(lambda r: best_baseline(r, t))
            ours = cols[list(FINETUNED).index(fair)] if fair in FINETUNED else cols[0]
            d = [x - y for x, y in zip(ours[0], base[0])]
            d_bn = [x - y for x, y in zip(ours[1], base[1])]
            lines.append(
                f"| {LABEL[model]} | {recipe} | {t} | "
                + " | ".join(f"{statistics.mean(a):.1f} / {statistics.mean(b):.1f}" for a, b in cols)
                + f" | {statistics.mean(base[0]):.1f} / {statistics.mean(base[1]):.1f} | "
                f"{statistics.mean(d):+.1f} / {statistics.mean(d_bn):+.1f} | {sum(x >= 0 for x in d_bn)}/{len(d_bn)} |"
            )
    return "\n".join(lines)


FAIR_LABEL = {
    "fair": "FAIR (0.2 default)",
    "fair_refit": "FAIR + refit",
    "fair_refit_group": "FAIR + refit, U×group",
    "fair_group": "FAIR, U×group",
    "l1_refit": "uniform L1 + refit (control)",
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--fair", default="fair_refit", help="the FAIR variant compared with the baselines")
    parser.add_argument("--train", action="store_true", help="only train what the cache lacks")
    parser.add_argument("--summary", action="store_true", help="print the tables of what --out holds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models, recipes = args.models.split(","), args.recipes.split(",")
    seeds, methods = [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    out_dir = Path(args.out)
    if args.train:
        train(models, recipes, seeds)
        return
    if not args.summary:
        for name in models:
            for recipe in recipes:
                for seed in seeds:
                    start = time.perf_counter()
                    measure(name, recipe, seed, methods, not args.no_finetune, out_dir)
                    print(f"{name} {recipe} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    print(summary(out_dir, methods, args.fair))


if __name__ == "__main__":
    main()
