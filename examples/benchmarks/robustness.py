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
SEEDS = (0, 1, 2)

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
#: (variant, what it is compared with) in the reading: the refit, the group ranking with and without it,
#: and the control (FAIR's selection against magnitude selection, both refitted)
COMPARISONS = (
    ("fair_refit", "fair"),
    ("fair_group", "fair"),
    ("fair_refit_group", "fair_refit"),
    ("l1_refit", "fair_refit"),
)
FINETUNED = ("fair", "fair_refit")  # plus the best baseline of each cell


def task(name: str, recipe: str, quick: bool = False) -> standard.StandardTask:
    return RECIPES[recipe](standard.tasks(quick)[name])


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


def measure(
    name: str, recipe: str, seed: int, methods: List[str], finetune: bool, out_dir: Path, quick: bool = False
) -> dict:
    path = out_dir / f"{name}-{recipe}-seed{seed}.json"
    record = json.loads(path.read_text()) if path.exists() else {"model": name, "recipe": recipe, "seed": seed}
    results = record.setdefault("methods", {})
    todo = [m for m in methods if m not in results]
    need_ft = finetune and any(
        "ft_a" not in results.get(m, {}).get(str(t), {"ft_a": 0}) for m in FINETUNED for t in TARGETS
    )
    if not todo and not need_ft and "unpruned" in record:
        return record
    st = standard.settings(quick)
    run = standard.ModelRun(task(name, recipe, quick), seed, st, defaultdict(float))
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
                if pruned is None:
                    del record["methods"][method]  # recorded by an earlier run: prune it again (deterministic)
                    path.write_text(json.dumps(record, indent=1))
                    return measure(name, recipe, seed, methods, finetune, out_dir, quick)
                tuned = run.finetune(common.clone(pruned), "a")
                cell["ft_a"], cell["ft_a_bn"] = run.accuracies(tuned)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


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


def cells(records: List[dict]) -> Dict[tuple, List[dict]]:
    """``{(model, recipe): records}`` in the page's order."""
    by_cell = defaultdict(list)
    for r in records:
        by_cell[r["model"], r["recipe"]].append(r)
    return dict(sorted(by_cell.items(), key=lambda kv: (MODELS.index(kv[0][0]), kv[0][1])))


def oneshot(r: dict, method: str, t: str):
    return r["methods"].get(method, {}).get(t, {}).get("oneshot")


def best_mean_baseline(rs: List[dict], t: str) -> str:
    """The baseline with the best mean one-shot accuracy over a cell's models."""
    means = {b: statistics.mean(oneshot(r, b, t) for r in rs) for b in BASELINES if all(oneshot(r, b, t) for r in rs)}
    return max(means, key=means.get)


