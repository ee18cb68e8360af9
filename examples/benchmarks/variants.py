"""Variant study: which FAIR pipeline configuration gives the best one-shot accuracy.

For every benchmark model and seed, at kept MACs 0.5 and 0.3, this prunes a copy of the trained
model with ``lightning_fair.prune(copy, calib, target_macs=t, **variant)`` for each variant
below and records the held-out top-1 accuracy one-shot (no training of any kind after pruning;
BatchNorm re-estimation, where a variant has it, uses the calibration images only).

Every variant changes one thing against the default pipeline (``preset="default"``), plus the
paper-exact pipeline (``preset="paper"``) and a few combinations. Scores are computed once per
(model, seed, observation point, reconstruction aggregation) and shared by the variants that
need them (``prune(..., scores=...)``), so the variants differ only where they say they do.

Run:  python examples/benchmarks/variants.py [--quick] [--models vgg_bn,resnet]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lightning_fair import compute_scores, prune  # noqa: E402
from lightning_fair.presets import PRESETS  # noqa: E402

TARGETS = (0.5, 0.3)
SEEDS = (0, 1, 2)

#: key: (label, prune() options). Options not given come from the default preset.
VARIANTS: Dict[str, tuple] = {
    "default": ("default pipeline", {}),
    "paper": ("paper-exact (`preset=\"paper\"`)", {"preset": "paper"}),
    "tod": ("ToD counts instead of the global U threshold", {"allocation": "tod"}),
    "observe_output": ("U observes the layer output", {"observe": "output"}),
    "observe_norm": ("U observes after the norm", {"observe": "norm"}),
    "no_recal": ("no BatchNorm re-estimation", {"recalibrate": False}),
    "no_comp": ("no mean-replacement compensation", {"compensate": False}),
    "neither": ("neither re-estimation nor compensation", {"recalibrate": False, "compensate": False}),
    "tod_sum_of_abs": ("ToD counts, R = Σ_samples |Σ dL/dz·z|", {"allocation": "tod", "reconstruction": "sum_of_abs"}),
    "tod_joint": ("ToD counts, coupled groups: joint ToD", {"allocation": "tod", "group_policy": "joint"}),
    "tod_no_comp": ("ToD counts, no compensation", {"allocation": "tod", "compensate": False}),
}


def scoring_key(options: dict) -> tuple:
    preset = PRESETS[options.get("preset", "default")]
    return (options.get("observe", preset["observe"]), options.get("reconstruction", preset["reconstruction"]))


def evaluate_seed(task: common.Task, seed: int, targets, variants) -> Dict[str, dict]:
    data = common.load_data(task.data)
    model = common.trained_model(task, seed)
    calib = common.loader(data.calib, batch_size=100)
    scores = {}
    for key in {scoring_key(options) for _, options in variants.values()}:
        observe, reconstruction = key
        scores[key] = compute_scores(model, calib, observe=observe, reconstruction=reconstruction, seed=seed)
    out: Dict[str, dict] = defaultdict(dict)
    for name, (_, options) in variants.items():
        for t in targets:
            try:
                result = prune(common.clone(model), calib, target_macs=t, scores=scores[scoring_key(options)],
                               seed=seed, **options)
            except ValueError as err:
                out[name][t] = {"status": "unreachable", "note": str(err)}
                continue
            out[name][t] = {"status": "ok", "kept": result.report.macs_ratio,
                            "oneshot": common.accuracy(result.model.eval(), data.test)}
    return {"baseline": common.accuracy(model, data.test), "methods": dict(out)}


def run(quick: bool = False, seeds=None, targets=None, models=None, verbose: bool = True, threads: int = 1) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seeds = tuple(seeds) if seeds is not None else ((0,) if quick else SEEDS)
        targets = tuple(targets) if targets is not None else TARGETS
        tasks = common.tasks(quick)
        names = list(models) if models else list(tasks)
        variants = {k: VARIANTS[k] for k in (("default", "paper", "no_recal") if quick else VARIANTS)}
        results = {"settings": {"seeds": list(seeds), "targets": list(targets), "quick": quick},
                   "variants": {k: v[0] for k, v in variants.items()}, "models": {}}
        start = time.perf_counter()
        for name in names:
            task = tasks[name]
            per_seed = [evaluate_seed(task, seed, targets, variants) for seed in seeds]
            models_out = {"label": task.label, "baseline": [s["baseline"] for s in per_seed], "methods": {}}
            for variant in variants:
                rows = {}
                for t in targets:
                    recs = [s["methods"][variant][t] for s in per_seed]
                    if any(r["status"] != "ok" for r in recs):
                        rows[str(t)] = {"status": "unreachable", "note": next(r["note"] for r in recs if r["status"] != "ok")}
                    else:
                        rows[str(t)] = {"status": "ok", "kept": [r["kept"] for r in recs],
                                        "oneshot": [r["oneshot"] for r in recs]}
                models_out["methods"][variant] = rows
            results["models"][name] = models_out
            if verbose:
                print(f"  variants: {name} done ({time.perf_counter() - start:.0f}s)", flush=True)
        results["timing"] = {"total": time.perf_counter() - start}
        return results
    finally:
        torch.set_num_threads(previous)


def _cell(row) -> str:
    if row is None:
        return "–"
    if row["status"] != "ok":
        return "unreachable"
    mean, std = common.mean_std(row["oneshot"])
    kept = common.mean_std(row["kept"])[0]
    text = f"{mean:.1f} ± {std:.1f}" if len(row["oneshot"]) > 1 else f"{mean:.1f}"
    return f"{text} <sub>({kept:.2f})</sub>"


def mean_of(row):
    return common.mean_std(row["oneshot"])[0] if row and row.get("status") == "ok" else None


def to_markdown(results: dict, extra_rows=None) -> str:
    """One table per target: variants (rows) x models (columns), one-shot held-out top-1 %.

    ``extra_rows``: ``{target: [(label, {model: cell text})]}`` appended below the variants
    (e.g. the best torch-pruning baseline from the quality benchmark)."""
    models, targets = results["models"], results["settings"]["targets"]
    lines = []
    for t in targets:
        lines += [f"#### Kept MACs {t}: one-shot held-out top-1 % (mean ± std over the seeds; <sub>(kept MACs)</sub>)", "",
                  "| variant | " + " | ".join(m["label"] for m in models.values()) + " | mean |",
                  "|---|" + "---:|" * (len(models) + 1)]
        for variant, label in results["variants"].items():
            rows = [m["methods"][variant].get(str(t)) for m in models.values()]
            means = [mean_of(r) for r in rows]
            avg = f"{sum(means) / len(means):.1f}" if all(v is not None for v in means) else "–"
            name = f"**{label}**" if variant == "default" else label
            lines.append(f"| {name} | " + " | ".join(_cell(r) for r in rows) + f" | {avg} |")
        for label, cells in (extra_rows or {}).get(t, []):
            lines.append(f"| {label} | " + " | ".join(cells.get(k, "–") for k in models) + " | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=None)
    parser.add_argument("--seeds", default=None)
    args = parser.parse_args(argv)
    results = run(args.quick, seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
                  models=args.models.split(",") if args.models else None)
    print(to_markdown(results))
    print(f"total {results['timing']['total']:.0f}s")


if __name__ == "__main__":
    main()