def tables(records: List[dict], methods: List[str], fair: str = "fair_refit") -> str:
    """The one-shot tables per target, the fine-tune table and the reading, as markdown."""
    by_cell = cells(records)
    lines = []
    shown = [m for m in methods if any(m in r["methods"] for r in records)]
    for t in map(str, TARGETS):
        lines += [
            f"#### Kept MACs {t}: one-shot held-out top-1 % (mean ± std over the seeds)",
            "",
            "| model | recipe | seeds | unpruned | "
            + " | ".join(FAIR_LABEL.get(m, SHORT.get(m, m)) for m in shown)
            + f" | {FAIR_LABEL[fair]} − best baseline of each model | worst |",
            "|---|---|---:|---:|" + "---:|" * len(shown) + "---|---:|",
        ]
        for (model, recipe), rs in by_cell.items():
            cols = [spread([oneshot(r, m, t) for r in rs if oneshot(r, m, t) is not None]) for m in shown]
            gaps = [oneshot(r, fair, t) - oneshot(r, best_baseline(r, t), t) for r in rs if oneshot(r, fair, t)]
            lines.append(
                f"| {LABEL[model]} | {recipe} | {len(rs)} | {spread([r['unpruned'] for r in rs])} | "
                + " | ".join(cols)
                + f" | {', '.join(f'{g:+.1f}' for g in gaps)} | {min(gaps, default=float('nan')):+.1f} |"
            )
        lines.append("")
    lines += [
        "#### After fine-tune (a): held-out top-1 %, ft / ft + BatchNorm re-estimated (mean over the seeds)",
        "",
        "Fine-tuned: FAIR with and without the refit, and the best one-shot baseline of each model.",
        "",
        "| model | recipe | kept MACs | "
        + " | ".join(FAIR_LABEL[m] for m in FINETUNED)
        + f" | best baseline | {FAIR_LABEL[fair]} − baseline: ft / ft + BN | models at or above (ft + BN) |",
        "|---|---|---:|" + "---:|" * (len(FINETUNED) + 3),
    ]
    finetuned = []
    for (model, recipe), rs in by_cell.items():
        for t in map(str, TARGETS):
            done = [
                r
                for r in rs
                if all("ft_a" in r["methods"].get(m, {}).get(t, {}) for m in (*FINETUNED, best_baseline(r, t)))
            ]
            if not done:
                continue

            def ft(method_of, rows=done, t=t):
                return (
                    [r["methods"][method_of(r)][t]["ft_a"] for r in rows],
                    [r["methods"][method_of(r)][t]["ft_a_bn"] for r in rows],
                )

            cols = [ft(lambda r, m=m: m) for m in FINETUNED]
            base = ft(lambda r, t=t: best_baseline(r, t))
            ours = cols[FINETUNED.index(fair)] if fair in FINETUNED else cols[0]
            d = [x - y for x, y in zip(ours[0], base[0])]
            d_bn = [x - y for x, y in zip(ours[1], base[1])]
            finetuned.append((statistics.mean(d), statistics.mean(d_bn)))
            lines.append(
                f"| {LABEL[model]} | {recipe} | {t} | "
                + " | ".join(f"{statistics.mean(a):.1f} / {statistics.mean(b):.1f}" for a, b in cols)
                + f" | {statistics.mean(base[0]):.1f} / {statistics.mean(base[1]):.1f} | "
                f"{statistics.mean(d):+.1f} / {statistics.mean(d_bn):+.1f} | {sum(x >= 0 for x in d_bn)}/{len(d_bn)} |"
            )
    lines += ["", reading(records, fair, finetuned)]
    return "\n".join(lines)


def reading(records: List[dict], fair: str, finetuned: List[tuple]) -> str:
    """What the tables say, counted (cells: model x recipe x target)."""
    by_cell = cells(records)
    at_or_above, within, models, gaps = 0, 0, 0, []
    n_cells = 0
    for rs in by_cell.values():
        for t in map(str, TARGETS):
            if not all(oneshot(r, fair, t) for r in rs):
                continue
            n_cells += 1
            base = best_mean_baseline(rs, t)
            gap = statistics.mean(oneshot(r, fair, t) for r in rs) - statistics.mean(oneshot(r, base, t) for r in rs)
            gaps.append(gap)
            at_or_above += gap >= 0
            for r in rs:
                models += 1
                within += oneshot(r, fair, t) - oneshot(r, best_baseline(r, t), t) >= -2.0
    parts = [
        f"One-shot, {FAIR_LABEL[fair]}: mean at or above the best baseline's mean in {at_or_above} of {n_cells} cells "
        f"(model x recipe x kept MACs; mean difference {statistics.mean(gaps):+.1f}, smallest {min(gaps):+.1f}); "
        f"within 2 points of the best baseline on that very model for {within} of {models} pruned models."
    ]
    if finetuned:
        parts.append(
            f"After fine-tune (a): at or above the best one-shot baseline (fine-tuned the same way) in "
            f"{sum(d >= 0 for d, _ in finetuned)} of {len(finetuned)} cells without and "
            f"{sum(d >= 0 for _, d in finetuned)} of {len(finetuned)} with the BatchNorm statistics re-estimated "
            f"(smallest {min(d for d, _ in finetuned):+.1f} / {min(d for _, d in finetuned):+.1f})."
        )
    for other, reference in COMPARISONS:
        diffs = [
            oneshot(r, other, t) - oneshot(r, reference, t)
            for r in records
            for t in map(str, TARGETS)
            if oneshot(r, other, t) is not None and oneshot(r, reference, t) is not None
        ]
        if diffs:
            parts.append(
                f"{FAIR_LABEL[other]} minus {FAIR_LABEL[reference]}, one-shot over {len(diffs)} pruned models: mean "
                f"{statistics.mean(diffs):+.1f}, better on {sum(d > 0 for d in diffs)}, worse on "
                f"{sum(d < 0 for d in diffs)} (smallest {min(diffs):+.1f}, largest {max(diffs):+.1f})."
            )
    return "\n\n".join(parts)


def run(quick: bool = False, threads: int = 1, seeds=SEEDS, finetune: bool = True) -> dict:
    """Measures what the cache lacks (all of it the first time) and returns the records."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    out_dir = OUT.with_name("robustness-quick") if quick else OUT
    names = [m for m in MODELS if m in standard.tasks(quick)]
    try:
        for name in names:
            for recipe in RECIPES:
                for seed in seeds[:1] if quick else seeds:
                    measure(name, recipe, seed, METHODS, finetune, out_dir, quick)
    finally:
        torch.set_num_threads(previous)
    records = [r for r in load(out_dir) if r["model"] in names]
    return {"records": records, "quick": quick, "seconds": time.perf_counter() - start}


def to_markdown(results: dict) -> str:
    records = results["records"]
    seeds = sorted({r["seed"] for r in records})
    return "\n".join(
        [
            f"* Models: the four standard architectures of the section above ({', '.join(LABEL[m] for m in MODELS)}), "
            f"each trained with seeds {', '.join(map(str, seeds))} under two recipes: `sgd` (the section above's: "
            "SGD, Nesterov momentum 0.9, weight decay 5e-4, one-cycle lr peaking at 0.05, batch 64) and `adamw` "
            "(AdamW, weight decay 0.05, one-cycle lr peaking at 2e-3), the same epochs (3, ResNet-20 4). "
            f"{len(records)} trained models in all, each pruned by every method below.",
            "* FAIR: `lightning_fair.prune(copy, calib, target_macs=t, scores=s, seed=seed, **options)`, one "
            '`compute_scores` per model; "FAIR (0.2 default)" is the default pipeline with `refit=False`, '
            '"FAIR + refit" the default pipeline now; "U×group" is `ranking="utilization_x_group"`; '
            '"uniform L1 + refit" is a control, not FAIR: our pipeline with `allocation="uniform", '
            'ranking="l1", refit=True` (magnitude selection, the same repair). Baselines: torch-pruning uniform '
            "L2 / uniform Taylor / global L2 / LAMP, each with BatchNorm re-estimated, as in the section above.",
            "* Fine-tune (a) as in the section above (SGD, 16 steps over 1000 training images, lr 0.01 cosine to "
            "0, train mode), for FAIR with and without the refit and the best one-shot baseline of each model; "
            '"+ BN": its BatchNorm statistics then re-estimated on 500 training images (what '
            "`FairPruneCallback` does before each validation after a pruning).",
            f"* 1 torch thread; {results['seconds'] / 60:.1f} min for what the cache lacked in this run "
            "(trained models and results are cached per model, recipe and seed in "
            "`examples/benchmarks/.cache/robustness/`).",
            "",
            tables(records, METHODS),
        ]
    )


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
    names = [m for m in MODELS if m in models]
    print(tables([r for r in load(out_dir) if r["model"] in names], methods, args.fair))


if __name__ == "__main__":
    main()
